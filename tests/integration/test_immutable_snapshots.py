"""The fast incremental path never changes a complete snapshot, not even its metadata."""

import os
import subprocess
import threading
from pathlib import Path

import pytest

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline import manifest
from bkd.pipeline.snapshot import take_snapshot
from conftest import between_compare_and_copy

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (CI runs as root)")


def state(tree: Path) -> dict:
    """Everything a snapshot's entries carry that rsync could change in place."""
    result = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        xattrs = {}
        if not path.is_symlink():
            xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        result[str(path.relative_to(tree))] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid,
                                               st.st_mtime_ns, xattrs, content)
    return result


def acl(path: Path) -> str:
    return subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True, check=True).stdout


async def snapshot(config):
    result = await take_snapshot(config, config.hosts["h"])
    assert result.status == "ok", result.warning
    return result


@ROOT_ONLY
async def test_attribute_only_changes_leave_the_older_snapshot_as_it_was(tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    names = ["chmod", "chown", "xattr", "acl", "touch", "content", "same", "sub/deep"]
    for name in names:
        (source / name).write_text(f"data of {name}\n")
    os.symlink("same", source / "link")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    old_dir = HostDir.of(config.backup_root, "h").hourly / first.name
    before = state(old_dir)
    acl_before = acl(old_dir / "acl")

    os.chmod(source / "chmod", 0o600)
    os.chown(source / "chown", 1234, 5678)
    os.lchown(source / "link", 4321, 8765)
    os.setxattr(source / "xattr", "user.note", b"added later")
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(source / "acl")], check=True)
    os.utime(source / "touch", (1_000_000_000, 1_000_000_000))
    (source / "content").write_text("new content\n")
    os.chmod(source / "sub", 0o700)
    second = await snapshot(config)
    new_dir = HostDir.of(config.backup_root, "h").hourly / second.name

    assert state(old_dir) == before
    assert acl(old_dir / "acl") == acl_before
    # The new snapshot has the new metadata …
    assert (new_dir / "chmod").stat().st_mode & 0o777 == 0o600
    assert ((new_dir / "chown").stat().st_uid, (new_dir / "chown").stat().st_gid) == (1234, 5678)
    assert (new_dir / "link").lstat().st_uid == 4321
    assert os.getxattr(new_dir / "xattr", "user.note") == b"added later"
    assert "user:nobody:r--" in acl(new_dir / "acl")
    assert (new_dir / "touch").stat().st_mtime == 1_000_000_000
    assert (new_dir / "content").read_text() == "new content\n"
    # … and what did not change still shares its inode.
    assert (new_dir / "same").stat().st_ino == (old_dir / "same").stat().st_ino
    assert (new_dir / "sub/deep").stat().st_ino == (old_dir / "sub/deep").stat().st_ino
    assert second.stats["changed_files"] == 2  # touch and content; attribute-only changes send no data


async def test_deletions_are_counted_and_do_not_reach_the_older_snapshot(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for index in range(5):
        (source / f"f{index}").write_text(str(index))
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    (source / "f1").unlink()
    (source / "f2").unlink()
    second = await snapshot(config)
    hourly = HostDir.of(config.backup_root, "h").hourly
    assert second.stats["deleted_files"] == 2 and second.stats["files"] == 3
    assert sorted(p.name for p in (hourly / first.name).iterdir()) == ["f0", "f1", "f2", "f3", "f4"]
    assert sorted(p.name for p in (hourly / second.name).iterdir()) == ["f0", "f3", "f4"]


@ROOT_ONLY
async def test_metadata_changing_during_the_runs_never_changes_a_complete_snapshot(tmp_path):
    # Modes, owners and xattrs flip while snapshots are taken back to back;
    # whatever rsync sees, a snapshot is exactly as it was when it completed.
    source = tmp_path / "src"
    files = []
    for index in range(600):
        path = source / f"d{index % 6}" / f"f{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {index}\n")
        files.append(path)
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    hourly = HostDir.of(config.backup_root, "h").hourly
    stop = threading.Event()

    def flip():
        turn = 0
        while not stop.is_set():
            turn += 1
            # Each file has two states, so that it often matches the previous
            # snapshot when one pass of rsync looks and differs when the next does.
            for path in files[0::3]:
                os.chmod(path, 0o600 if turn % 2 else 0o644)
            for path in files[1::3]:
                os.chown(path, turn % 2, turn % 2)
            for path in files[2::3]:
                os.setxattr(path, "user.turn", str(turn % 2).encode())

    flipper = threading.Thread(target=flip)
    flipper.start()
    captured = {}
    try:
        for _ in range(6):
            result = await take_snapshot(config, config.hosts["h"])
            captured[result.name] = state(hourly / result.name)
            for name, before in captured.items():
                assert state(hourly / name) == before, f"{name} changed after it completed"
    finally:
        stop.set()
        flipper.join()



