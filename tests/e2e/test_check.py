"""`bkctl check` as a monitoring system runs it: one line on stdout and the
plugin exit code, against fresh, stale, failing and hung hosts and a
daemon that is not there."""

import json
import os
import re
import subprocess
import time

import pytest

from conftest import BIN, make_tree, slow_source, wait_until

PERF = re.compile(r"^(?P<label>[A-Za-z0-9._-]+)=(?P<value>-?[0-9.]+|U)(?P<unit>s|B)?"
                  r";(?P<warn>[0-9.]*);(?P<crit>[0-9.]*);(?P<min>[0-9.]*);(?P<max>[0-9.]*)$")


def check(daemon, *args: str) -> tuple[int, str, dict]:
    """(exit code, the status text, perfdata by label)."""
    result = daemon.bkctl("check", *args)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stderr == "", (result.stdout, result.stderr)
    status, _, perf = lines[0].partition(" | ")
    data = {}
    for item in perf.split():
        match = PERF.match(item)
        assert match, f"bad perfdata {item!r} in {lines[0]!r}"
        data[match["label"]] = match.groupdict()
    return result.returncode, status, data


def test_fresh_stale_and_failing_hosts(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "web1", 4))},
                             {"name": "web2", "source": str(make_tree(tmp_path / "web2", 2)),
                              "schedule": {"snapshot_every": "1s", "stale_factor": 2}},
                             {"name": "db1", "source": str(tmp_path / "missing")}]).start()
    daemon.run_snapshot("web1", "web2")
    code, status, perf = check(daemon, "web1")
    assert code == 0 and status.startswith("BKD OK - 1 host ok, newest snapshot ")
    snapshot = daemon.call("snapshots.list", host="web1")["snapshots"][-1]
    assert perf["web1_age"]["unit"] == "s" and perf["web1_age"]["crit"] == "7200" and perf["web1_age"]["min"] == "0"
    assert perf["web1_size"]["value"] == str(snapshot["bytes"]) and perf["web1_size"]["unit"] == "B"
    assert float(perf["web1_duration"]["value"]) == snapshot["duration_s"]

    # web2 is stale once two of its 1 s intervals have passed.
    wait_until(lambda: daemon.call("status")["hosts"]["web2"]["stale"], 10, what="web2 to go stale")
    code, status, perf = check(daemon, "web1", "web2")
    assert code == 2 and "1 critical: web2 stale (last snapshot" in status
    assert perf["web2_age"]["crit"] == "2" and int(perf["web2_age"]["value"]) >= 2

    # Thresholds of the caller's own: an age past --crit-age is critical, past --warn-age a warning.
    time.sleep(1.1)
    code, status, _ = check(daemon, "web1", "--crit-age", "1s")
    assert code == 2 and "web1 stale" in status
    code, status, perf = check(daemon, "web1", "--warn-age", "1s", "--crit-age", "1h")
    assert code == 1 and status.startswith("BKD WARNING - 1 warning: web1 last snapshot")
    assert (perf["web1_age"]["warn"], perf["web1_age"]["crit"]) == ("1", "3600")

    # A failing host has a run_failed alert: critical, acknowledged or not (it still fails).
    daemon.run_snapshot("db1")
    code, status, perf = check(daemon, "db1")
    assert code == 2 and status == "BKD CRITICAL - 1 critical: db1 run_failed alert" and perf["db1_age"]["value"] == "U"
    assert daemon.bkctl("alerts", "ack", "--host", "db1").returncode == 0
    code, status, _ = check(daemon, "db1")
    assert code == 2 and "db1 run_failed alert (acknowledged)" in status
    # Silenced (maintenance): it counts for nothing.
    assert daemon.bkctl("alerts", "silence", "db1", "--for", "1h").returncode == 0
    assert check(daemon, "db1")[0] == 0
    # Every host at once: the worst wins, each host has its perfdata.
    code, status, perf = check(daemon)
    assert code == 2 and {"web1_age", "web2_age", "db1_age", "db1_size", "db1_duration"} <= set(perf)


