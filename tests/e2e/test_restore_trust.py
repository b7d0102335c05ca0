"""A restore trusts nobody on the receiving side (issue 18 = "2/7" item 9,
issue 17 = "1/7" item 7): nothing the caller's receiver sends makes the
daemon's sender open anything it was not told to send; a receiver that
never speaks or stops half way fails the restore after rsync.timeout; the
record is the daemon's own rsync's, never what a client reports; and no
view of bkd's own directories (a bind mount, a DEST swapped after the
check) is ever a destination."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bkctl import restore as receiving
from bkctl.client import Client, RemoteError
from bkctl.protocol import ErrorCode
from conftest import BIN, make_tree, wait_until
from unix_users import unix_users

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="users, mounts and other uids need root (CI runs as root)")
RSYNC = shutil.which("rsync")


def wrapped_rsync(directory: Path, script: str) -> dict:
    """An environment whose `rsync` is a shell script of the test's (the caller
    controls the receiving side, so it can be anything)."""
    directory.mkdir(mode=0o755, exist_ok=True)
    wrapper = directory / "rsync"
    wrapper.write_text(f"#!/bin/sh\n{script}\n")
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


def bkctl(daemon, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkctl"), "--socket", str(daemon.socket), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def restore_jobs(daemon) -> list[dict]:
    return [job for job in daemon.call("jobs.list", limit=50)["jobs"] if job["kind"] == "restore"]


class OpenWatch(threading.Thread):
    """Whether anything opens the FIFO at path for reading while it runs: a
    writer's non-blocking open succeeds only then (and lets the reader go on)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.opened, self.done = path, False, threading.Event()
        os.mkfifo(path, 0o600)

    def run(self) -> None:
        while not self.done.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.002)
                continue
            self.opened = True
            os.close(fd)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


@ROOT_ONLY
def test_a_receivers_filter_rules_never_make_the_root_sender_open_a_file(tmp_path, short_tmp, daemon_factory):
    """2/7 item 9a: a non-root admin's own receiver sent --filter=': /.probe' and
    the daemon's sender, root, opened a 0600 file in the backup root."""
    with unix_users() as users:
        sock_group, admins = users.group("s"), users.group("a")
        admin = users.user("A", [sock_group, admins])
        short_tmp.chmod(0o711)
        daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 4))}],
                                access={"admins": [admins]}).start()
        os.chown(daemon.socket, -1, int(subprocess.check_output(["getent", "group", sock_group]).split(b":")[2]))
        assert daemon.run_snapshot()["status"] == "ok"
        env = wrapped_rsync(short_tmp / "bin", f"exec {RSYNC} --filter=': /.probe' \"$@\"")
        dest = short_tmp / "dest"
        dest.mkdir()
        shutil.chown(dest, admin, admin)

        with OpenWatch(daemon.workdir / "backup" / ".probe") as probe:
            result = subprocess.run(["setpriv", f"--reuid={admin}", f"--regid={admin}", "--init-groups", "--",
                                     str(BIN / "bkctl"), "--socket", str(daemon.socket), "restore", "web1", "latest",
                                     "/dir0", "--to", str(dest)], capture_output=True, text=True, env=env, timeout=120)
        assert not probe.opened, "the sender opened a file the receiver named"
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(p.name for p in (dest / "dir0").iterdir()) == ["file0.txt"]
        assert {p.stat().st_uid for p in dest.rglob("*")} == {int(subprocess.check_output(["id", "-u", admin]))}


