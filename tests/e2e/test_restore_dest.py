"""A restore writes DEST/PATH and the directories it must create, nothing else:
DEST and existing parents keep their owner, mode and times, locally and on
host:path; existing files are never replaced without --overwrite, on either;
a local restore by anyone but root writes as that user; and bkd's own
directories are never a DEST."""

import grp
import json
import os
import subprocess

import pytest

from bkctl import protocol
from conftest import BIN, make_tree

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown and other uids need root (CI runs as root)")
UID = 4243  # an admin who is not root (no such user: setpriv needs none)


def attributes(path) -> tuple:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, oct(st.st_mode), st.st_mtime_ns


def prepared_dest(root, files=()):
    """DEST owned by someone else, with an existing parent of what is restored."""
    (root / "dir0").mkdir(parents=True)
    for name, text in files:
        (root / name).write_text(text)
    os.chmod(root, 0o751)
    os.chmod(root / "dir0", 0o705)
    if os.geteuid() == 0:
        os.chown(root, 1234, 5678)
        os.chown(root / "dir0", 4321, 8765)
    for path in (root / "dir0", root):
        os.utime(path, ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    return {"dest": attributes(root), "dir0": attributes(root / "dir0")}


def test_a_local_restore_leaves_dest_and_existing_parents_as_they_were(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 8)
    os.chmod(source / "dir1", 0o710)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    daemon.run_snapshot()
    dest = tmp_path / "dest"
    before = prepared_dest(dest)

    into_existing = daemon.bkctl("restore", "web1", "latest", "/dir0/file4.txt", "--to", str(dest))
    assert into_existing.returncode == 0, into_existing.stdout + into_existing.stderr
    created = daemon.bkctl("restore", "web1", "latest", "/dir1", "--to", str(dest))
    assert created.returncode == 0, created.stdout + created.stderr

    assert (dest / "dir0/file4.txt").read_text() == (source / "dir0/file4.txt").read_text()
    assert sorted(p.name for p in (dest / "dir1").iterdir()) == sorted(p.name for p in (source / "dir1").iterdir())
    assert {"dest": attributes(dest), "dir0": attributes(dest / "dir0")} == before
    assert oct(os.stat(dest / "dir1").st_mode) == oct(os.stat(source / "dir1").st_mode)  # created: the snapshot's


def test_a_whole_snapshot_restored_into_an_existing_empty_dest_leaves_dest_alone(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 4)
    os.chmod(source, 0o700)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    daemon.run_snapshot()
    dest = tmp_path / "empty"
    dest.mkdir(mode=0o755)
    os.utime(dest, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = attributes(dest)
    result = daemon.bkctl("restore", "web1", "latest", "/", "--to", str(dest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(dest)) == sorted(os.listdir(source))
    assert attributes(dest) == before  # not the snapshot root's 0700


def test_bkds_own_directories_are_never_a_destination(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}]).start()
    snapshot = daemon.run_snapshot()["hosts"][0]["snapshot"]
    backup = daemon.workdir / "backup"
    for dest in (backup / "web1/hourly" / snapshot, backup, daemon.workdir / "state" / "x"):
        result = daemon.bkctl("restore", "web1", "latest", "/", "--to", str(dest), "--overwrite")
        assert result.returncode == 1 and "is inside" in result.stderr, result.stderr
    link = tmp_path / "sneaky"
    link.symlink_to(backup / "web1")  # through a symlink too
    result = daemon.bkctl("restore", "web1", "latest", "/dir0", "--to", str(link / "hourly" / snapshot))
    assert result.returncode == 1 and "is inside the backup root" in result.stderr
    assert daemon.bkctl("verify", "web1", "--all").returncode == 0  # nothing was written into a snapshot


def _as_admin(daemon, *args):
    socket_gid = daemon.socket.stat().st_gid
    staff = grp.getgrnam("staff").gr_gid
    return subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", f"--groups={socket_gid},{staff}", "--",
                           str(BIN / "bkctl"), "--socket", str(daemon.socket), *args],
                          capture_output=True, text=True, timeout=120)


@ROOT_ONLY
def test_a_non_root_admin_restores_as_themself(tmp_path, short_tmp, daemon_factory):
    short_tmp.chmod(0o711)  # the admin can reach the socket and the destinations in it
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}],
                            access={"admins": ["staff"]}).start()
    daemon.run_snapshot()

    forbidden = short_tmp / "root-only"
    forbidden.mkdir(mode=0o755)  # root's: the admin may not write here
    denied = _as_admin(daemon, "restore", "web1", "latest", "/dir0", "--to", str(forbidden))
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert "Permission denied" in denied.stdout + denied.stderr and "Traceback" not in denied.stderr
    assert "the receiving rsync exited with code 23" in denied.stdout, denied.stdout
    assert os.listdir(forbidden) == []

    theirs = short_tmp / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, UID, UID)
    allowed = _as_admin(daemon, "restore", "web1", "latest", "/dir0", "--to", str(theirs))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    owners = {os.lstat(p).st_uid for p in (theirs / "dir0").rglob("*")} | {os.lstat(theirs / "dir0").st_uid}
    assert owners == {UID}  # the caller's files, not root's