def test_a_hung_run_is_a_warning_until_acknowledged(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 4))}],
                            rsync={"bwlimit": "500"}, alerts={"hung_after": "1s"}).start()
    daemon.call("job.start", hosts=["web1"])
    wait_until(lambda: any(a["kind"] == "hung" for a in daemon.call("alerts.list")["alerts"]), 15,
               what="the hung alert")
    code, status, _ = check(daemon)
    assert (code, status) == (1, "BKD WARNING - 1 warning: web1 hung alert")
    assert daemon.bkctl("alerts", "ack", "--kind", "hung").returncode == 0
    assert check(daemon)[:2] == (0, "BKD OK - 1 host ok")
    daemon.call("job.cancel", hosts=["web1"])


def test_unknown_when_it_cannot_tell(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    for args, words in ((["nosuch"], "unknown host: nosuch"),
                        (["--warn-age", "2h", "--crit-age", "1h"], "--warn-age is longer than --crit-age"),
                        (["--warn-age", "soon"], "invalid duration 'soon'"),
                        (["--bogus"], "unrecognized arguments: --bogus"),
                        (["web1", "--crit-age"], "expected one argument")):
        result = daemon.bkctl("check", *args)
        assert result.returncode == 3 and result.stdout.startswith("BKD UNKNOWN - ") and words in result.stdout, \
            (args, result.stdout, result.stderr)
    daemon.stop()
    result = daemon.bkctl("check")
    assert result.returncode == 3 and result.stdout.splitlines() == [
        f"BKD UNKNOWN - cannot reach bkd: socket {daemon.socket} does not exist (is bkd running?)"]
    # Other commands keep their own exit codes for the same mistakes.
    assert daemon.bkctl("status", "--bogus").returncode == 2
    assert daemon.bkctl("status").returncode == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs root (CI runs as root)")
def test_a_viewer_may_report_read_metrics_and_check_and_a_stranger_gets_unknown(tmp_path, short_tmp, daemon_factory):
    from test_access import as_user
    short_tmp.chmod(0o711)  # let the other uid reach the socket in it
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 3))}],
                            access={"viewers": ["audio"], "operators": [], "admins": []}).start()
    daemon.run_snapshot()
    report = as_user(daemon, ["audio"], "--json", "report")
    assert report.returncode == 0 and json.loads(report.stdout)["hosts"][0]["last_result"] == "ok"
    assert as_user(daemon, ["audio"], "metrics").stdout.startswith("# HELP bkd_build_info")
    viewer = as_user(daemon, ["audio"], "check")
    assert viewer.returncode == 0 and viewer.stdout.startswith("BKD OK - 1 host ok")
    stranger = as_user(daemon, [], "check")
    assert stranger.returncode == 3 and stranger.stdout.startswith("BKD UNKNOWN - ") and "has no role" in stranger.stdout


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["web1", "--warn-age", "2h", "--help"],
                                  ["--bogus", "--help"]])
def test_help_exits_unknown_as_the_plugin_guidelines_say_whatever_else_is_given(args):
    """Monitoring Plugins guidelines: --help shows the parameters, an example and
    remarks, overrides every other option and exits UNKNOWN (3); no daemon needed."""
    result = subprocess.run([str(BIN / "bkctl"), "--socket", "/nonexistent/bkd.sock", "check", *args],
                            capture_output=True, text=True)
    assert result.returncode == 3 and result.stderr == ""
    assert result.stdout.startswith("usage: bkctl check ") and "--warn-age DURATION" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == "  bkctl check --warn-age 2h --crit-age 1d web1 db1"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_plugins_revision_line_and_exits_unknown(flag):
    from importlib.metadata import version
    result = subprocess.run([str(BIN / "bkctl"), "--socket", "/nonexistent/bkd.sock", "check", flag],
                            capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (3, "")
    assert result.stdout == f"bkctl check v{version('bkd')} (bkd {version('bkd')})\n"
