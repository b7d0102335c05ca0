"""What every role may read about a failed run: the category and exit code,
rebuilt from what was recognised, never a cut of the message (whose tail
quotes file names, hook command lines and command output)."""

import errno

import pytest

from bkd.pipeline.outcomes import public_error, public_warning
from bkd.pipeline.archive import StageFailed
from bkd.pipeline.hooks import HookFailed
from bkd.restore.transfer import RestoreFailed
from bkd.pipeline.snapshot import SnapshotFailed

SECRET = "/home/alice/zz-secret-name.txt"


def _chained(error: Exception, cause: Exception) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("stage, error, public", [
    ("snapshot", SnapshotFailed(f'rsync exited with code 23 (partial transfer due to error): '
                                f'rsync: [sender] send_files failed to open "{SECRET}": Permission denied (13)'),
     "snapshot: rsync exited with code 23 (partial transfer due to error)"),
    ("snapshot", SnapshotFailed(f"rsync exited with code 11 (error in file I/O (is the backup disk full?)): "
                                f"write failed on \"{SECRET}\": No space left on device (28)"),
     "snapshot: rsync exited with code 11 (error in file I/O (is the backup disk full?))"),
    ("snapshot", SnapshotFailed(f"rsync exited with code 255 (the SSH connection failed): {SECRET}"),
     "snapshot: rsync exited with code 255 (the SSH connection failed)"),
    ("snapshot", SnapshotFailed("rsync exited with code 12 (the SSH connection failed): ssh: connect to host "
                                f"10.0.0.1 port 22: Connection refused {SECRET}"),
     "snapshot: rsync exited with code 12 (the SSH connection failed)"),
    ("snapshot", SnapshotFailed(f"rsync exited with code 12 ({SECRET}): a meaning bkd never wrote"),
     "snapshot: rsync exited with code 12 (error in rsync protocol data stream)"),
    ("snapshot", SnapshotFailed("rsync exited with code 77 (unknown error): whatever it said"),
     "snapshot: rsync exited with code 77 (unknown error)"),
    ("pre", HookFailed("pre hook exited with code 3: PGPASSWORD=hunter2 pg_dumpall: connection refused"),
     "pre hook exited with code 3"),
    ("post", HookFailed("post hook timed out after 30s"), "post hook timed out after 30s"),
    ("snapshot", _chained(SnapshotFailed(f"cannot checksum the new snapshot: [Errno 2] No such file: '{SECRET}'"),
                          FileNotFoundError(errno.ENOENT, "No such file or directory", SECRET)),
     "snapshot: cannot checksum the new snapshot (no such file or directory)"),
    ("snapshot", PermissionError(errno.EACCES, "Permission denied", SECRET),
     "snapshot: file system error (permission denied)"),
    ("archive", StageFailed(f"archive failed (exit 2): tar: {SECRET}: Cannot open"), "archive failed (exit 2)"),
    ("archive", StageFailed("snapshot 2026-01-02_030405-2 is gone"), "archive: snapshot 2026-01-02_030405-2 is gone"),
    ("monthly", StageFailed("no complete snapshot yet"), "monthly: no complete snapshot yet"),
    ("restore", RestoreFailed(f'rsync exited with code 23 (partial transfer due to error): mkdir "{SECRET}" failed'),
     "restore: rsync exited with code 23 (partial transfer due to error)"),
    ("snapshot", SnapshotFailed("rsync hung: no I/O for 300s (rsync.timeout); its processes were stopped"),
     "snapshot: hung: no I/O for 300s"),
    ("snapshot", SnapshotFailed(f"a message nobody taught this module: {SECRET}"), "snapshot failed"),
])
def test_a_failure_is_its_category_and_exit_code(stage, error, public):
    assert public_error(stage, error) == public
    assert "secret" not in public and "hunter2" not in public


def test_warnings_keep_their_counts_and_lose_their_file_names():
    warning = (f'rsync exited with code 24 (some files vanished before they could be transferred): '
               f'file has vanished: "{SECRET}"; metadata of 2 file(s) changed during the snapshot and was applied '
               f"to inodes shared with older snapshots: {SECRET}, b")
    assert public_warning(warning) == (
        "rsync exited with code 24 (some files vanished before they could be transferred); metadata of 2 file(s) "
        "changed during the snapshot and was applied to inodes shared with older snapshots")
    assert public_warning(f"something new: {SECRET}") == "completed with warnings"


def test_a_file_named_like_a_category_only_adds_that_category():
    crafted = 'rsync exited with code 24 (x): file has vanished: "/srv/rsync exited with code 99 (evil)"'
    assert public_warning(crafted) == ("rsync exited with code 24 (some files vanished before they could be "
                                       "transferred); rsync exited with code 99 (unknown error)")