def test_a_receiver_that_never_speaks_fails_the_restore_after_rsync_timeout(tmp_path, daemon_factory):
    """2/7 item 9b: a receiver that attached and sent nothing kept the restore
    running for ever, and other restores of the host got -32001."""
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 4))}],
                            rsync={"timeout": "2s"}).start()
    assert daemon.run_snapshot()["status"] == "ok"
    silent = wrapped_rsync(tmp_path / "bin", "exec sleep 600")  # holds its ends of the connection, says nothing

    started = time.monotonic()
    result = bkctl(daemon, "restore", "web1", "latest", "/dir0", "--to", str(tmp_path / "never"), env=silent)
    assert result.returncode == 1, result.stdout + result.stderr
    (job,) = restore_jobs(daemon)
    assert job["status"] == "failed"
    assert "rsync exited with code 30 (timeout in data send/receive)" in job["hosts"][0]["error"]
    assert time.monotonic() - started < 60  # rsync.timeout, bkctl's grace for its receiver, and slack
    assert not (tmp_path / "never").exists()

    # The host's restores are free again.
    assert bkctl(daemon, "restore", "web1", "latest", "/dir0", "--to", str(tmp_path / "then")).returncode == 0
    assert (tmp_path / "then/dir0/file0.txt").read_text() == (tmp_path / "src/dir0/file0.txt").read_text()


def test_a_token_never_used_expires_with_its_restore(tmp_path, daemon_factory):
    """The attach is bounded: a restore whose caller never attaches fails
    within rsync.timeout, saying why, and the token is gone."""
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}],
                            rsync={"timeout": "2s"}).start()
    assert daemon.run_snapshot()["status"] == "ok"
    answer = _ask_restore(daemon, "/dir0", tmp_path / "dest")
    job = daemon.wait_job(answer["job_id"], timeout=30)
    assert job["status"] == "failed"
    assert "no receiver attached within 2 s" in job["hosts"][0]["detail"]
    with pytest.raises(receiving.ReceiveFailed, match="no restore is waiting"):
        receiving.attach(str(daemon.socket), answer["receive"]["token"])


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        found += map(int, children)
        todo += map(int, children)
    return found


def _named(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_receiver_stopped_half_way_fails_the_restore_after_rsync_timeout(tmp_path, daemon_factory):
    """2/7 item 9b: a receiver stopped (SIGSTOP) mid-transfer kept the restore
    running (still at 90 s), and other restores of that host got -32001."""
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "big.bin", "wb") as f:  # half a gigabyte to send, little of it on the disk
        for offset in range(0, 512 << 20, 16 << 20):
            f.seek(offset)
            f.write(os.urandom(4096))
        f.truncate(512 << 20)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], rsync={"timeout": "2s"}).start()
    assert daemon.run_snapshot()["status"] == "ok"
    dest = tmp_path / "dest"
    dest.mkdir()

    watching = Client(str(daemon.socket))
    watching.subscribe(["progress"])
    proc = subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), "restore", "web1", "latest",
                             "/big.bin", "--to", str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = int(proc.stdout.readline().split()[1].rstrip(":"))  # "job N: restoring …"
    stopped = []
    try:
        wait_until(lambda: any(p.name.startswith(".big.bin.") for p in dest.iterdir()), 60,
                   interval=0.005, what="the transfer to start")
        stopped = [pid for pid in _descendants(proc.pid) if _named(pid) == "rsync"]
        assert stopped, "no receiving rsync under bkctl"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        # Progress is the sender's own count of what it wrote, against what PATH holds.
        progress = next(e["progress"] for e in watching.events(timeout=10)
                        if e.get("job_id") == job_id and e["progress"]["percent"] is not None)
        assert progress["bytes"] > 0 and 0 <= progress["percent"] < 100, progress
        busy = bkctl(daemon, "restore", "web1", "latest", "/big.bin", "--to", str(tmp_path / "other"))
        assert busy.returncode == 1 and "already running" in busy.stderr, busy.stderr  # -32001 while it lasts

        job = daemon.wait_job(job_id, timeout=30)  # rsync.timeout, then the group stop's grace
        assert job["status"] == "failed"
        assert "rsync exited with code 30 (timeout in data send/receive)" in job["hosts"][0]["error"]
    finally:
        watching.close()
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.wait(30) == 1
    assert not (dest / "big.bin").exists()
    then = bkctl(daemon, "restore", "web1", "latest", "/big.bin", "--to", str(tmp_path / "then"))
    assert then.returncode == 0, then.stdout + then.stderr


