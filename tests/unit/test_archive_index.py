"""An archive's index (tree/archiveindex.py) and the reading of its tar
stream (pipeline/tarstream.py), on archives GNU tar makes as bkd does:
names with any bytes survive, browsing matches the tree, and a restore's
ranges hold what it needs and no more, read no further than needed."""

import asyncio
import io
import os
import subprocess

import pytest
from hypothesis import given, strategies as st

from bkd.infra.errors import InvalidArgument, NotFound
from bkd.pipeline import tarstream
from bkd.tree import archiveindex, browse
from bkd.tree.archiveindex import ArchiveTree, Entry, IndexRefused
from bkd.tree.layout import ArchiveFile, SnapshotName

NAMES = [b"new\nline", b"bad-\xff\xfe", b"back\\slash", b"x" * 200, b" spaced "]


@pytest.fixture
def archive(tmp_path):
    """A tree with hostile names, a deep path, a symlink, a hard link out of
    a subtree and a sparse file, archived with bkd's own tar options."""
    tree = os.fsencode(tmp_path / "tree")
    os.makedirs(os.path.join(tree, b"sub/inner"))
    for name in NAMES:
        with open(os.path.join(tree, name), "wb") as f:
            f.write(b"data of " + name)
    with open(os.path.join(tree, b"sub/inner/f"), "wb") as f:
        f.write(b"inner")
    os.link(os.path.join(tree, NAMES[0]), os.path.join(tree, b"sub/linked"))
    os.symlink(b"../bad-\xff\xfe", os.path.join(tree, b"sub/link"))
    with open(os.path.join(tree, b"sparse"), "wb") as f:
        f.truncate(32 << 20)
    deep = os.path.join(tree, *[b"d" * 100] * 12)
    os.makedirs(deep)
    with open(os.path.join(deep, b"leaf"), "wb") as f:
        f.write(b"leaf")
    path = tmp_path / "web1_2026-01-01_000000.tar.zst"
    subprocess.run(f"tar --create --file=- --directory={os.fsdecode(tree)} --numeric-owner --acls --xattrs "
                   f"--sparse . | zstd -q > {path}", shell=True, check=True)
    return ArchiveFile(SnapshotName.parse("2026-01-01_000000"), path), tree


def test_the_index_of_an_archive_browses_as_the_tree_does(archive):
    found, tree = archive
    entries = asyncio.run(tarstream.read(found.path, tarstream.entries_of))
    index = ArchiveTree(entries)
    for path in ("/", "/sub", "/sub/inner"):
        want = browse.list_dir(tree, path)
        got = index.list_dir(path)
        assert got == {**want, "entries": [{**e, "size": 0} if e["type"] == "dir" else e for e in want["entries"]]}
    assert index.lookup("/sub/linked")["size"] == len(b"data of " + NAMES[0])  # a hard link: its target's size
    assert {os.fsencode(n) for n in index.top_level()} >= set(NAMES)
    with pytest.raises(InvalidArgument, match="symlink stored in the snapshot"):
        index.list_dir("/sub/link/x")
    with pytest.raises(NotFound):
        index.lookup("/nothing")
    with pytest.raises(InvalidArgument):
        index.lookup("/sub/../etc")
    # The file written beside the archive reads back the same.
    archiveindex.write(found.index, entries)
    assert archiveindex.read(found.index) == entries


def test_a_damaged_index_is_refused(tmp_path):
    for data in (b"not gzip", archiveindex.encode([])[:-3], __import__("gzip").compress(b"other header\n"),
                 __import__("gzip").compress(archiveindex.HEADER + b"f\x00644\x00"),
                 __import__("gzip").compress(archiveindex.HEADER + b"f\x00644\x000\x000\x001\x001\x000\x001\x00"
                                             b"../../etc/shadow\x00\x00")):
        with pytest.raises(IndexRefused):
            archiveindex.decode(data, "x")


@given(st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"\0" not in b and b"/" not in b
                                                          and b not in (b".", b"..")), min_size=1, max_size=8, unique=True),
       st.binary(max_size=40).filter(lambda b: b"\0" not in b))
