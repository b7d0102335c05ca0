"""Entries dated in the future (a clock that stepped back) are kept and alerted
on, and never make a host look fresh or an archive look recent."""

import os
import subprocess

from conftest import make_tree, wait_until


def test_future_dated_entries_raise_a_clock_alert_and_count_for_nothing(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 5)
    daemon = daemon_factory([{"name": "web1", "source": str(source),
                              "schedule": {"snapshot_every": "2s", "stale_factor": 2}}],
                            monthly={"enabled": False}).start()
    real = daemon.run_snapshot()["hosts"][0]["snapshot"]
    host_dir = daemon.workdir / "backup/web1"
    future = "2099-01-01_000000"
    subprocess.run(["cp", "-al", str(host_dir / "hourly" / real), str(host_dir / "hourly" / future)], check=True)
    os.symlink(f"hourly/{future}", host_dir / "latest.new")
    os.replace(host_dir / "latest.new", host_dir / "latest")
    (host_dir / "archives").mkdir(mode=0o700)
    (host_dir / "archives" / f"web1_{future}.tar.zst").write_bytes(b"not really")

    alerts = wait_until(lambda: (found := {a["kind"]: a for a in daemon.call("alerts.list")["alerts"]})
                        and {"clock", "stale"} <= set(found) and found, 15, what="clock and stale alerts")
    assert "2 snapshot(s) or archive(s) dated in the future" in alerts["clock"]["message"]
    # Freshness is measured from the newest snapshot not in the future: the host is stale.
    status = daemon.call("status")["hosts"]["web1"]
    assert status["last_snapshot"] == real and status["stale"] and status["future_entries"] == 2
    # A future archive does not stop new archives, nor does retention touch the future snapshot.
    archive = daemon.bkctl("run", "web1", "--kind", "archive", "--wait")
    assert archive.returncode == 0, archive.stdout
    assert (host_dir / "archives" / f"web1_{real}.tar.zst").exists()
    assert daemon.bkctl("prune", "web1").returncode == 0
    assert (host_dir / "hourly" / future).is_dir()

    # Gone: the clock episode resolves by itself.
    subprocess.run(["rm", "-rf", str(host_dir / "hourly" / future), str(host_dir / "archives" / f"web1_{future}.tar.zst")],
                   check=True)
    wait_until(lambda: not any(a["kind"] == "clock" for a in daemon.call("alerts.list")["alerts"]), 15,
               what="the clock alert to resolve")
    resolved = [a for a in daemon.call("alerts.list", all=True)["alerts"] if a["kind"] == "clock"]
    assert [a["state"] for a in resolved] == ["resolved"]