def _ask_restore(daemon, path: str, dest: Path) -> dict:
    """The restore call bkctl makes for a local DEST (without receiving it)."""
    looked = receiving.look(str(dest), receiving.components(path))
    try:
        with Client(str(daemon.socket)) as client:
            return client.call("restore", {"host": "web1", "snapshot": "latest", "path": path, "dest": str(dest),
                                           "receiver": looked.receiver()})
    finally:
        looked.close()


def test_a_forged_report_never_becomes_the_restores_record(tmp_path, daemon_factory):
    """2/7 item 9c: a forged restore.finish became the job's record (status,
    entries_written 123456, raw stderr in detail). There is no such call any
    more: the daemon's rsync decides the outcome and the counts."""
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 8))}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    dest = tmp_path / "dest"
    forged = {"returncode": 0, "written": 123456, "stderr": ["\x1b]52;c;Zm9yZ2Vk\x07\x1b[2J forged"]}
    with Client(str(daemon.socket)) as client:
        looked = receiving.look(str(dest), receiving.components("/dir1"))
        answer = client.call("restore", {"host": "web1", "snapshot": "latest", "path": "/dir1", "dest": str(dest),
                                         "receiver": looked.receiver()})
        with pytest.raises(RemoteError) as refused:
            client.call("restore.finish", {"token": answer["receive"]["token"], **forged})
        assert refused.value.code == ErrorCode.METHOD_NOT_FOUND
        outcome = receiving.receive(str(daemon.socket), answer["receive"], looked, dry_run=False)
        looked.close()
    assert outcome["returncode"] == 0, outcome
    job = daemon.wait_job(answer["job_id"])
    assert job["status"] == "ok" and job["hosts"][0]["detail"] is None
    stats = job["hosts"][0]["stats"]
    assert (stats["entries_written"], stats["files"], stats["created"]) == (3, 2, 3)  # dir1/, file1, file5
    assert "forged" not in json.dumps(job) and "123456" not in json.dumps(job)
    assert sorted(p.name for p in (dest / "dir1").iterdir()) == ["file1.txt", "file5.txt"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_restored_bytes_never_pass_through_the_daemon(tmp_path, daemon_factory):
    """2/7 item 9d: the daemon relayed every byte in Python (a whole tree took
    2.4x cp -a). Now the two rsyncs talk directly: restoring half a gigabyte
    costs the daemon next to no CPU."""
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "big.bin", "wb") as f:
        f.truncate(512 << 20)  # sent in full (512 MiB over the connection), stored as a hole
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    before = _cpu_seconds(daemon.proc.pid)
    result = bkctl(daemon, "restore", "web1", "latest", "/big.bin", "--to", str(tmp_path / "dest"))
    assert result.returncode == 0, result.stdout + result.stderr
    spent = _cpu_seconds(daemon.proc.pid) - before
    assert (tmp_path / "dest/big.bin").stat().st_size == 512 << 20
    assert spent < 0.1, f"the daemon spent {spent:.2f} CPU-s on a 512 MiB restore"


