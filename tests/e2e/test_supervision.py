"""Every long-running loop is supervised: a failure is logged once with an
incident id, opens an `internal` alert, and the loop comes back; a loop that
keeps failing stops the watchdog pings.

The loops handle their own resources' failures where they live (a host's
broken directory stays in that host's runs, a full state_dir is retried by
the store-sync loop: see test_faults.py); what reaches the supervisor is a
bug. BKD_TEST_FAIL_LOOPS makes a loop raise at its first starts, as a bug
would."""

import json
import socket

import pytest

from conftest import make_tree, wait_until

LOOPS = ["rpc", "scheduler", "freshness", "sampler", "trash", "store-sync", "metrics-textfile", "history",
         "watchdog", "report"]


def log_events(daemon, name: str) -> list[dict]:
    return [event for line in daemon.log().splitlines() if line.startswith("{")
            for event in [json.loads(line)] if event.get("event") == name]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_failing_loop_is_logged_once_alerted_and_restarted(tmp_path, daemon_factory, loop):
    textfile = tmp_path / "bkd.prom"
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3)),
                              "schedule": {"snapshot_every": "2s"}}],
                            schedule={"enabled": True}, metrics={"textfile": str(textfile)},
                            archive={"enabled": False}, monthly={"enabled": False})
    daemon.start(env={"BKD_TEST_FAIL_LOOPS": f"{loop}=1"})
    wait_until(lambda: [e for e in log_events(daemon, "loop.restarted") if e["loop"] == loop], 15,
               what=f"the {loop} loop to restart")
    (failure,) = [e for e in log_events(daemon, "loop.failed") if e["loop"] == loop]
    assert len(failure["incident"]) == 12 and "exception" in failure
    (alert,) = [a for a in daemon.call("alerts.list")["alerts"] if a["kind"] == "internal"]
    assert alert["subject"] == loop and failure["incident"] in alert["message"] and alert["host"] is None
    # It came back: the daemon's work goes on.
    hourly = daemon.workdir / "backup/web1/hourly"
    wait_until(lambda: hourly.exists() and len(list(hourly.iterdir())) >= 2, 30, what="scheduled snapshots")
    wait_until(textfile.exists, 15, what="the metrics textfile")
    assert daemon.call("status")["alerts"]["by_kind"] == {"internal": 1}


def test_a_loop_that_keeps_failing_stops_the_watchdog_pings(tmp_path, short_tmp, daemon_factory):
    path = short_tmp / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}])
    daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "BKD_TEST_FAIL_LOOPS": "freshness=50"},
                 wait=False)
    messages = []
    while not any(m.startswith("STATUS=unhealthy") for m in messages):  # five failures: 1+2+4+8 s of back-off
        messages += sock.recv(4096).decode().split("\n")
    assert "WATCHDOG=1" in messages  # it pinged while healthy ...
    sock.settimeout(2)
    later = []
    try:
        while True:
            later += sock.recv(4096).decode().split("\n")
    except socket.timeout:
        pass
    assert "WATCHDOG=1" not in later  # ... and no longer: systemd restarts it
    assert log_events(daemon, "watchdog.withheld")
    assert "hosts" in daemon.call("status")  # still answering meanwhile
    sock.close()
