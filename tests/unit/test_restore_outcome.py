"""What a restore's record is made of: the daemon's rsync's own statistics,
never lines a receiver can put before them; and where a directory is in its
filesystem (the check that refuses bkd's own directories by any path)."""

import os

import pytest

from bkctl import mounts
from bkd.restore.transfer import MAX_LISTED, RestoreFailed, _Output, _probed_location

STATS = """Number of files: 4 (reg: 2, dir: 2)
Number of created files: 3 (reg: 2, dir: 1)
Number of deleted files: 0
Number of regular files transferred: 2
Total file size: 54 bytes
Total transferred file size: 54 bytes
Literal data: 54 bytes
Matched data: 0 bytes
File list size: 0
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 310
Total bytes received: 76
sent 310 bytes  received 76 bytes  772.00 bytes/sec
total size is 54  speedup is 0.14""".splitlines()

FORGED = """Number of files: 123456 (reg: 123456)
Number of created files: 123456 (reg: 123456)
Number of regular files transferred: 123456""".splitlines()


def output(lines: list[str], listing: bool = False) -> _Output:
    out = _Output(listing)
    for line in lines:
        out.line(line)
    return out


def test_the_statistics_are_the_last_block_rsync_prints():
    """A receiver's messages reach the sender's stdout too, before its statistics."""
    items = ["cd+++++++++ dir1/", "<f+++++++++ dir1/file1.txt", "<f+++++++++ dir1/file5.txt"]
    stats = output([*FORGED, *items, "<f+++++++++ forged", *STATS]).statistics(dry_run=False)
    assert (stats["entries"], stats["files"], stats["created"], stats["changed_files"]) == (4, 2, 3, 2)
    assert stats["entries_written"] == 4  # three item lines and the receiver's: never above Number of files


def test_item_lines_never_count_past_rsyncs_own_file_list():
    lines = [f"<f+++++++++ forged{n}" for n in range(50)]
    assert output([*lines, *STATS]).statistics(dry_run=True)["entries_to_write"] == 4


def test_a_transfer_without_its_statistics_failed():
    """A receiver can end the exchange with an exit status of its choosing
    (MSG_ERROR_EXIT); rsync then prints no statistics of its own."""
    with pytest.raises(RestoreFailed, match="without its statistics"):
        output(["<f+++++++++ dir1/file1.txt"]).statistics(dry_run=False)


def test_a_dry_runs_names_are_its_item_lines_and_bounded():
    out = output(["created 1 directory for /x", "cd+++++++++ a b/", "<f+++++++++ a b/c\\#012d", *STATS],
                 listing=True)
    assert out.names == ["a b/", "a b/c\\#012d"]
    many = output([f"<f+++++++++ f{n}" for n in range(MAX_LISTED + 5)], listing=True)
    assert len(many.names) == MAX_LISTED and many.items == MAX_LISTED + 5


@pytest.mark.parametrize("lines, expected", [
    (["M 254:1 /srv/bkd/web1 /export/web1", "P /export/web1/hourly"], (os.makedev(254, 1), "/srv/bkd/web1/hourly")),
    (["M 8:3 / /srv", "P /srv"], (os.makedev(8, 3), "/")),
    (["M 0:42 /a\\x20b /mnt/x\\x20y", "P /mnt/x y/z"], (os.makedev(0, 42), "/a b/z")),
    (["M 0:42 /a /mnt/x", "P /elsewhere"], None),  # not under that mount: cannot tell
    (["P /srv"], None),
    (["M 8:3 / /srv", "M 8:4 / /srv", "P /srv"], None),
    (["M x:3 / /srv", "P /srv"], None),
])
def test_the_place_of_a_remote_directory_from_findmnt(lines, expected):
    assert _probed_location(lines) == expected


@pytest.mark.parametrize("place, own, inside", [
    ((1, "/srv/bkd"), (1, "/srv/bkd"), True),
    ((1, "/srv/bkd/web1/hourly"), (1, "/srv/bkd"), True),
    ((1, "/srv/bkd2"), (1, "/srv/bkd"), False),
    ((2, "/srv/bkd/web1"), (1, "/srv/bkd"), False),  # another filesystem
    ((1, "/anything"), (1, "/"), True),  # the backup root is a filesystem of its own
])
def test_within(place, own, inside):
    assert mounts.within(place, own) is inside


def test_the_place_of_a_directory_here():
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        dev, path = mounts.location(fd)
    finally:
        os.close(fd)
    assert dev > 0 and path.startswith("/")
