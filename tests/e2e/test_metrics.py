"""The Prometheus exposition, read strictly, against what the daemon says
elsewhere; the shipped rules and dashboard use only metrics that exist,
their expressions parse, and the rules fire when they should (promtool)."""

import json
import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

import doctables
import exposition
from conftest import make_tree, wait_until
from receivers import HttpReceiver

ROOT = Path(__file__).parent.parent.parent
RULES = ROOT / "contrib/prometheus/bkd.rules.yml"
DASHBOARD = ROOT / "contrib/grafana/bkd-dashboard.json"
RULES_TEST = ROOT / "tests/fixtures/prometheus/bkd.rules.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed (Debian's prometheus package): run the README's test command")
    return found


@pytest.fixture
def watched(tmp_path, daemon_factory):
    """A daemon with a good host (two snapshots), a failing one, a sink that
    delivered and one that refuses, and a textfile."""
    good, refusing = HttpReceiver(), HttpReceiver()
    refusing.fail_next = 1000
    daemon = daemon_factory(
        [{"name": "web1", "source": str(make_tree(tmp_path / "web1", 5))},
         {"name": "db1", "source": str(tmp_path / "missing")}],
        alerts={"retry_after": "1s"}, metrics={"textfile": str(tmp_path / "bkd.prom")},
        notify=[{"name": "chat", "type": "webhook", "url": good.url()},
                {"name": "old", "type": "webhook", "url": refusing.url()}]).start()
    daemon.run_snapshot()
    daemon.run_snapshot()
    wait_until(lambda: good.notifications(), 15, what="the run_failed notification")
    yield daemon
    good.stop()
    refusing.stop()


def test_the_exposition_is_strict_and_exact(watched):
    daemon = watched
    text = daemon.call("metrics")["text"]
    families = exposition.parse(text)
    snapshots = daemon.call("snapshots.list", host="web1")["snapshots"]
    newest = snapshots[-1]
    last_success = families["bkd_last_success_timestamp_seconds"]
    # To the second, as an integer: never 1.79591e+09.
    assert last_success.written(host="web1") == str(int(datetime.fromisoformat(newest["time"]).timestamp()))
    assert last_success.samples == [({"host": "web1"}, last_success.value(host="web1"), last_success.written(host="web1"))]
    attempt = families["bkd_last_attempt_timestamp_seconds"]
    assert attempt.value(host="web1") >= last_success.value(host="web1") and attempt.value(host="db1") > 0
    assert families["bkd_last_files"].value(host="web1") == newest["files"] == 5
    assert families["bkd_last_bytes"].value(host="web1") == newest["bytes"]
    assert families["bkd_last_duration_seconds"].value(host="web1") == newest["duration_s"]
    assert families["bkd_snapshots"].value(host="web1") == len(snapshots) == 2
    assert families["bkd_build_info"].samples[0][:2] == ({"version": daemon.call("daemon.info")["version"]}, 1)
    assert families["bkd_consecutive_failures"].value(host="db1") == 2
    assert families["bkd_failures_total"].value(host="db1") == 2
    assert families["bkd_runs_total"].value(host="web1", kind="snapshot", status="ok") == 2
    assert families["bkd_open_alerts"].value(kind="run_failed") == 1
    assert families["bkd_healthy"].value() == 1
    disk = os.statvfs(daemon.workdir / "backup")
    assert families["bkd_disk_size_bytes"].value() == disk.f_blocks * disk.f_frsize
    assert families["bkd_disk_inodes"].value() == disk.f_files
    assert families["bkd_notifications_delivered_total"].value(sink="chat") >= 1
    wait_until(lambda: exposition.parse(daemon.call("metrics")["text"])["bkd_notification_sink_failing"]
               .value(sink="old") >= 1, 15, what="the refusing sink to count as failing")
    assert families["bkd_start_time_seconds"].value() <= families["bkd_heartbeat_timestamp_seconds"].value()
    # bkctl metrics prints the same exposition.
    printed = daemon.bkctl("metrics")
    assert printed.returncode == 0 and set(exposition.parse(printed.stdout)) == set(families)


def used_and_documented(families: dict, which) -> None:
    """Every metric of `which` (a test of its name) that the rules and the dashboard use is in
    the exposition with samples, and docs/watching.md names its type and labels as they are."""
    used = {name for name in re.findall(r"\bbkd_[a-z0-9_]+", RULES.read_text() + DASHBOARD.read_text()) if which(name)}
    assert used
    missing = sorted(name for name in used if name not in families or not families[name].samples)
    assert missing == [], f"the rules or the dashboard use metrics bkd does not write: {missing}"
    for name, kind, labels, _ in doctables.table("watching.md", "## Metrics and Prometheus"):
        if not which(name):
            continue
        documented = set() if labels == "—" else set(labels.split(", "))
        assert families[name].type == kind and families[name].samples, name
        assert all(set(sample[0]) == documented for sample in families[name].samples), name


def on_a_replica(name: str) -> bool:
    """Written by a replica server only: tests/e2e/test_replica.py checks them on one."""
    return name.startswith("bkd_replica_")


def test_every_metric_the_rules_and_the_dashboard_use_exists(watched, tmp_path):
    families = exposition.parse(watched.call("metrics")["text"])
    assert len(set(re.findall(r"\bbkd_[a-z0-9_]+", RULES.read_text() + DASHBOARD.read_text()))) >= 15
    used_and_documented(families, lambda name: not on_a_replica(name))
    # The textfile node-exporter reads is the same exposition.
    textfile = tmp_path / "bkd.prom"
    wait_until(textfile.exists, 15, what="the textfile")
    assert set(exposition.parse(textfile.read_text())) == set(families)


def test_the_rules_pass_promtool_check_and_fire_as_their_tests_say():
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 9 rules found" in check.stdout
    test = subprocess.run([promtool(), "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """Each panel's expression (Grafana's variables given values) checked by
    promtool as a recording rule; and each panel has a title and a place."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        if panel["type"] == "row":  # a row's header holds no query
            continue
        assert panel["targets"], panel["title"]
        exprs += [target["expr"] for target in panel["targets"]]
    exprs += [v["definition"].removeprefix("label_values(").rsplit(",", 1)[0] for v in dashboard["templating"]["list"]]
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for index, expr in enumerate(exprs):
        expr = expr.replace("$__rate_interval", "5m").replace('=~"$instance"', '=~".*"').replace('=~"$host"', '=~".*"')
        assert "$" not in expr, expr
        rules += [f"      - record: dashboard:query{index}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text("\n".join(rules) + "\n")
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])