async def test_a_new_hard_link_to_an_unchanged_file_stays_one_inode(tmp_path):
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / "old").write_text("shared\n")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    os.link(source / "a" / "old", source / "new-link")
    second = await snapshot(config)
    hourly = HostDir.of(config.backup_root, "h").hourly
    inodes = {(hourly / n / p).stat().st_ino for n, p in
              ((first.name, "a/old"), (second.name, "a/old"), (second.name, "new-link"))}
    assert len(inodes) == 1


async def test_a_source_that_changes_between_the_compare_and_the_copy_is_taken_in_one_pass(tmp_path, monkeypatch):
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "x").write_text("one\n")
    (source / "keep").write_text("keep\n")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    hourly = HostDir.of(config.backup_root, "h").hourly
    before = state(hourly / first.name)
    (source / "d" / "x").write_text("two, longer\n")

    def the_source_moves(plan, private):  # after the compare listed d/x, before the copy
        (source / "d" / "x").unlink()
        (source / "d").rmdir()
        (source / "d").write_text("now a file\n")

    between_compare_and_copy(monkeypatch, the_source_moves)
    second = await snapshot(config)
    assert (hourly / second.name / "d").read_text() == "now a file\n"
    assert (hourly / second.name / "keep").stat().st_ino == (hourly / first.name / "keep").stat().st_ino
    assert state(hourly / first.name) == before
    recorded = manifest.read(HostDir.of(config.backup_root, "h").manifest_file(second.name))
    assert sorted(recorded) == [b"d", b"keep"]


@ROOT_ONLY
async def test_an_entry_changed_after_the_compare_listed_the_others_is_left_for_the_next_snapshot(tmp_path,
                                                                                                  monkeypatch):
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    for name in ("top", "d/inner", "changed"):
        (source / name).write_text(f"{name}\n")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    hourly = HostDir.of(config.backup_root, "h").hourly
    before = state(hourly / first.name)
    (source / "changed").write_text("changed, and the top directory's time with it\n")
    os.utime(source, (1_000_000_000, 1_000_000_000))

    def more_changes(plan, private):  # after the compare, before the copy
        os.chmod(source / "top", 0o600)
        os.chown(source / "d" / "inner", 4321, 4321)
        (source / "late").write_text("too late for this one\n")
        os.utime(source, (1_000_000_000, 1_000_000_000))

    between_compare_and_copy(monkeypatch, more_changes)
    second = await snapshot(config)
    assert state(hourly / first.name) == before
    new = hourly / second.name
    assert (new / "top").stat().st_mode & 0o777 == 0o644 and not (new / "late").exists()
    assert (new / "top").stat().st_ino == (hourly / first.name / "top").stat().st_ino
    assert (new / "changed").read_text().startswith("changed, and")
    assert new.stat().st_mtime == 1_000_000_000  # the top directory's own attributes
    monkeypatch.undo()
    third = await snapshot(config)  # the next snapshot has them
    assert (hourly / third.name / "top").stat().st_mode & 0o777 == 0o600 and (hourly / third.name / "late").exists()
    assert state(hourly / first.name) == before


async def test_the_top_directory_keeps_its_time_when_only_its_entries_change(tmp_path):
    """An entry added directly in the source's top directory within the same
    second as the snapshot before (rsync compares times to the second, so the
    compare does not list "."): the copy wrote into the new snapshot's top
    directory, which kept the time of that write."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "old").write_text("old\n")
    os.utime(source, (1_000_000_000, 1_000_000_000))
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    await snapshot(config)
    (source / "new").write_text("new\n")
    (source / "old").unlink()
    os.utime(source, (1_000_000_000, 1_000_000_000))  # as if in the same second
    second = await snapshot(config)
    new = HostDir.of(config.backup_root, "h").hourly / second.name
    assert sorted(p.name for p in new.iterdir()) == ["new"]
    assert new.stat().st_mtime == 1_000_000_000