def test_any_name_and_link_target_round_trips(names, target):
    entries = [Entry("l", 0o777, 0, 0, 0, 1, i * 512, (i + 1) * 512, name, target) for i, name in enumerate(names)]
    assert archiveindex.decode(archiveindex.encode(entries), "x") == entries


def test_a_restore_reads_only_up_to_the_end_of_what_it_asked_for(archive, tmp_path):
    found, tree = archive
    entries = asyncio.run(tarstream.read(found.path, tarstream.entries_of))
    index = ArchiveTree(entries)
    ranges = index.ranges([b"sub"])
    covered = {e.path for e in entries if any(start <= e.offset and e.end <= end for start, end in ranges)}
    # The subtree, the root's attributes, and the file its hard link names when that was stored
    # first, outside it (tar stores an inode's data once, with the first of its names it meets).
    linked_first = index.entry([b"sub", b"linked"]).kind == "h"
    assert covered == {b"", b"sub", b"sub/inner", b"sub/inner/f", b"sub/linked", b"sub/link",
                       *([NAMES[0]] if linked_first else [])}
    into = tmp_path / "into"
    into.mkdir()
    read = asyncio.run(tarstream.extract(found, ranges, into))
    assert read == sum(end - start for start, end in ranges)
    assert (into / "sub/inner/f").read_bytes() == b"inner"
    assert os.readlink(into / "sub/link") == os.fsdecode(b"../bad-\xff\xfe")
    assert (into / "sub/linked").read_bytes() == b"data of " + NAMES[0]

    stream = io.BytesIO(bytes(range(256)) * 40)
    read_fd, write_fd = os.pipe()
    copied = tarstream._copy_ranges(stream, [(10, 20), (100, 150)], write_fd)
    assert (copied, os.read(read_fd, 1000)) == (60, (bytes(range(256)) * 40)[10:20] + bytes(range(100, 150)))
    assert stream.tell() == 150  # not a byte further
    os.close(read_fd)


def test_an_extraction_reports_how_far_it_read(monkeypatch):
    monkeypatch.setattr(tarstream, "PROGRESS_EVERY", 0)
    monkeypatch.setattr(tarstream, "CHUNK", 1000)
    stream, seen = io.BytesIO(bytes(10_000)), []
    read_fd, write_fd = os.pipe()
    tarstream._copy_ranges(stream, [(2500, 7000)], write_fd, seen.append)
    assert seen == [1000, 2000, 2500, 3500, 4500, 5500, 6500, 7000]
    os.close(read_fd)


def test_a_damaged_archive_is_unreadable_not_an_empty_one(archive):
    found, _ = archive
    data = bytearray(found.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    found.path.write_bytes(bytes(data))
    with pytest.raises(tarstream.ArchiveUnreadable):
        asyncio.run(tarstream.read(found.path, tarstream.entries_of))


def test_the_ranges_of_a_subtree_hold_the_directories_above_it_and_what_its_hard_links_name():
    entries = [Entry("d", 0o755, 0, 0, 0, 1, 0, 512, b"", b""),
               Entry("f", 0o644, 0, 0, 9, 1, 512, 2048, b"a", b""),
               Entry("d", 0o755, 0, 0, 0, 1, 2048, 2560, b"top", b""),
               Entry("f", 0o644, 0, 0, 9, 1, 2560, 4096, b"top/skipped", b""),
               Entry("d", 0o700, 0, 0, 0, 1, 4096, 4608, b"top/sub", b""),
               Entry("h", 0o644, 0, 0, 0, 1, 4608, 5120, b"top/sub/h", b"a"),
               Entry("f", 0o644, 0, 0, 9, 1, 5120, 6656, b"top/sub/f", b""),
               Entry("f", 0o644, 0, 0, 9, 1, 6656, 8192, b"after", b"")]
    tree = ArchiveTree(entries)
    assert tree.ranges([b"top", b"sub"]) == [(0, 2560), (4096, 6656)]
    assert tree.ranges([b"top", b"sub", b"f"]) == [(0, 512), (2048, 2560), (4096, 4608), (5120, 6656)]
    assert tree.ranges([]) == [(0, 8192)]
