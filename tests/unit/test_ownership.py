"""Directories bkd owns (SPEC §7): the one-line check and creation without
following planted symlinks. Real directories in tmp_path."""

import errno
import os

import pytest

from bkd.infra.fsutil import make_private_dir, open_private_dir
from bkd.tree.ownership import DirError, check_dir, prepare_dir

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
NOBODY = 65534


def test_creates_missing_directories_0700(tmp_path):
    make_private_dir(tmp_path / "a" / "b" / "c")
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700


def test_an_existing_directory_is_left_as_it_is(tmp_path):
    (tmp_path / "d").mkdir(mode=0o755)
    os.chmod(tmp_path / "d", 0o755)
    make_private_dir(tmp_path / "d")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_a_planted_symlink_in_the_backup_root_is_not_followed(tmp_path):
    # Issue 11 defect 5: h1 -> /root-owned-dir made bkd create hourly/ and meta/ there.
    root, elsewhere = tmp_path / "backup", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "h1").symlink_to(elsewhere)
    with pytest.raises(OSError) as error:
        make_private_dir(root / "h1" / "hourly", under=root)
    assert error.value.errno == errno.ELOOP and error.value.filename == str(root / "h1")
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_deeper_down_is_not_followed_either(tmp_path):
    root, elsewhere = tmp_path / "backup", tmp_path / "elsewhere"
    (root / "h1").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "h1" / "meta").symlink_to(elsewhere)
    with pytest.raises(OSError) as error:
        make_private_dir(root / "h1" / "meta" / "x", under=root)
    assert error.value.errno == errno.ELOOP
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_to_a_file_or_a_file_in_the_way_is_refused(tmp_path):
    root = tmp_path / "backup"
    root.mkdir()
    (root / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_private_dir(root / "file" / "x", under=root)


def test_the_configured_root_may_itself_be_a_symlink(tmp_path):
    # /srv/bkd -> /mnt/big/bkd is the admin's choice, not a plant.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    make_private_dir(tmp_path / "link" / "h1" / "hourly", under=tmp_path / "link")
    assert (real / "h1" / "hourly").is_dir()
    make_private_dir(tmp_path / "link" / "other")  # without under: the existing part is trusted
    assert (real / "other").is_dir()


def test_dot_dot_below_under_is_refused(tmp_path):
    with pytest.raises(ValueError):
        open_private_dir(tmp_path / "a" / ".." / "b", under=tmp_path)


def test_a_good_directory_passes(tmp_path):
    (tmp_path / "ok").mkdir(mode=0o700)
    assert check_dir(tmp_path / "ok", "backup root") is None


def test_a_missing_directory_that_can_be_created_passes_and_is_not_created(tmp_path):
    assert check_dir(tmp_path / "new" / "deeper", "backup root") is None
    assert not (tmp_path / "new").exists()


def test_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_dir(tmp_path / "file" / "root", "backup root") == (
        f"cannot use backup root {tmp_path}/file/root: {tmp_path}/file is not a directory: "
        "choose a path outside it")
    assert check_dir(tmp_path / "file" / "a" / "b", "state directory").startswith(
        f"cannot use state directory {tmp_path}/file/a/b: {tmp_path}/file is not a directory")


def test_a_regular_file_itself(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_dir(tmp_path / "file", "backup root") == \
        f"cannot use backup root {tmp_path}/file: is not a directory"


def test_writable_by_group_or_others(tmp_path):
    for mode in (0o777, 0o770, 0o702):
        (tmp_path / "d").mkdir(exist_ok=True)
        os.chmod(tmp_path / "d", mode)
        assert check_dir(tmp_path / "d", "backup root") == (
            f"cannot use backup root {tmp_path}/d: writable by group or others (mode {mode:04o}): "
            f"chmod go-w {tmp_path}/d")


def test_a_symlinked_host_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "h1").symlink_to(tmp_path / "elsewhere")
    assert check_dir(tmp_path / "h1", "host directory", follow_symlinks=False) == (
        f"cannot use host directory {tmp_path}/h1: is a symlink: bkd does not follow symlinks inside "
        "its directories; remove it (bkd creates the directory itself)")


@root_only
def test_owned_by_another_user(tmp_path):
    (tmp_path / "d").mkdir(mode=0o700)
    os.chown(tmp_path / "d", NOBODY, NOBODY)
    assert check_dir(tmp_path / "d", "backup root") == (
        f"cannot use backup root {tmp_path}/d: owned by uid 65534 (nobody), not by uid 0 (root) "
        f"that bkd runs as: chown root {tmp_path}/d, or choose another directory")


def test_prepare_dir_creates_and_checks(tmp_path):
    prepare_dir(tmp_path / "backup", "backup root")
    assert (tmp_path / "backup").stat().st_mode & 0o777 == 0o700
    prepare_dir(tmp_path / "backup" / "h1", "host directory", under=tmp_path / "backup")
    assert (tmp_path / "backup" / "h1").is_dir()


def test_prepare_dir_refuses_a_planted_symlink_in_one_line(tmp_path):
    root = tmp_path / "backup"
    root.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir()
    (root / "h1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DirError) as error:
        prepare_dir(root / "h1" / "hourly", "host directory", under=root)
    assert str(error.value) == (
        f"cannot use host directory {root}/h1/hourly: {root}/h1 is a symlink: bkd does not follow "
        "symlinks inside its directories; remove it")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_prepare_dir_refuses_a_world_writable_root(tmp_path):
    (tmp_path / "backup").mkdir()
    os.chmod(tmp_path / "backup", 0o777)
    with pytest.raises(DirError, match=r"writable by group or others \(mode 0777\)"):
        prepare_dir(tmp_path / "backup", "backup root")
