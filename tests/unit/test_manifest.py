"""The manifest's line format round-trips any file name."""

import asyncio
import hashlib
import os

from hypothesis import given
from hypothesis import strategies as st

from bkd.pipeline import manifest


def test_names_with_newlines_backslashes_spaces_and_invalid_utf8_round_trip(tmp_path):
    checksums = {b"plain": ("0" * 64, 1), b"new\nline": ("1" * 64, 2), b"back\\slash\\n": ("2" * 64, 3),
                 b"bad-\xff sp ace": ("3" * 64, 4), b"d/deep/\n/x": ("4" * 64, 0)}
    path = tmp_path / "x.manifest"
    manifest.write(path, checksums)
    assert manifest.read(path) == checksums
    assert path.read_bytes().startswith(manifest.HEADER)
    manifest.write(path, {})
    assert manifest.read(path) == {}
    assert manifest.read(tmp_path / "missing") is None


names = st.lists(st.sampled_from([b"a", b"a/b", b"a/b/c", b"a.txt", b"a0", b"b", b"b/\n", b"b\\x", b"c/d", b"c/d/e",
                                  b"c-d", b"z", b"\xff"]), unique=True)


def entry(name: bytes) -> tuple[str, int]:
    return hashlib.sha256(name).hexdigest(), len(name)


@given(old=names, removed=names, trees=names, added=names)
def test_updating_sorted_lines_equals_updating_the_whole_manifest(old, removed, trees, added):
    before = {name: entry(name) for name in old}
    new = {name: (hashlib.sha256(b"new" + name).hexdigest(), 7) for name in added}
    expected = {name: value for name, value in before.items()
                if name not in removed and not any(name.startswith(tree + b"/") for tree in trees)}
    expected.update(new)
    lines, gone = manifest.updated(manifest.sorted_lines(before), removed, trees, new)
    assert lines == manifest.sorted_lines(expected)
    assert gone == len(set(before) - set(expected))


def test_the_update_reads_lines_as_written(tmp_path):
    path = tmp_path / "m"
    manifest.write(path, {b"x": entry(b"x"), b"new\nline": entry(b"y")})
    lines = manifest.read_lines(path)
    assert lines == manifest.sorted_lines({b"x": entry(b"x"), b"new\nline": entry(b"y")})
    manifest.write_lines(path, manifest.updated(lines, [b"x"], [], {})[0])
    assert manifest.read(path) == {b"new\nline": entry(b"y")}
    assert manifest.read_lines(tmp_path / "missing") is None


def test_a_walk_by_inode_reuses_what_it_can_and_hashes_the_rest(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "d").mkdir(parents=True)
    (old / "same").write_text("same\n")
    (old / "d" / "rewritten").write_text("old\n")
    (old / "gone").write_text("gone\n")
    recorded = {b"same": ("recorded-same", 5), b"d/rewritten": ("recorded-old", 4), b"gone": ("recorded-gone", 5)}
    (new / "d").mkdir(parents=True)
    os.link(old / "same", new / "same")
    (new / "d" / "rewritten").write_text("new\n")
    (new / "added").write_text("added\n")
    os.symlink("same", new / "link")
    os.mkfifo(new / "fifo")
    known_inode = (new / "added").stat().st_ino
    known = {b"added": manifest.Hashed(known_inode, "known-added", 6)}
    checksums, hashed = manifest.by_inode(new, old, recorded, known)
    assert checksums == {b"same": ("recorded-same", 5), b"added": ("known-added", 6),
                         b"d/rewritten": (hashlib.sha256(b"new\n").hexdigest(), 4)}
    assert hashed == 1
    # A checksum computed for another inode is not reused.
    checksums, _ = manifest.by_inode(new, None, None, {b"added": manifest.Hashed(known_inode + 1, "stale", 6)})
    assert checksums[b"added"] == (hashlib.sha256(b"added\n").hexdigest(), 6)


async def test_a_failed_run_lets_its_hasher_go_without_blocking_the_daemon(tmp_path):
    """A run that fails or is cancelled while a large file is being hashed:
    closing the hasher returns at once (it used to join the thread on the
    event loop, freezing RPC and watchdog pings until the file was read to
    the end) and the thread stops within a chunk."""
    import time

    from bkd.pipeline.snapshot import _Hasher

    with open(tmp_path / "big", "wb") as f:
        f.truncate(64 << 30)  # 64 GiB of holes: tens of seconds to hash to the end
    hasher = _Hasher(tmp_path)
    hasher.queue.append((0.0, b"big", 1, False))
    deadline = time.monotonic() + 30
    while hasher.queue:  # the thread has taken it and is reading
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    hasher.close()
    assert time.monotonic() - started < 0.1
    hasher.worker.join(10)
    assert not hasher.worker.is_alive() and b"big" not in hasher.results


async def test_a_cancelled_manifest_step_stops_hashing_so_a_stop_need_not_wait(tmp_path):
    """The walk that hashes what the transfer did not (a first pull's, or an
    incremental's when counts disagree) runs on the shared pool, which the
    daemon's exit waits for: cancelled, it must stop within a chunk."""
    import time

    from bkd.pipeline.snapshot import _hashing

    (tmp_path / "tree").mkdir()
    with open(tmp_path / "tree" / "big", "wb") as f:
        f.truncate(64 << 30)  # 64 GiB of holes: tens of seconds to hash to the end
    task = asyncio.ensure_future(_hashing(manifest.by_inode, tmp_path / "tree", None, None, None))
    await asyncio.sleep(0.5)
    task.cancel()
    started = time.monotonic()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await asyncio.get_running_loop().shutdown_default_executor()  # what asyncio.run does at the daemon's exit
    assert time.monotonic() - started < 5
