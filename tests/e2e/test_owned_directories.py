"""The backup root, state_dir and host directories belong to the daemon
(SPEC §7). Issue 11, defect 5: a 0777 backup root made beforehand by an
ordinary user was used as it was (that user could later move a host's
backups out of bkd's view), and bkd's own mkdir followed a planted symlink
`h1 -> /root-owned-dir`, creating hourly/ and meta/ inside it. `bkd serve`
now refuses at start with one line saying why."""

import os
import pwd

import pytest

from conftest import make_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owning files as another user needs root (CI runs as root)")

NOBODY = pwd.getpwnam("nobody").pw_uid


def refused(daemon) -> str:
    """Start daemon, expect it to exit 1; its one line."""
    daemon.start(wait=False)
    assert daemon.proc.wait(30) == 1
    lines = daemon.log().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert not daemon.socket.exists()
    return lines[0]


@pytest.fixture
def host(tmp_path):
    return {"name": "h1", "source": str(make_tree(tmp_path / "src", 2))}


def test_a_backup_root_made_by_an_ordinary_user_is_refused(tmp_path, daemon_factory, host):
    daemon = daemon_factory([host])
    root = daemon.workdir / "backup"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    os.chown(root, NOBODY, NOBODY)
    line = refused(daemon)
    assert line == (f"bkd: cannot use backup root {root}: owned by uid {NOBODY} (nobody), not by uid 0 (root) "
                    f"that bkd runs as: chown root {root}, or choose another directory")
    assert list(root.iterdir()) == []  # nothing written there


def test_a_group_writable_state_dir_is_refused(tmp_path, daemon_factory, host):
    daemon = daemon_factory([host])
    state = daemon.workdir / "state"
    state.mkdir()
    state.chmod(0o775)
    assert refused(daemon) == (f"bkd: cannot use state_dir {state}: writable by group or others (mode 0775): "
                               f"chmod go-w {state}")


def test_a_planted_host_directory_symlink_is_refused_and_not_followed(tmp_path, daemon_factory, host):
    daemon = daemon_factory([host])
    root = daemon.workdir / "backup"
    root.mkdir(mode=0o700)
    elsewhere = tmp_path / "root-owned-dir"
    elsewhere.mkdir(mode=0o700)
    (root / "h1").symlink_to(elsewhere)
    line = refused(daemon)
    assert line.startswith(f"bkd: cannot use host directory {root / 'h1'}: is a symlink: bkd does not follow")
    assert list(elsewhere.iterdir()) == []  # no hourly/ or meta/ made through the link
