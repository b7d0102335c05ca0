"""How much a report costs: a real daemon over a fleet with a month of hourly
snapshots (directories under hourly/ and their statistics in the state
database, as bkd leaves them), timed over its socket: `report` (30-day
trends), `report` without trends (what `bkctl check` asks), and `status`.

    .venv/bin/python bench/report_bench.py --hosts 100 --days 30 --per-day 24
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).parent.parent / "client"))
from bkctl.client import Client  # noqa: E402

BIN = Path(sys.executable).parent


async def plant(state: Path, backup: Path, hosts: list[str], days: int, per_day: int) -> int:
    from bkd.state.store import DATABASE_NAME, Store
    store = await Store.open(state / DATABASE_NAME)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    count = 0
    for host in hosts:
        rows = []
        for n in range(days * per_day):
            when = now - timedelta(hours=n * 24 / per_day)
            name = when.strftime("%Y-%m-%d_%H%M%S")
            (backup / host / "hourly" / name).mkdir(parents=True)
            stats = {"files": 50_000 + n, "bytes": 10**10 + n * 10**6, "changed_files": 100 + n % 50,
                     "deleted_files": 3, "transferred_bytes": 10**7, "duration_s": 30.0 + n % 17}
            rows.append((name, when.isoformat(), stats, None))
        await store.snapshots.record(host, rows)
        count += len(rows)
    await store.close()
    return count


def timed(client: Client, method: str, params: dict | None, repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = client.call(method, params)
        times.append(time.perf_counter() - started)
        size = len(json.dumps(result))
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bkd-report-bench-"))
    try:
        hosts = [f"host{i:03d}" for i in range(args.hosts)]
        backup, state = work / "backup", work / "state"
        for path in (backup, state):
            path.mkdir(mode=0o700)
        started = time.perf_counter()
        snapshots = asyncio.run(plant(state, backup, hosts, args.days, args.per_day))
        print(f"planted {snapshots:,} snapshots of {len(hosts)} hosts in {time.perf_counter() - started:.1f}s")
        config = {"backup_root": str(backup), "state_dir": str(state), "socket": str(work / "bkd.sock"),
                  "schedule": {"enabled": False}, "host": [{"name": h, "source": f"/nonexistent/{h}"} for h in hosts]}
        (work / "bkd.toml").write_text(tomli_w.dumps(config))
        with open(work / "bkd.log", "wb") as log:
            daemon = subprocess.Popen([str(BIN / "bkd"), "--config", str(work / "bkd.toml"), "serve"],
                                      stdout=log, stderr=log)
        try:
            for _ in range(300):
                if (work / "bkd.sock").exists():
                    break
                time.sleep(0.1)
            with Client(str(work / "bkd.sock"), timeout=120) as client:
                timed(client, "report", None, 1)  # warm: the first listing of every hourly/
                print(f"\n| call | median ms | answer KiB |\n|---|---:|---:|")
                for label, method, params in (("report (30-day trends)", "report", None),
                                              ("report, no trends (bkctl check)", "report", {"trends": False}),
                                              ("status", "status", None)):
                    seconds, size = timed(client, method, params, args.repeat)
                    print(f"| {label} | {seconds * 1000:.0f} | {size / 1024:.0f} |")
        finally:
            daemon.terminate()
            daemon.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o077)
    main()
