"""jobs.list pages of summaries (issue 17, item 11; SPEC §5): `limit` default
50, capped at 1000 (clamped, `truncated: true`), `before` for the page of
older jobs, each run as {host, status, snapshot, error} — statistics and
details only in job.get — and with `host` only that host's run of each job.
The protocol moved to 3 for it: bkctl and bkd of different protocols refuse
each other with a message saying which one to upgrade."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bkctl import protocol
from conftest import make_tree, wait_until

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = {"host", "status", "snapshot", "error"}


@pytest.fixture
def daemon(tmp_path, daemon_factory):
    hosts = [{"name": name, "source": str(make_tree(tmp_path / name, 3))} for name in ("web1", "web2", "db1")]
    daemon = daemon_factory(hosts).start()
    daemon.run_snapshot()  # job 1: every host
    for host in ("web1", "web2", "web1", "db1", "web1"):  # jobs 2-6: one host each
        daemon.run_snapshot(host)
    return daemon


def test_jobs_list_gives_pages_of_run_summaries(daemon):
    page = daemon.call("jobs.list")
    assert [job["job_id"] for job in page["jobs"]] == [6, 5, 4, 3, 2, 1]
    assert page["truncated"] is False and page["next_before"] is None  # fewer than a page: no more
    every = page["jobs"][-1]
    assert [run["host"] for run in every["hosts"]] == ["db1", "web1", "web2"]
    assert all(set(run) == SUMMARY and run["status"] == "ok" and run["snapshot"] for run in every["hosts"])
    full = daemon.call("job.get", job_id=1)["job"]  # the statistics are there
    assert all(run["stats"]["files"] == 3 for run in full["hosts"])

    first = daemon.call("jobs.list", limit=2)
    assert [job["job_id"] for job in first["jobs"]] == [6, 5] and first["next_before"] == 5
    second = daemon.call("jobs.list", limit=2, before=first["next_before"])
    assert [job["job_id"] for job in second["jobs"]] == [4, 3]
    assert daemon.call("jobs.list", limit=2, before=1) == {"jobs": [], "next_before": None, "truncated": False}


def test_jobs_list_of_a_host_has_only_its_runs(daemon):
    web1 = daemon.call("jobs.list", host="web1")["jobs"]
    assert [job["job_id"] for job in web1] == [6, 4, 2, 1]
    assert all([run["host"] for run in job["hosts"]] == ["web1"] for job in web1)
    assert [job["job_id"] for job in daemon.call("jobs.list", host="web1", limit=1, before=4)["jobs"]] == [2]


def test_a_limit_above_the_cap_is_clamped_and_says_so(daemon):
    clamped = daemon.call("jobs.list", limit=10**9)
    assert clamped["truncated"] is True and len(clamped["jobs"]) == 6


def test_bkctl_jobs_pages_with_before(daemon):
    result = daemon.bkctl("jobs", "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "older jobs: bkctl jobs --limit 2 --before 5"
    older = daemon.bkctl("jobs", "--host", "web1", "--limit", "2", "--before", "4")
    assert older.returncode == 0, older.stderr
    ids = [line.split()[0] for line in older.stdout.splitlines()[1:] if line[:1].isdigit()]
    assert ids == ["2", "1"]
    assert older.stdout.splitlines()[-1] == "older jobs: bkctl jobs --host web1 --limit 2 --before 1"
    assert daemon.bkctl("jobs", "--before", "1").stdout.strip() == "no older jobs"
    assert json.loads(daemon.bkctl("--json", "jobs", "--limit", "1").stdout) == daemon.call("jobs.list", limit=1)


def _copy_with_protocol(tmp_path: Path, packages: list[str], version: int) -> Path:
    """This tree's packages, speaking protocol `version`: another release, as far as the check can tell."""
    root = tmp_path / f"protocol{version}"
    for package in packages:
        shutil.copytree(ROOT / ("client" if package == "bkctl" else "daemon") / package, root / package)
    path = root / "bkctl" / "protocol.py"
    text = path.read_text()
    assert f"PROTOCOL_VERSION = {protocol.PROTOCOL_VERSION}" in text
    path.write_text(text.replace(f"PROTOCOL_VERSION = {protocol.PROTOCOL_VERSION}", f"PROTOCOL_VERSION = {version}"))
    return root


def test_an_older_bkctl_is_told_to_upgrade_bkctl(tmp_path, daemon):
    old = _copy_with_protocol(tmp_path, ["bkctl"], protocol.PROTOCOL_VERSION - 1)
    result = subprocess.run([sys.executable, "-m", "bkctl", "--socket", str(daemon.socket), "jobs"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(old)})
    assert result.returncode == 1
    assert f"speaks protocol {protocol.PROTOCOL_VERSION - 1}, but bkd" in result.stderr
    assert f"speaks protocol {protocol.PROTOCOL_VERSION}: upgrade bkctl to bkd's version" in result.stderr


def test_bkctl_against_an_older_bkd_is_told_to_upgrade_bkd(tmp_path, daemon_factory):
    old = _copy_with_protocol(tmp_path, ["bkctl", "bkd"], protocol.PROTOCOL_VERSION - 1)
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}], name="old")
    log = daemon.log_path.open("ab")
    daemon.proc = subprocess.Popen([sys.executable, "-m", "bkd", "--config", str(daemon.config_path), "serve"],
                                   stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(old)})
    log.close()
    wait_until(daemon._listening, 30, what="the older bkd to listen")
    assert daemon.call("daemon.info")["protocol"] == protocol.PROTOCOL_VERSION - 1
    for command in (["jobs"], ["status"]):
        result = daemon.bkctl(*command)
        assert result.returncode == 1
        assert f"speaks protocol {protocol.PROTOCOL_VERSION}, but bkd" in result.stderr
        assert (f"speaks protocol {protocol.PROTOCOL_VERSION - 1}: upgrade bkd to bkctl's version"
                in result.stderr)
    daemon.stop()