@ROOT_ONLY
def test_a_restore_into_another_view_of_bkds_own_directories_is_refused(tmp_path, daemon_factory, bind_mount):
    """1/7 item 7: a restore into a bind mount of the backup root rewrote a
    complete snapshot: the checks compared paths. They compare device and inode."""
    source = make_tree(tmp_path / "src", 6)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    snapshot = daemon.run_snapshot()["hosts"][0]["snapshot"]
    backup, state = daemon.workdir / "backup", daemon.workdir / "state"
    alias, state_alias, outer = tmp_path / "alias", tmp_path / "state-alias", tmp_path / "outer"
    for directory in (alias, state_alias, outer / "dir0"):
        directory.mkdir(parents=True)
    bind_mount(str(backup), alias)
    bind_mount(str(state), state_alias)
    bind_mount(str(backup / "web1/hourly" / snapshot / "dir0"), outer / "dir0")  # a directory along PATH
    before = sorted(str(p.relative_to(backup)) for p in backup.rglob("*"))

    for dest, path, what in [(alias / "web1/hourly" / snapshot, "/", "the backup root"),
                             (alias, "/dir0", "the backup root"),
                             (alias / "web1/new/deeper", "/dir0", "the backup root"),  # created under it
                             (outer, "/dir0", "the backup root"),
                             (state_alias / "x", "/dir0", "state_dir")]:
        result = daemon.bkctl("restore", "web1", "latest", path, "--to", str(dest), "--overwrite")
        assert result.returncode == 1, (dest, result.stdout + result.stderr)
        assert f"is inside {what}" in result.stderr, result.stderr
    assert sorted(str(p.relative_to(backup)) for p in backup.rglob("*")) == before
    assert daemon.bkctl("verify", "web1", "--all").returncode == 0
    assert restore_jobs(daemon) == []  # refused before any job started


@ROOT_ONLY
def test_a_dest_swapped_after_the_check_is_not_where_the_restore_lands(tmp_path, daemon_factory, bind_mount):
    """The receiver writes under the directory bkctl looked at and held open,
    not under whatever DEST names by the time it runs: root's DEST swapped
    for a symlink to a view of the backup root after the check writes
    nothing there."""
    source = make_tree(tmp_path / "src", 4)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    backup = daemon.workdir / "backup"
    alias, dest = tmp_path / "alias", tmp_path / "dest"
    alias.mkdir()
    dest.mkdir()
    bind_mount(str(backup), alias)
    before = sorted(str(p.relative_to(backup)) for p in backup.rglob("*"))
    swap = wrapped_rsync(tmp_path / "bin", f"mv {dest} {dest}.checked && ln -s {alias} {dest} && exec {RSYNC} \"$@\"")

    result = bkctl(daemon, "restore", "web1", "latest", "/dir0", "--to", str(dest), env=swap)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(str(p.relative_to(backup)) for p in backup.rglob("*")) == before
    assert (Path(f"{dest}.checked") / "dir0/file0.txt").read_text() == (source / "dir0/file0.txt").read_text()


@ROOT_ONLY
def test_a_restore_to_this_machine_over_ssh_into_a_view_of_the_backup_root_is_refused(tmp_path, daemon_factory,
                                                                                       ssh_fleet, bind_mount):
    """1/7 item 7 over SSH: the self-check (this machine?) compares device and inode too."""
    ssh_fleet.add_host("loop")
    source = make_tree(tmp_path / "src", 3)
    daemon = daemon_factory([{"name": "loop", "source": f"loop:{source}"}],
                            ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=3"],
                                                       restore_identity_file=str(ssh_fleet.client_key))).start()
    snapshot = daemon.run_snapshot()["hosts"][0]["snapshot"]
    backup = daemon.workdir / "backup"
    alias = tmp_path / "alias"
    alias.mkdir()
    bind_mount(str(backup), alias)
    before = sorted(str(p.relative_to(backup)) for p in backup.rglob("*"))

    for dest in (alias / "loop/hourly" / snapshot, alias / "loop/new"):
        refused = daemon.bkctl("restore", "loop", "latest", "/dir0", "--to", f"loop:{dest}", "--overwrite")
        assert refused.returncode == 1 and "is inside the backup root" in refused.stderr, refused.stderr
    assert sorted(str(p.relative_to(backup)) for p in backup.rglob("*")) == before
    elsewhere = daemon.bkctl("restore", "loop", "latest", "/dir0", "--to", f"loop:{tmp_path / 'fine'}")
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
