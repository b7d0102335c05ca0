"""Benchmark: bkd's control plane on the state of a server that has run for a
year, measured on the real daemon over its real socket.

    .venv/bin/python bench/control_plane.py [--hosts 100] [--calls 100] [--quick] [--workdir DIR] [--keep]

It builds the state (untimed): every host with a real local source of a few
files and the hourly snapshots a year of runs leaves under the default
retention (about 900 directories each, empty, each with a meta/NAME.json like
a real one), and a year of hourly job history (one job per host and hour, as
the scheduler starts them once hosts drift apart: 876,000 job rows for 100
hosts, about 1 % failed) bulk-inserted into a state database that the daemon
itself created, with its snapshot rows, host_state and run_counts consistent
with that history. Then it starts `bkd serve` (schedule disabled) and times,
one method at a time:

- status, metrics, snapshots.list (limit 50), jobs.list (limit 50, all
  hosts and one host) and schedule.list through a raw socket client (one
  connection, `--calls` calls each, medians and p99, and the daemon's CPU
  time per call);
- `bkctl status`, `bkctl snapshots HOST` and `bkctl jobs --limit 50`, wall
  time including process start, next to a bare `python -c pass`;
- the daemon's RSS and CPU while idle with that state (after the version
  indexes, which this state has none of, are rebuilt: that time is
  reported too, but nothing is measured while they are built);
- rounds of `job.start` of every host until done, [metrics] textfile on and
  off, interleaved; then jobs.list again, now that the newest jobs ran all
  hosts each;
- a prune of a host holding 2,000 snapshots until its trash is empty;
- clients that try to starve the daemon (issue 18): connections pipelining
  `daemon.info` or `jobs.list` without reading, or reading as fast as they
  can, each for a while: root's `status` latency meanwhile, and how late
  the scheduled snapshots of one host (every 3 s) start after their slots.

The machine is shared and noisy: the load (`uptime`) is printed with the
numbers; compare ratios within one run. Everything is created under
--workdir (default: a new directory under /var/tmp) and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import tomli_w

from bkd.config.models import Retention
from bkd.tree.layout import TIME_FORMAT
from bkd.views.metrics import TEXTFILE_EVERY
from bkd.pipeline.retention import plan
from bkd.state.store import DATABASE_NAME

BIN = Path(sys.executable).parent
HOUR = timedelta(hours=1)
FAIL_EVERY = 97  # one run in 97 fails: the history has failures in it, like a real one
ERROR = "cannot reach the host: ssh: connect to host db1 port 22: Connection refused (rsync exit 255)"


# ---- a raw client and timing -------------------------------------------------------------------

class Raw:
    """One Unix-socket connection speaking bkd's NDJSON JSON-RPC, nothing else."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(300)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("rb")
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        request = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params:
            request["params"] = params
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            answer = json.loads(self.lines.readline())
            if answer.get("id") == self.next_id:
                break
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 100 calls is the second slowest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- building a year of state ------------------------------------------------------------------

def name_of(time: datetime) -> str:
    return time.strftime(TIME_FORMAT)


