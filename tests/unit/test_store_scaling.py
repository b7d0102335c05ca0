"""The store's answers for the control plane cost the same however long the
job history is, saving a job writes only what moved, and a read never sees
half of a write transaction.

Cost is counted in SQLite virtual-machine steps (a progress handler), not
timed: the same queries on ten times the history must take about the same
number of steps."""

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from bkd.state.store import Store

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
        "jobs.list": lambda: store.jobs.page(None, 50),
        "jobs.list host": lambda: store.jobs.page("web2", 50),
        "jobs.list, a page deep in the history": lambda: store.jobs.page(None, 50, before=hours * len(HOSTS) // 2),
        "jobs.list host, a page deep in the history": lambda: store.jobs.page("web2", 50,
                                                                             before=hours * len(HOSTS) // 2),
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


def many_hosts_job(hosts: int) -> dict:
    started = "2026-01-01T00:00:00.000Z"
    return {"job_id": 7, "kind": "snapshot", "status": "running", "trigger": "manual", "dry_run": False,
            "started": started, "finished": None,
            "hosts": [{"host": f"h{i:03d}", "status": "queued", "stage": None, "started": None, "finished": None,
                       "snapshot": None, "stats": None, "error": None, "detail": None} for i in range(hosts)]}


async def statements(store: Store, work) -> list[str]:
    seen = []
    await store.db.set_trace_callback(seen.append)
    try:
        await work()
    finally:
        await store.db.set_trace_callback(None)
    return [s for s in seen if s.split()[0] in ("SELECT", "INSERT", "UPDATE", "DELETE")]


async def test_saving_a_many_host_job_writes_only_the_hosts_that_moved(tmp_path):
    # Every stage of every host saved the whole job: a round of 100 hosts
    # wrote 100 rows (and read 100) at each of ~400 saves.
    store = await Store.open(tmp_path / "bkd.sqlite")
    try:
        job = many_hosts_job(100)
        assert len(await statements(store, lambda: store.jobs.save(job))) == 1 + 2 * 100
        run = job["hosts"][42]
        run.update(status="running", stage="snapshot", started="2026-01-01T00:00:01.000Z")
        assert len(await statements(store, lambda: store.jobs.save(job))) == 2  # the job and that host
        run["stats"] = {"files": 1}
        await store.jobs.save(job)
        run["stats"]["files"] = 2  # the same dict, changed in place: still seen as a change
        await store.jobs.save(job)
        assert (await store.jobs.get(7))["hosts"][42]["stats"] == {"files": 2}
        for run in job["hosts"]:
            run.update(status="ok", finished="2026-01-01T00:01:00.000Z")
        job.update(status="ok", finished="2026-01-01T00:01:00.000Z")
        await store.jobs.save(job)
        await store.jobs.save(job)  # idempotent: counted once
        counts = await store.jobs.run_counts()
        assert len(counts) == 100 and {c["count"] for c in counts} == {1}
        assert {h["status"] for h in (await store.jobs.get(7))["hosts"]} == {"ok"}
    finally:
        await store.close()


async def test_a_save_that_fails_is_written_whole_by_the_next_one(tmp_path):
    store = await Store.open(tmp_path / "bkd.sqlite")
    try:
        job = many_hosts_job(3)
        await store.jobs.save(job)
        job["hosts"][0].update(status="running", stage="snapshot")
        job["hosts"][1].update(status="ok", finished="2026-01-01T00:01:00.000Z")  # and its count

        def no_counting(action, table, *rest):
            return sqlite3.SQLITE_DENY if table == "run_counts" else sqlite3.SQLITE_OK

        await store.db.set_authorizer(no_counting)
        with pytest.raises(sqlite3.DatabaseError):
            await store.jobs.save(job)  # rolled back after h000's row was written in it
        await store.db.set_authorizer(None)
        await store.jobs.save(job)
        hosts = (await store.jobs.get(7))["hosts"]
        assert [(h["status"], h["stage"]) for h in hosts] == [("running", "snapshot"), ("ok", None), ("queued", None)]
        assert [(c["host"], c["count"]) for c in await store.jobs.run_counts()] == [("h001", 1)]
    finally:
        await store.close()


async def test_a_page_of_jobs_is_summaries_newest_first_before_a_job_and_of_one_host(tmp_path):
    store = await Store.open(tmp_path / "bkd.sqlite")
    try:
        await fill(store, 4)  # jobs 1..12, one host each: web1, web2, db1, web1, ...
        page = await store.jobs.page(None, 5)
        assert [job["job_id"] for job in page] == [12, 11, 10, 9, 8]
        assert page[0]["hosts"] == [{"host": "db1", "status": "ok", "snapshot": page[0]["hosts"][0]["snapshot"],
                                     "error": None}]
        assert set(page[0]) == {"job_id", "kind", "status", "trigger", "dry_run", "started", "finished", "hosts"}
        assert [job["job_id"] for job in await store.jobs.page(None, 5, before=8)] == [7, 6, 5, 4, 3]
        assert [job["job_id"] for job in await store.jobs.page(None, 5, before=3)] == [2, 1]
        web2 = await store.jobs.page("web2", 2, before=11)
        assert [(job["job_id"], [run["host"] for run in job["hosts"]]) for job in web2] == [(8, ["web2"]),
                                                                                          (5, ["web2"])]
        assert web2[0]["status"] == "ok" and web2[0]["dry_run"] is False
        wide = {**many_hosts_job(30), "job_id": 13}
        await store.jobs.save(wide)
        (newest,) = await store.jobs.page(None, 1)
        assert [run["host"] for run in newest["hosts"]] == [f"h{i:03d}" for i in range(30)]
        assert [job["job_id"] for job in await store.jobs.page(None, 3, before=14)] == [13, 12, 11]
        assert len((await store.jobs.page(None, 3))[0]["hosts"]) == 30
    finally:
        await store.close()
