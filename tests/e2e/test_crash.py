"""kill -9 in the middle of a large rsync: nothing complete is touched, the run
shows as interrupted, and the next run resumes and completes."""

import hashlib
import os
import signal

from conftest import make_tree, wait_until
from test_lifecycle import rsync_pids


def fingerprint(tree):
    prints = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        prints[str(path.relative_to(tree))] = (st.st_ino, st.st_mode, st.st_mtime_ns, st.st_nlink > 0, digest)
    return prints


def test_sigkill_mid_rsync_then_restart(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 30)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    first = daemon.run_snapshot()["hosts"][0]["snapshot"]
    host_dir = daemon.workdir / "backup" / "web1"
    before = fingerprint(host_dir / "hourly" / first)

    (source / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    (source / "dir0" / "file0.txt").write_text("changed before the crash\n")
    daemon.stop()
    daemon.config["rsync"] = {"bwlimit": "300"}
    daemon.write_config()
    daemon.start()
    job_id = daemon.call("job.start")["job_id"]
    wait_until(lambda: daemon.call("status")["hosts"]["web1"]["progress"], 20, what="the transfer")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    marker = str(daemon.workdir / "backup")
    wait_until(lambda: rsync_pids(marker) == [], 10, what="rsync to die with the daemon")

    hourly = host_dir / "hourly"
    partials = [p for p in hourly.iterdir() if p.name.startswith(".partial-")]
    assert len(partials) == 1
    assert os.readlink(host_dir / "latest") == f"hourly/{first}"

    del daemon.config["rsync"]
    daemon.write_config()
    daemon.start()
    assert rsync_pids(marker) == []
    assert [s["name"] for s in daemon.call("snapshots.list", host="web1")["snapshots"]] == [first]
    job = daemon.call("job.get", job_id=job_id)["job"]
    assert job["status"] == "interrupted" and job["hosts"][0]["status"] == "interrupted"
    assert "interrupted" in daemon.bkctl("jobs").stdout
    assert fingerprint(hourly / first) == before

    resumed = daemon.run_snapshot()
    assert resumed["status"] == "ok"
    second = resumed["hosts"][0]["snapshot"]
    assert sorted(p.name for p in hourly.iterdir()) == sorted([first, second])
    assert (hourly / second / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert (hourly / second / "dir0/file0.txt").read_text() == "changed before the crash\n"
    assert fingerprint(hourly / first) == before
    assert os.readlink(host_dir / "latest") == f"hourly/{second}"
