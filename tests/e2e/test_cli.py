"""bkctl commands not covered elsewhere: human and --json output, reload, protocol check."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from bkctl import protocol
from conftest import BIN, make_tree, slow_source, wait_until


CLIENT_DIR = Path(__file__).parents[2] / "client"


def test_the_client_imports_nothing_outside_the_standard_library(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(CLIENT_DIR)!r})\n"
        "from bkctl import cli, tui\n"
        f"code = cli.main(['--socket', {str(daemon.socket)!r}, 'status', '--json'])\n"
        # _sysconfigdata_*: the standard library's own build data (sysconfig, which zoneinfo reads), not in the list
        "extra = sorted({m.split('.')[0] for m in sys.modules if not m.startswith('_sysconfigdata_')}\n"
        "               - set(sys.stdlib_module_names) - {'bkctl', '__main__'})\n"
        "print(json.dumps({'code': code, 'extra': extra}))\n"
    )
    # -S: no site-packages at all, so an import of pydantic, structlog or bkd would fail outright.
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"code": 0, "extra": []}


def test_hosts_and_hosts_test(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))},
                             {"name": "gone", "source": str(tmp_path / "missing")}]).start()
    listed = daemon.bkctl_json("hosts")["hosts"]
    assert [(h["name"], h["remote"]) for h in listed] == [("web1", False), ("gone", False)]
    human = daemon.bkctl("hosts")
    assert human.returncode == 0 and human.stdout.split("\n")[1].split()[:3] == ["web1", str(tmp_path / "s"), "local"]

    ok = daemon.bkctl("hosts", "test", "web1")
    assert ok.returncode == 0 and ok.stdout.startswith("web1: ok")
    bad = daemon.bkctl("--json", "hosts", "test")
    assert bad.returncode == 1
    results = json.loads(bad.stdout)["results"]
    assert results["web1"]["ok"] and not results["gone"]["ok"]
    assert results["gone"]["error"] == f"read: cannot read {tmp_path / 'missing'}: rsync exited with code 23 " \
                                       "(partial transfer due to error)"
    assert "No such file or directory" in results["gone"]["detail"]  # rsync's own words: admins (root) only
    assert [c["check"] for c in results["gone"]["checks"]] == ["read"] and results["gone"]["checks"][0]["fix"]
    assert not (daemon.workdir / "backup" / "web1").exists()  # testing writes nothing
    assert daemon.bkctl("hosts", "web1").returncode == 2


def test_with_json_an_error_is_one_json_line_on_stderr_with_its_code(daemon_factory, short_tmp):
    """Issue 18, item 12 (SPEC §2): scripts keep the daemon's error code, and
    an unreachable daemon is told apart (exit 3)."""
    daemon = daemon_factory([]).start()
    missing = daemon.bkctl("--json", "job", "999")
    assert missing.returncode == 1 and missing.stdout == ""
    assert [json.loads(line) for line in missing.stderr.splitlines()] == [
        {"error": {"code": -32002, "message": "no job 999", "data": None}}]
    assert daemon.bkctl("job", "999").stderr == "bkctl: no job 999\n"
    nowhere = str(short_tmp / "nowhere.sock")
    gone = subprocess.run([str(BIN / "bkctl"), "--socket", nowhere, "status", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 3 and gone.stdout == ""
    error = json.loads(gone.stderr)["error"]
    assert error["code"] == "unreachable" and nowhere in error["message"] and "does not exist" in error["message"]
    assert len(gone.stderr.splitlines()) == 1


def test_help_lists_no_internal_command():
    """`bkctl --help` showed `restore-transport ==SUPPRESS==`."""
    shown = subprocess.run([str(BIN / "bkctl"), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "restore" in shown.stdout
    assert "SUPPRESS" not in shown.stdout and "restore-transport" not in shown.stdout


def test_reload_keeps_the_old_config_when_invalid_and_adds_a_host_when_valid(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 2))}],
                            rsync={"bwlimit": "1000"}).start()
    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    good_config = dict(daemon.config)

    daemon.config = {**good_config, "colour": "blue"}
    daemon.write_config()
    refused = daemon.bkctl("reload")
    assert refused.returncode == 1
    assert f"{daemon.config_path}:colour: unknown key" in refused.stderr
    assert json.loads(daemon.bkctl("--json", "reload").stdout)["ok"] is False
    assert list(daemon.call("status")["hosts"]) == ["web1"]

    daemon.config = {**good_config, "host": good_config["host"] + [
        {"name": "db1", "source": str(make_tree(tmp_path / "db", 2))}]}
    daemon.write_config()
    reloaded = daemon.bkctl_json("reload")
    assert reloaded == {"ok": True, "changes": ["host db1 added"], "errors": []}
    assert sorted(daemon.call("status")["hosts"]) == ["db1", "web1"]
    assert {e["host"] for e in daemon.call("schedule.list")["entries"]} == {"db1", "web1"}
    assert daemon.wait_job(job_id)["status"] == "ok"  # the run in progress finished normally
    assert "reloaded: no changes" in daemon.bkctl("reload").stdout

    daemon.config = good_config
    daemon.write_config()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: list(daemon.call("status")["hosts"]) == ["web1"], 10, what="SIGHUP to reload")
    assert "host db1 removed" in daemon.log()


def test_version_shows_client_and_daemon(daemon_factory, short_tmp):
    daemon = daemon_factory([]).start()
    result = daemon.bkctl("--version")
    assert result.returncode == 0
    client_line, daemon_line = result.stdout.splitlines()
    assert client_line.startswith("bkctl ") and f"(protocol {protocol.PROTOCOL_VERSION})" in client_line
    assert daemon_line.startswith("bkd ") and f"pid {daemon.proc.pid}" in daemon_line
    alone = subprocess.run([str(BIN / "bkctl"), "--socket", str(short_tmp / "none"), "--version"],
                           capture_output=True, text=True)
    assert alone.returncode == 0 and "bkd: not reachable" in alone.stdout


def test_a_protocol_mismatch_is_named_clearly(daemon_factory):
    daemon = daemon_factory([]).start()
    script = ("import sys\nfrom bkctl import cli, protocol\nprotocol.PROTOCOL_VERSION = 99\n"
              f"sys.exit(cli.main(['--socket', {str(daemon.socket)!r}, 'status']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "speaks protocol 99, but bkd" in result.stderr
    assert f"speaks protocol {protocol.PROTOCOL_VERSION}: upgrade bkd to bkctl's version" in result.stderr


def test_json_output_of_schedule_prune_and_cancel(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    daemon.run_snapshot()
    assert daemon.bkctl_json("schedule")["entries"][0]["kind"] == "snapshot"
    plan = daemon.bkctl_json("prune", "--dry-run")
    assert plan["dry_run"] is True and plan["plan"]["web1"][0]["action"] == "keep"
    assert daemon.bkctl_json("cancel", "web1") == {"cancelled": []}
    run = daemon.bkctl_json("run", "web1")
    assert isinstance(run["job_id"], int)
    daemon.wait_job(run["job_id"])
    lines = [json.loads(line) for line in daemon.bkctl("--json", "run", "--wait").stdout.splitlines()]
    assert lines[-1]["job"]["status"] == "ok"
    assert all("topic" in line for line in lines[:-1])


def test_metrics_exposition_and_textfile(tmp_path, daemon_factory):
    textfile = tmp_path / "bkd.prom"
    # "never" never succeeds: it is stale once 2 x 1s have passed since it was added.
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 4))},
                             {"name": "never", "source": str(tmp_path / "missing"),
                              "schedule": {"snapshot_every": "1s"}}],
                            metrics={"textfile": str(textfile)}).start()
    daemon.run_snapshot()
    lines = wait_until(lambda: (lines := daemon.call("metrics")["text"].splitlines())
                       and 'bkd_stale{host="never"} 1' in lines and lines, 10, what="never to go stale")
    assert "# TYPE bkd_failures_total counter" in lines
    assert 'bkd_last_files{host="web1"} 4' in lines
    assert 'bkd_stale{host="web1"} 0' in lines
    assert 'bkd_failures_total{host="never"} 1' in lines
    assert any(line.startswith('bkd_last_success_timestamp_seconds{host="web1"} ') for line in lines)
    assert any(line.startswith("bkd_disk_free_bytes ") for line in lines)
    # Rewritten atomically within a few seconds of a change (at most every 5 s).
    written = wait_until(lambda: textfile.exists() and (text := textfile.read_text().splitlines())
                         and 'bkd_last_files{host="web1"} 4' in text and text, 15, what="the textfile")
    assert 'bkd_failures_total{host="never"} 1' in written


def _local(value: str, zone: str) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo
    shown = datetime.fromisoformat(value).astimezone(ZoneInfo(zone))
    return shown.strftime("%Y-%m-%d %H:%M:%S ") + shown.tzname()


def test_human_times_are_local_with_their_zone_and_utc_with_utc_on_either_side(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 3))}]).start()
    job = daemon.run_snapshot()

    def bkctl(*args: str, zone: str = "Asia/Kolkata") -> str:
        result = subprocess.run([str(BIN / "bkctl"), "--socket", str(daemon.socket), *args], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "TZ": zone})
        assert result.returncode == 0, result.stderr
        return result.stdout

    shown = bkctl("job", str(job["job_id"]))
    assert f"started {_local(job['started'], 'Asia/Kolkata')}, finished {_local(job['finished'], 'Asia/Kolkata')}" \
        in shown and " IST" in shown
    for args in (["--utc", "job", str(job["job_id"])], ["job", str(job["job_id"]), "--utc"]):
        assert f"started {_local(job['started'], 'UTC')}, finished" in bkctl(*args)
    listing = bkctl("ls", "web1", "latest", "/dir0", zone="Europe/Berlin")
    mtimes = [e["mtime"] for e in daemon.call("snapshots.browse", host="web1", path="/dir0")["entries"]]
    assert all(_local(m, "Europe/Berlin") in listing for m in mtimes) and "Z " not in listing

    # watch too: each line starts with its event's time, local or UTC.
    watchers = [subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), *extra], stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "TZ": "Asia/Kolkata"})
                for extra in (["watch", "--topic", "job"], ["watch", "--utc", "--topic", "job"])]
    wait_until(lambda: daemon.call("status")["subscribers"] == 2, 10, what="both watchers to subscribe")
    second = daemon.run_snapshot()
    daemon.stop()
    local, utc = (w.communicate(timeout=10)[0] for w in watchers)
    finished = next(line for line in local.splitlines() if f"job {second['job_id']} ok" in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d IST job ", finished), finished
    finished = next(line for line in utc.splitlines() if f"job {second['job_id']} ok" in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC job ", finished), finished
