"""The control-plane benchmark still runs: its quick mode builds a small
state, drives the real daemon through every measurement and prints the table
(numbers are not checked here: speed targets live in the benchmark and in
docs/performance.md, never in tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("`status` (raw socket)", "`metrics` (raw socket)", "`snapshots.list` HOST, limit 50",
        "`jobs.list` limit 50", "`jobs.list` HOST, limit 50", "`python -c pass`", "`bkctl status` wall time",
        "`bkctl snapshots HOST` wall time", "`bkctl jobs --limit 50` wall time", "daemon RSS, idle",
        "round of 10 hosts, textfile off", "round of 10 hosts, textfile on", "`jobs.list` limit 50 after the rounds",
        "prune of a host with 1,000 snapshots", "`status` during attack: none",
        "`status` during attack: 4 connections pipelining `daemon.info`, unread",
        "scheduled slot delay during attack: 200 pipelined `jobs.list` limit 10000, unread",
        "scheduled slot delay during attack: 4 connections pipelining `jobs.list` limit 1000, read")


def test_the_control_plane_benchmark_runs_in_quick_mode_and_prints_its_table(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "control_plane.py"), "--quick",
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| measurement | median | p99 | target |")
    for what in ROWS:
        matching = [row for row in rows if what in row]
        assert matching, f"no row for {what}:\n{result.stdout}"
        assert all(row.count("|") == 7 and "load " in row for row in matching)
    assert "10 hosts, 2,000 snapshot directories, 10,000 job rows" in result.stdout
    assert "load before:" in result.stdout and "load after:" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the state it built is gone
