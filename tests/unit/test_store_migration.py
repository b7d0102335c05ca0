"""A database of the previous schema migrates: alerts become episodes (rows
naming invalid hosts dropped, integrity messages without file names), and the
per-host state and counters are derived from the job history."""

import sqlite3

from bkd.state.store import Store
from bkd.state.schema import MIGRATIONS
from bkd.alerts.store import AlertStore


def old_database(path):
    db = sqlite3.connect(path)
    for number, migration in enumerate(MIGRATIONS[:3]):
        db.executescript(f"BEGIN; {migration} PRAGMA user_version = {number + 1}; COMMIT;")
    db.executemany("INSERT INTO alerts (host, kind, message, created, acked) VALUES (?, ?, ?, ?, ?)", [
        ("web1", "run_failed", "job 1: boom", "2026-01-01T00:00:00Z", None),
        ("web1", "run_failed", "job 2: boom again", "2026-01-01T01:00:00Z", None),
        ("web1", "integrity", "2026-01-01_000000:secret/payroll.xls is changed", "2026-01-02T00:00:00Z", None),
        ("web1", "stale", "old", "2025-12-01T00:00:00Z", "2025-12-02T00:00:00Z"),
        ("../../../../tmp/evil", "integrity", "/etc/shadow is changed", "2026-01-03T00:00:00Z", None),
        ("x" * 65, "run_failed", "too long", "2026-01-03T00:00:00Z", None),
    ])
    db.executemany("INSERT INTO jobs (job_id, kind, status, trigger, dry_run, started, finished) "
                   "VALUES (?, ?, ?, 'schedule', ?, ?, ?)", [
                       (1, "snapshot", "ok", 0, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"),
                       (2, "snapshot", "failed", 0, "2026-01-01T01:00:00Z", "2026-01-01T01:01:00Z"),
                       (3, "snapshot", "failed", 0, "2026-01-01T02:00:00Z", "2026-01-01T02:01:00Z"),
                       (4, "snapshot", "ok", 1, "2026-01-01T03:00:00Z", "2026-01-01T03:01:00Z"),
                       (5, "archive", "ok", 0, "2026-01-01T04:00:00Z", "2026-01-01T04:01:00Z")])
    db.executemany("INSERT INTO job_hosts (job_id, host, status, started, finished, error) VALUES (?, ?, ?, ?, ?, ?)",
                   [(1, "web1", "ok", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", None),
                    (2, "web1", "failed", "2026-01-01T01:00:00Z", "2026-01-01T01:01:00Z", "boom"),
                    (3, "web1", "failed", "2026-01-01T02:00:00Z", "2026-01-01T02:01:00Z", "boom again"),
                    (4, "web1", "ok", "2026-01-01T03:00:00Z", "2026-01-01T03:01:00Z", None),
                    (5, "web1", "ok", "2026-01-01T04:00:00Z", "2026-01-01T04:01:00Z", None)])
    db.commit()
    db.close()


async def test_the_previous_schema_migrates(tmp_path):
    path = tmp_path / "bkd.sqlite"
    old_database(path)
    store = await Store.open(path)
    try:
        episodes = {(e["kind"], e["state"]): e for e in await AlertStore(store).recent(100)}
        assert set(episodes) == {("run_failed", "open"), ("integrity", "open"), ("stale", "resolved")}
        assert episodes[("run_failed", "open")]["count"] == 2
        # The message quoted the run's error; every role reads alerts, so a later migration drops the quote.
        assert episodes[("run_failed", "open")]["message"] == "run failed (recorded by an earlier bkd)"
        assert episodes[("run_failed", "open")]["first_seen"] == "2026-01-01T00:00:00Z"
        assert "payroll" not in episodes[("integrity", "open")]["message"]
        assert {e["host"] for e in episodes.values()} == {"web1"}
        state = (await store.jobs.host_states())["web1"]
        assert (state["last_job_id"], state["last_status"], state["consecutive_failures"]) == (3, "failed", 2)
        counts = {(c["kind"], c["status"]): c["count"] for c in await store.jobs.run_counts()}
        assert counts == {("snapshot", "ok"): 1, ("snapshot", "failed"): 2, ("archive", "ok"): 1}
        assert await store.jobs.next_job_id() == 6
    finally:
        await store.close()
