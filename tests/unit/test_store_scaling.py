"""The store's answers for the control plane cost the same however long the
job history is, and a read never sees half of a write transaction.

Cost is counted in SQLite virtual-machine steps (a progress handler), not
timed: the same queries on ten times the history must take about the same
number of steps."""

import asyncio
import json
from datetime import datetime, timedelta, timezone

from bkd.store import Store

HOSTS = ("web1", "web2", "db1")
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
STATS = json.dumps({"files": 5, "bytes": 225, "duration_s": 0.1})


def iso(time: datetime) -> str:
    return time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def fill(store: Store, hours: int) -> None:
    """`hours` hourly finished snapshot jobs per host, one host each, and a
    snapshot row for each."""
    jobs, runs, snapshots = [], [], []
    for hour in range(hours):
        for index, host in enumerate(HOSTS):
            job_id = hour * len(HOSTS) + index + 1
            start = START + timedelta(hours=hour, minutes=index)
            name = start.strftime("%Y-%m-%d_%H%M%S")
            jobs.append((job_id, iso(start), iso(start + timedelta(seconds=5))))
            runs.append((job_id, host, iso(start), iso(start + timedelta(seconds=5)), name, STATS))
            snapshots.append((host, name, iso(start), STATS, job_id))
    async with store.transaction() as db:
        await db.executemany("INSERT INTO jobs (job_id, kind, status, trigger, dry_run, started, finished) "
                             "VALUES (?, 'snapshot', 'ok', 'schedule', 0, ?, ?)", jobs)
        await db.executemany("INSERT INTO job_hosts (job_id, host, status, started, finished, snapshot, stats) "
                             "VALUES (?, ?, 'ok', ?, ?, ?, ?)", runs)
        await db.executemany("INSERT INTO snapshots (host, name, time, stats, job_id) VALUES (?, ?, ?, ?, ?)",
                             snapshots)


async def steps(store: Store, work) -> int:
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0  # go on

    await store.db.set_progress_handler(tick, 100)
    try:
        await work()
    finally:
        await store.db.set_progress_handler(None, 100)
    return count


async def costs(store: Store, hours: int) -> dict[str, int]:
    newest = {host: (START + timedelta(hours=hours - 1, minutes=i)).strftime("%Y-%m-%d_%H%M%S")
              for i, host in enumerate(HOSTS)}
    work = {
        "jobs.list": lambda: store.jobs.list(None, 50),
        "jobs.list host": lambda: store.jobs.list("web2", 50),
        "history pass, nothing old enough": lambda: store.jobs.prune_before("2000-01-01T00:00:00.000Z"),
        "unfinished runs at start": store.jobs.mark_interrupted,
        "metrics: newest snapshots' stats": lambda: store.snapshots.stats_of_many(list(newest.items())),
        "metrics: run counts": store.jobs.run_counts,
        "status at start: host state": store.jobs.host_states,
    }
    return {name: await steps(store, call) for name, call in work.items()}


async def test_control_plane_queries_cost_the_same_with_ten_times_the_history(tmp_path):
    small = await Store.open(tmp_path / "small.sqlite")
    large = await Store.open(tmp_path / "large.sqlite")
    try:
        await fill(small, 300)
        await fill(large, 3000)
        few, many = await costs(small, 300), await costs(large, 3000)
    finally:
        await small.close()
        await large.close()
    grew = {name: (few[name], many[name]) for name in few if many[name] > 2 * few[name] + 10}
    assert not grew, f"steps with 900 vs 9,000 job rows: {grew}"


async def test_a_read_never_sees_half_of_a_write_transaction(tmp_path):
    # On the one shared connection, job.get slipped in between the statements
    # of a save and answered "finished" while one of its hosts still ran.
    store = await Store.open(tmp_path / "bkd.sqlite")
    try:
        started = "2026-01-01T00:00:00.000Z"
        running = {"job_id": 1, "kind": "snapshot", "status": "running", "trigger": "manual", "dry_run": False,
                   "started": started, "finished": None,
                   "hosts": [{"host": h, "status": "running", "stage": "snapshot", "started": started,
                              "finished": None, "snapshot": None, "stats": None, "error": None, "detail": None}
                             for h in ("a", "b")]}
        await store.jobs.save(running)
        halfway, go_on = asyncio.Event(), asyncio.Event()

        async def finish() -> None:
            async with store.transaction() as db:
                await db.execute("UPDATE jobs SET status='ok', finished=? WHERE job_id=1", (started,))
                halfway.set()
                await go_on.wait()
                await db.execute("UPDATE job_hosts SET status='ok', finished=? WHERE job_id=1", (started,))

        writer = asyncio.create_task(finish())
        await halfway.wait()
        reader = asyncio.create_task(store.jobs.get(1))
        await asyncio.sleep(0.2)  # time for the read to run, were it allowed to
        go_on.set()
        await writer
        job = await reader
        assert (job["finished"], [h["status"] for h in job["hosts"]]) in (
            (None, ["running", "running"]), (started, ["ok", "ok"]))
    finally:
        await store.close()