def _iso_of(name: str) -> str:
    return datetime.strptime(name, TIME_FORMAT).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(time: datetime) -> str:
    return time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class State:
    """What the benchmark built, and where."""

    def __init__(self, root: Path, hosts: int, socket_dir: Path):
        self.root = root
        self.backup = root / "backup"
        self.state_dir = root / "state"
        self.sources = root / "sources"
        self.hosts = [f"h{index:03d}" for index in range(hosts)]
        self.socket = socket_dir / "bkd.sock"
        self.config_path = root / "bkd.toml"
        self.textfile = root / "metrics" / "bkd.prom"
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self, textfile: bool = False, scheduled_every: str = "") -> None:
        """scheduled_every: the first host alone is scheduled, this often (the others never fall due)."""
        config = {
            "backup_root": str(self.backup), "state_dir": str(self.state_dir), "socket": str(self.socket),
            "schedule": {"enabled": False}, "metrics": {"textfile": str(self.textfile) if textfile else ""},
            "host": [{"name": name, "source": str(self.sources / name)} for name in self.hosts],
        }
        if scheduled_every:
            config["schedule"] = {"enabled": True, "snapshot_every": "3650d"}
            config["archive"] = config["monthly"] = {"enabled": False}
            config["host"][0]["schedule"] = {"snapshot_every": scheduled_every}
        self.config_path.write_text(tomli_w.dumps(config))

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(BIN / "bkd"), "--config", str(self.config_path), "serve"],
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"bkd exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                Raw(self.socket).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("bkd did not listen within 300 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)

    def database(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.state_dir / DATABASE_NAME, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db


def make_sources(state: State, files: int = 5) -> None:
    for name in state.hosts:
        directory = state.sources / name / "etc"
        directory.mkdir(parents=True)
        for index in range(files):
            (directory / f"file{index}.conf").write_text(f"{name} setting {index}\n" * (index + 1))


def template_run(state: State) -> tuple[dict, dict, str]:
    """Start the daemon once (it creates the database), take one real snapshot,
    and keep its job record, its meta/ record and its snapshot row as templates."""
    state.start()
    client = Raw(state.socket)
    job_id = client.call("job.start", hosts=[state.hosts[0]])["job_id"]
    while not (job := client.call("job.get", job_id=job_id)["job"])["finished"]:
        time.sleep(0.05)
    client.close()
    state.stop()
    run = job["hosts"][0]
    if run["status"] != "ok":
        sys.exit(f"the template run failed: {run}")
    host_dir = state.backup / state.hosts[0]
    meta = json.loads((host_dir / "meta" / f"{run['snapshot']}.json").read_text())
    db = state.database()
    stats = db.execute("SELECT stats FROM snapshots").fetchone()["stats"]
    # Forget the real run: the year below replaces it.
    db.executescript("DELETE FROM job_hosts; DELETE FROM jobs; DELETE FROM snapshots; DELETE FROM run_counts;")
    db.close()
    for sub in ("hourly", "meta"):
        shutil.rmtree(host_dir / sub)
    (host_dir / "latest").unlink()
    return run, meta, stats


def year_of_runs(host_index: int, hosts: int, hours: int, end: datetime) -> list[tuple[datetime, bool]]:
    """(start, ok) of each hourly run of a host, oldest first; hosts spread over the hour."""
    offset = timedelta(seconds=host_index * 3600 // hosts)
    return [(end - (hours - k) * HOUR + offset, (k + host_index) % FAIL_EVERY != FAIL_EVERY - 1)
            for k in range(hours)]


def kept_names(runs: list[tuple[datetime, bool]], now: datetime, limit: int | None) -> list[str]:
    """What the default retention leaves of a host's snapshots (newest `limit` of them)."""
    names = [name_of(start) for start, ok in runs if ok]
    kept = [d.snapshot for d in plan(names, now, Retention()) if d.action == "keep"]
    return kept[-limit:] if limit else kept


def write_snapshots(host_dir: Path, names: list[str], meta: dict, tree: Path | None = None) -> None:
    """Snapshot directories (empty, or hardlinks of tree's files), a meta/ record
    each, and `latest` pointing at the newest."""
    hourly, meta_dir = host_dir / "hourly", host_dir / "meta"
    for directory in (hourly, meta_dir):
        directory.mkdir(parents=True, exist_ok=True)
    files = sorted(tree.iterdir()) if tree else []
    for name in names:
        snapshot = hourly / name
        snapshot.mkdir()
        if files:
            (snapshot / "etc").mkdir()
            for path in files:
                os.link(path, snapshot / "etc" / path.name)
        record = {**meta, "name": name, "time": datetime.strptime(name, TIME_FORMAT)
                  .replace(tzinfo=timezone.utc).isoformat()}
        (meta_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
    latest = host_dir / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(f"hourly/{names[-1]}")


def build_year(state: State, hours: int, snapshot_limit: int | None, run: dict, meta: dict,
               stats: str) -> dict:
    """The filesystem and the database of a server that has run `hours` hourly
    runs of every host. Returns counts for the report."""
    now = datetime.now(timezone.utc)
    end = now.replace(minute=0, second=0, microsecond=0)
    db = state.database()
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    jobs, job_hosts, snapshot_rows = [], [], []
    host_state, run_counts = [], []
    directories = 0
    ok_stats = json.dumps(run["stats"]) if run["stats"] else None
    per_host = []
    for index, host in enumerate(state.hosts):
        runs = year_of_runs(index, len(state.hosts), hours, end)
        per_host.append(runs)
        names = kept_names(runs, now, snapshot_limit)
        write_snapshots(state.backup / host, names, meta)
        directories += len(names)
        per_host[-1] = (runs, set(names))
    # Job ids in time order: hour by hour, hosts in the order they run within it.
    job_id = 0
    by_host_job: dict[str, dict[str, int]] = {host: {} for host in state.hosts}
    for k in range(hours):
        for index, host in enumerate(state.hosts):
            start, ok = per_host[index][0][k]
            job_id += 1
            finished = start + timedelta(seconds=2 + index % 7)
            status = "ok" if ok else "failed"
            jobs.append((job_id, "snapshot", status, "schedule", 0, iso_ms(start), iso_ms(finished)))
            name = name_of(start) if ok else None
            job_hosts.append((job_id, host, status, None if ok else "snapshot", iso_ms(start), iso_ms(finished),
                              name, ok_stats if ok else None, None if ok else ERROR,
                              run.get("detail") if ok else ERROR))
            if ok:
                by_host_job[host][name] = job_id
        if len(jobs) >= 100_000:
            _insert_jobs(db, jobs, job_hosts)
            jobs, job_hosts = [], []
    _insert_jobs(db, jobs, job_hosts)
    for index, host in enumerate(state.hosts):
        runs, kept = per_host[index]
        for name in sorted(kept):
            snapshot_rows.append((host, name, _iso_of(name), stats,
                                  by_host_job[host].get(name)))
        failures = sum(1 for _, ok in runs if not ok)
        streak = 0
        for _, ok in reversed(runs):
            if ok:
                break
            streak += 1
        last_start, last_ok = runs[-1]
        last_job = (hours - 1) * len(state.hosts) + index + 1
        host_state.append((host, iso_ms(runs[0][0] - HOUR), last_job, "ok" if last_ok else "failed",
                           None if last_ok else ERROR,
                           iso_ms(last_start + timedelta(seconds=2 + index % 7)), iso_ms(last_start), streak))
        run_counts += [(host, "snapshot", "ok", hours - failures)] + \
                      ([(host, "snapshot", "failed", failures)] if failures else [])
    db.executemany("INSERT INTO snapshots (host, name, time, stats, job_id) VALUES (?, ?, ?, ?, ?)",
                   snapshot_rows)
    db.execute("DELETE FROM host_state")
    db.executemany("INSERT INTO host_state (host, added, last_job_id, last_status, last_error, last_finished, "
                   "last_attempt, consecutive_failures) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", host_state)
    db.executemany("INSERT INTO run_counts (host, kind, status, count) VALUES (?, ?, ?, ?)", run_counts)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("ANALYZE")
    job_rows = db.execute("SELECT COUNT(*) FROM job_hosts").fetchone()[0]
    db.close()
    return {"directories": directories, "job_rows": job_rows,
            "db_mb": (state.state_dir / DATABASE_NAME).stat().st_size / 2**20}


def _insert_jobs(db: sqlite3.Connection, jobs: list, job_hosts: list) -> None:
    db.executemany("INSERT INTO jobs (job_id, kind, status, trigger, dry_run, started, finished) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", jobs)
    db.executemany("INSERT INTO job_hosts (job_id, host, status, stage, started, finished, snapshot, stats, "
                   "error, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", job_hosts)


# ---- the measurements --------------------------------------------------------------------------

class Report:
    """The table: one row per measurement, with the load when it was taken."""

    def __init__(self):
        self.rows: list[list[str]] = []

    def add(self, what: str, median: str, p99: str, target: str, ok: bool | None, note: str = "") -> None:
        verdict = "-" if ok is None else ("met" if ok else "**missed**")
        self.rows.append([what, median, p99, target, verdict,
                          f"{note}{'; ' if note else ''}load {os.getloadavg()[0]:.1f}"])

    def text(self) -> str:
        head = ["measurement", "median", "p99", "target", "", "notes"]
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_indexes(state: State, client: Raw, report: Report) -> None:
    """Wait until every host's version index answers: on this state, made
    without them, the daemon rebuilds each in the background at start (as
    after an upgrade), and that work is not what the rows below measure."""
    started, cpu = time.monotonic(), cpu_seconds(state.proc.pid)
    waiting = list(state.hosts)
    while waiting and time.monotonic() - started < 1800:
        try:
            client.call("du", hosts=[waiting[0]])
            waiting.pop(0)
        except RuntimeError as e:
            if "-32007" not in str(e):
                raise
            time.sleep(1)
    report.add("every host's version index rebuilt (at the first start on this state)",
               f"{time.monotonic() - started:.0f} s", "-", "-", None if not waiting else False,
               f"daemon CPU {cpu_seconds(state.proc.pid) - cpu:.0f} s, RSS after {rss_mb(state.proc.pid):.0f} MB"
               + (f"; {len(waiting)} hosts still rebuilding" if waiting else ""))


def settle(state: State, client: Raw, seconds: float) -> None:
    """Wait until the daemon's start-up work (a history pass, the freshness
    pass, the first textfile) is over: its CPU time stops growing."""
    deadline = time.monotonic() + 120
    before = cpu_seconds(state.proc.pid)
    while time.monotonic() < deadline:
        time.sleep(seconds)
        after = cpu_seconds(state.proc.pid)
        if after - before < 0.02 * seconds and not client.call("status")["deletion_queue"]:
            return
        before = after


def measure(state: State, report: Report, what: str, call, calls: int, target: tuple[str, float] | None = None,
            note: str = "", daemon_cpu: bool = True) -> None:
    """calls timed calls (after 3 untimed), with the daemon's CPU time per call
    (which the machine's load hardly changes) in the notes."""
    for index in range(3):
        call(index)
    cpu = cpu_seconds(state.proc.pid)
    values = [timed(lambda: call(index)) for index in range(calls)]
    cpu = (cpu_seconds(state.proc.pid) - cpu) / calls
    median, p99 = statistics.median(values), percentile(values, 99)
    if target:
        stat, limit = target
        text, ok = f"{stat} < {limit * 1000:.0f} ms", (p99 if stat == "p99" else median) < limit
    else:
        text, ok = "-", None
    if daemon_cpu:
        note += f"{'; ' if note else ''}daemon CPU {ms(cpu)}/call"
    report.add(what, ms(median), ms(p99), text, ok, note)


def measure_queries(state: State, client: Raw, calls: int, report: Report) -> None:
    hosts = state.hosts
    measure(state, report, "`status` (raw socket)", lambda i: client.call("status"), calls, ("p99", 0.020))
    measure(state, report, "`metrics` (raw socket)", lambda i: client.call("metrics"), calls, ("p99", 0.050))
    measure(state, report, "`snapshots.list` HOST, limit 50 (raw socket)",
            lambda i: client.call("snapshots.list", host=hosts[i % len(hosts)], limit=50), calls, ("p99", 0.030),
            "each call another host")
    measure(state, report, "`jobs.list` limit 50 (raw socket)", lambda i: client.call("jobs.list", limit=50),
            calls, ("p99", 0.030), "one host per job")
    measure(state, report, "`jobs.list` HOST, limit 50 (raw socket)",
            lambda i: client.call("jobs.list", host=hosts[i % len(hosts)], limit=50), calls, None,
            "each call another host")
    measure(state, report, "`schedule.list` (raw socket)", lambda i: client.call("schedule.list"), calls)


def measure_bkctl(state: State, calls: int, report: Report) -> None:
    """Wall time of whole processes. Bytecode is cached (in the work
    directory), as it is for an installed bkctl."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(state.root / "pycache")
    bkctl = [str(BIN / "bkctl"), "--socket", str(state.socket)]

    def run(argv: list[str]) -> None:
        result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if result.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {result.stderr.decode()[-500:]}")

    measure(state, report, "`python -c pass` (for comparison)", lambda i: run([sys.executable, "-c", "pass"]),
            calls, None, "the venv's interpreter", daemon_cpu=False)
    measure(state, report, "`bkctl status` wall time", lambda i: run([*bkctl, "status"]), calls, ("p50", 0.100),
            "process start included")
    measure(state, report, "`bkctl snapshots HOST` wall time",
            lambda i: run([*bkctl, "snapshots", state.hosts[i % len(state.hosts)]]), calls, None,
            "process start included")
    measure(state, report, "`bkctl jobs --limit 50` wall time", lambda i: run([*bkctl, "jobs", "--limit", "50"]),
            calls, None, "process start included")


def measure_idle(state: State, seconds: float, report: Report, when: str) -> None:
    rss = rss_mb(state.proc.pid)
    before = cpu_seconds(state.proc.pid)
    time.sleep(seconds)
    cpu = (cpu_seconds(state.proc.pid) - before) / seconds
    report.add(f"daemon RSS, idle ({when})", f"{rss:.1f} MB", "-", "< 80 MB", rss < 80,
               f"CPU {cpu * 100:.2f} % over {seconds:.0f} s")


def one_round(state: State, client: Raw) -> float:
    start = time.perf_counter()
    job_id = client.call("job.start")["job_id"]
    while True:
        job = client.call("job.get", job_id=job_id)["job"]
        if job["finished"]:
            elapsed = time.perf_counter() - start
            break
        time.sleep(0.05)
    failed = [run for run in job["hosts"] if run["status"] != "ok"]
    if failed:
        sys.exit(f"a round failed: {failed[:3]}")
    return elapsed


def measure_rounds(state: State, client: Raw, pairs: int, report: Report) -> None:
    """Rounds with the textfile off and on, interleaved. The daemon's own CPU
    time per round (the textfile's last write, up to TEXTFILE_EVERY after the
    round, included) is the ratio the machine's load hardly moves."""
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for index in range(pairs * 2):
        textfile = index % 2 == 1  # off, on, off, on, ...
        state.write_config(textfile=textfile)
        client.call("config.reload")
        settle(state, client, 0.5)
        before = cpu_seconds(state.proc.pid)
        times[textfile].append(one_round(state, client))
        time.sleep(TEXTFILE_EVERY + 1)
        cpu[textfile].append(cpu_seconds(state.proc.pid) - before)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    cpu_off, cpu_on = statistics.median(cpu[False]), statistics.median(cpu[True])
    for textfile in (False, True):
        values = times[textfile]
        report.add(f"round of {len(state.hosts)} hosts, textfile {'on' if textfile else 'off'}",
                   f"{statistics.median(values):.2f} s", "-", "on ≤ 1.1 × off" if textfile else "-",
                   (on <= 1.1 * off) if textfile else None,
                   f"{len(values)} rounds, min {min(values):.2f} s, max {max(values):.2f} s; "
                   f"daemon CPU {statistics.median(cpu[textfile]):.2f} s/round"
                   + (f"; on/off {on / off:.2f} (CPU {cpu_on / cpu_off:.2f})" if textfile else ""))
    deadline = time.monotonic() + 15  # it is written at most every few seconds
    while not state.textfile.exists():
        if time.monotonic() > deadline:
            sys.exit("the metrics textfile was never written")
        time.sleep(0.1)


def measure_prune(state: State, client: Raw, trials: int, snapshots: int, report: Report) -> None:
    """A host whose hourly/ holds `snapshots` consecutive hourly snapshots
    (a few hardlinked files each): time `prune` and then until its trash is
    empty. The set-up (and a sync) is outside the timed region."""
    tree = state.root / "prune-tree"
    tree.mkdir(exist_ok=True)
    for index in range(5):
        (tree / f"file{index}.conf").write_text(f"setting {index}\n")
    now = datetime.now(timezone.utc)
    meta = json.loads(next((state.backup / state.hosts[0] / "meta").glob("*.json")).read_text())
    totals, calls, deleted = [], [], []
    for trial in range(trials):
        host = state.hosts[-1 - trial]
        host_dir = state.backup / host
        for sub in ("hourly", "meta"):
            shutil.rmtree(host_dir / sub)
        end = now.replace(minute=0, second=0, microsecond=0)
        names = [name_of(end - (snapshots - k) * HOUR) for k in range(snapshots)]
        write_snapshots(host_dir, names, meta, tree)
        db = state.database()
        stats = db.execute("SELECT stats FROM snapshots LIMIT 1").fetchone()["stats"]
        db.execute("BEGIN")
        db.execute("DELETE FROM snapshots WHERE host=?", (host,))
        db.executemany("INSERT INTO snapshots (host, name, time, stats, job_id) VALUES (?, ?, ?, ?, NULL)",
                       [(host, n, _iso_of(n), stats) for n in names])
        db.execute("COMMIT")
        db.close()
        subprocess.run(["sync"], check=True)
        trash = host_dir / ".trash"
        start = time.perf_counter()
        answer = client.call("prune", hosts=[host])
        calls.append(time.perf_counter() - start)
        while trash.exists() and any(os.scandir(trash)):
            time.sleep(0.005)
        totals.append(time.perf_counter() - start)
        deleted.append(sum(d["action"] == "delete" for d in answer["plan"][host]))
    report.add(f"prune of a host with {snapshots:,} snapshots, until the trash is empty",
               f"{statistics.median(totals):.2f} s", "-", "< 2 s", max(totals) < 2.0,
               f"{trials} trials, min {min(totals):.2f} s, max {max(totals):.2f} s, {deleted[0]:,} deleted each; "
               f"the `prune` call alone {ms(statistics.median(calls))}")


# ---- clients that try to starve the daemon (issue 18, item 2) --------------------------------------

class Attack:
    """Connections that send one request line count times (0: until stopped),
    reading the answers or not, and connect again when the daemon closes them."""

    def __init__(self, path: Path, line: bytes, connections: int, count: int, read: bool):
        self.path, self.line, self.count, self.read = path, line, count, read
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.threads = [threading.Thread(target=self._connection, daemon=True) for _ in range(connections)]
        for thread in self.threads:
            thread.start()

    def _connection(self) -> None:
        while not self.stopped.is_set():
            sock = socket.socket(socket.AF_UNIX)
            with self.lock:
                self.sockets.add(sock)
            try:
                sock.connect(str(self.path))
                if self.read:
                    threading.Thread(target=lambda: all(iter(lambda: sock.recv(1 << 16), b"")), daemon=True).start()
                sent = 0
                while not self.stopped.is_set() and (not self.count or sent < self.count):
                    sock.sendall(self.line)  # blocks while the daemon does not read: its backpressure
                    sent += 1
                self.stopped.wait()
            except OSError:
                self.stopped.wait(0.05)  # closed by the daemon (or by stop): again
            finally:
                with self.lock:
                    self.sockets.discard(sock)
                sock.close()

    def stop(self) -> None:
        self.stopped.set()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked sendall
        for thread in self.threads:
            thread.join(30)


ATTACKS = {  # name: (method, params, connections, requests per connection (0: without end), reads answers)
    "none": None,
    "4 connections pipelining `daemon.info`, unread": ("daemon.info", {}, 4, 0, False),
    "200 pipelined `jobs.list` limit 10000, unread": ("jobs.list", {"limit": 10000}, 1, 200, False),
    "4 connections pipelining `jobs.list` limit 1000, read": ("jobs.list", {"limit": 1000}, 4, 0, True),
}


def measure_attacks(state: State, client: Raw, seconds: float, report: Report) -> None:
    """Under each attack for `seconds`: root's `status` over a new connection
    every 0.1 s (p50, p99), and how late the scheduled snapshots of the
    first host (every 3 s) start after their slots, with the daemon's RSS."""
    every = 3.0
    host = state.hosts[0]
    state.write_config(scheduled_every=f"{every:g}s")
    client.call("config.reload")
    for name, attack in ATTACKS.items():
        time.sleep(1.0)  # the last attack's connections are gone
        began = time.time()
        running = None
        if attack:
            method, params, connections, count, read = attack
            line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode() + b"\n"
            running = Attack(state.socket, line, connections, count, read)
        latencies, rss = [], []
        while time.time() - began < seconds:
            probe = Raw(state.socket)
            latencies.append(timed(lambda: probe.call("status")))
            probe.close()
            rss.append(rss_mb(state.proc.pid))
            time.sleep(0.1)
        ended = time.time()
        if running:
            running.stop()
        jobs = client.call("jobs.list", host=host, limit=1000)["jobs"]
        starts = sorted(datetime.fromisoformat(job["started"]).timestamp() for job in jobs
                        if job["trigger"] == "schedule" and job["started"] >= iso_ms(
                            datetime.fromtimestamp(began - every, timezone.utc)))
        delays = [b - (a + every) for a, b in zip(starts, starts[1:] + [ended])]
        worst = max(delays, default=float("nan"))
        report.add(f"`status` during attack: {name}", ms(statistics.median(latencies)),
                   ms(percentile(latencies, 99)), "p99 < 50 ms", percentile(latencies, 99) < 0.050,
                   f"{len(latencies)} calls over {seconds:.0f} s; RSS at most {max(rss):.0f} MB")
        report.add(f"scheduled slot delay during attack: {name}", "-", f"{worst:.2f} s", "max < 1 s", worst < 1.0,
                   f"{len(starts)} starts of {host}, every {every:g} s")
    state.write_config()
    client.call("config.reload")


# ---- main ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=None, help="hosts (default 100; 10 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a small state (10 hosts × 200 snapshots, 10,000 job rows) and few calls: "
                             "checks that the script works, measures little")
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per method (default 100; 20 with --quick)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="where to build the state (a new directory inside it; default /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the state directory at the end")
    args = parser.parse_args()
    quick = args.quick
    hosts = args.hosts or (10 if quick else 100)
    hours = 1000 if quick else 8760  # hourly runs per host: 10,000 job rows / a year
    snapshot_limit = 200 if quick else None
    calls = args.calls or (20 if quick else 100)
    pairs = 1 if quick else 5
    prune_snapshots, prune_trials = (1000, 1) if quick else (2000, 3)

    root = Path(tempfile.mkdtemp(prefix="bkd-bench-", dir=args.workdir))
    socket_dir = Path(tempfile.mkdtemp(prefix="bkd-b-", dir="/tmp"))  # AF_UNIX paths are short
    state = State(root, hosts, socket_dir)
    report = Report()
    print(f"# bkd control plane benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"Python {platform.python_version()}; state under {root}")
    print(f"load before: {load()}", flush=True)
    try:
        make_sources(state)
        state.textfile.parent.mkdir()
        state.write_config()
        started = time.monotonic()
        run, meta, stats = template_run(state)
        built = build_year(state, hours, snapshot_limit, run, meta, stats)
        print(f"state: {hosts} hosts, {built['directories']:,} snapshot directories, "
              f"{built['job_rows']:,} job rows ({built['db_mb']:.0f} MB database); "
              f"built in {time.monotonic() - started:.0f} s", flush=True)

        started = time.monotonic()
        state.start()
        print(f"daemon listening after {time.monotonic() - started:.1f} s", flush=True)
        client = Raw(state.socket)
        wait_for_indexes(state, client, report)
        settle(state, client, 1.0)
        measure_idle(state, 2 if quick else 10, report, "after start")
        measure_queries(state, client, calls, report)
        measure_bkctl(state, calls, report)
        measure_idle(state, 2 if quick else 65, report, "after the calls above")  # a freshness pass in it
        print(f"load after the calls: {load()}", flush=True)
        measure_rounds(state, client, pairs, report)
        wide = pairs * 2
        measure(state, report, "`jobs.list` limit 50 after the rounds (raw socket)",
                lambda i: client.call("jobs.list", limit=50), calls, ("p99", 0.030),
                f"{wide} of the 50 jobs ran all {hosts} hosts: {wide * hosts + 50 - wide:,} host runs")
        settle(state, client, 0.5)
        measure_prune(state, client, prune_trials, prune_snapshots, report)
        measure_attacks(state, client, 4 if quick else 30, report)
        client.close()
    finally:
        state.stop()
        print(f"load after: {load()}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)
    print()
    print(report.text())


if __name__ == "__main__":
    main()