@pytest.fixture
def remote(tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "src", 6)
    ssh_fleet.add_host("web1")
    options = ["ConnectTimeout=3", "ServerAliveInterval=2", "ServerAliveCountMax=2"]
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            ssh=ssh_fleet.ssh_settings(options=options,
                                                       restore_identity_file=str(ssh_fleet.client_key))).start()
    daemon.run_snapshot()
    return daemon, source


def test_a_restore_to_host_path_leaves_dest_alone_and_never_replaces_silently(tmp_path, remote):
    daemon, source = remote
    dest = tmp_path / "remote-dest"
    before = prepared_dest(dest, [("dir0/file0.txt", "precious local edit\n")])

    conflict = daemon.bkctl("--json", "restore", "web1", "latest", "/dir0/file0.txt", "--to", f"web1:{dest}")
    assert conflict.returncode == 1 and "exists; use --overwrite" in conflict.stderr
    with pytest.raises(Exception) as refused:
        daemon.call("restore", host="web1", snapshot="latest", path="/dir0/file0.txt", dest=f"web1:{dest}")
    assert refused.value.code == protocol.ErrorCode.CONFLICT
    assert (dest / "dir0/file0.txt").read_text() == "precious local edit\n"

    dry = daemon.bkctl("restore", "web1", "latest", "/dir0", "--to", f"web1:{dest}/elsewhere", "--dry-run")
    assert dry.returncode == 0 and "would write dir0/file4.txt" in dry.stdout, dry.stdout
    assert not (dest / "elsewhere").exists()

    written = daemon.bkctl("--json", "restore", "web1", "latest", "/dir0/file4.txt", "--to", f"web1:{dest}")
    assert written.returncode == 0, written.stdout + written.stderr
    job = json.loads(written.stdout.splitlines()[-1])["job"]
    assert job["hosts"][0]["stats"]["entries_written"] == 1
    assert (dest / "dir0/file4.txt").read_text() == (source / "dir0/file4.txt").read_text()
    assert {"dest": attributes(dest), "dir0": attributes(dest / "dir0")} == before

    replaced = daemon.bkctl("restore", "web1", "latest", "/dir0/file0.txt", "--to", f"web1:{dest}", "--overwrite")
    assert replaced.returncode == 0
    assert (dest / "dir0/file0.txt").read_text() == (source / "dir0/file0.txt").read_text()


def test_a_local_restore_without_waiting_and_one_cancelled_half_way(tmp_path, daemon_factory):
    from conftest import wait_until
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(160 * 1024 * 1024))
    (source / "small.txt").write_text("small\n")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    daemon.run_snapshot()

    detached = daemon.bkctl("--json", "restore", "web1", "latest", "/small.txt", "--to", str(tmp_path / "later"),
                            "--no-wait")
    assert detached.returncode == 0, detached.stderr
    job_id = json.loads(detached.stdout)["job_id"]  # a detached bkctl receives it
    assert daemon.wait_job(job_id)["status"] == "ok"
    assert (tmp_path / "later/small.txt").read_text() == "small\n"

    started = subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), "--json", "restore", "web1",
                                "latest", "/big.bin", "--to", str(tmp_path / "half")], stdout=subprocess.PIPE,
                               text=True)
    first = json.loads(started.stdout.readline())
    wait_until(lambda: daemon.call("status")["hosts"]["web1"], 5)
    job_id = first["job_id"] if "job_id" in first else first["job"]["job_id"]
    assert daemon.call("job.cancel", job_id=job_id)["cancelled"] == ["web1"]
    assert started.wait(30) == 1
    assert daemon.wait_job(job_id)["status"] == "cancelled"
    assert not (tmp_path / "half/big.bin").exists()


def test_a_restore_to_a_host_whose_only_key_is_read_only_says_which_key_to_use_never_internal_error(
        tmp_path, daemon_factory, ssh_fleet):
    """Issue 23: through a key restricted to `rrsync -ro` (what `bkd host add`
    installs) a restore to host:path answered -32603 "internal error": the
    probe of DEST cannot run there. Without a restore key it is refused at
    once; with the read-only key as the restore key, the message says why."""
    source = make_tree(tmp_path / "src", 4)
    public = open(f"{ssh_fleet.client_key}.pub").read().strip()
    ssh_fleet.authorized_keys.write_text(f'restrict,command="rrsync -ro -absolute {source}" {public}\n')
    ssh_fleet.add_host("web1")
    daemon = daemon_factory([{"name": "web1", "source": f"web1:{source}/"}],
                            ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=3"])).start()
    assert daemon.run_snapshot()["status"] == "ok"
    dest = f"web1:{tmp_path / 'back'}"

    def refused() -> str:
        with pytest.raises(Exception) as error:
            daemon.call("restore", host="web1", snapshot="latest", path="/dir0", dest=dest)
        assert error.value.code == protocol.ErrorCode.INVALID_PARAMS, error.value.message
        return error.value.message

    assert "[ssh] restore_identity_file is not set (bkd's backup key is read-only)" in refused()
    daemon.config["ssh"]["restore_identity_file"] = str(ssh_fleet.client_key)
    daemon.write_config()
    assert daemon.bkctl_json("reload")["ok"]
    message = refused()
    assert "ran something other than bkd's probe" in message and "--restore-key" in message
    assert not (tmp_path / "back").exists()
