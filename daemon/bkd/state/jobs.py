"""Job history, per-host state and the run counters metrics need."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bkctl.protocol import BACKUP_KINDS, FINAL_STATUSES

from ..infra import clock

if TYPE_CHECKING:
    from .store import Store

_FINAL = tuple(sorted(FINAL_STATUSES))


_ROW = ("status", "stage", "started", "finished", "snapshot", "stats", "error", "detail", "listing")
SUMMARY = ("host", "status", "snapshot", "error")  # a run as jobs.list shows it; the rest is in job.get
MAX_JOB_ID = 2**63 - 1


def _job(row) -> dict:
    job = dict(row)
    job["dry_run"] = bool(job["dry_run"])
    for column in ("run_status", "snapshot", "error"):  # the joined run's, when there is one
        job.pop(column, None)
    return job


class JobStore:
    def __init__(self, store: Store):
        self.store = store
        # (job_id, host) → that job_hosts row as last committed, while the job
        # runs: a save writes only the rows that moved, not all of a 100-host
        # job's rows at every stage of every host (quadratic in a round).
        self._committed: dict[tuple[int, str], tuple] = {}

    async def next_job_id(self) -> int:
        rows = await self.store.fetch(
            "SELECT MAX(COALESCE((SELECT MAX(job_id) FROM jobs), 0), "
            "COALESCE((SELECT seq FROM sqlite_sequence WHERE name='jobs'), 0)) + 1 AS next")
        return rows[0]["next"]

    async def save(self, job: dict, streaks: Mapping[str, int] | None = None) -> None:
        """Write a job's whole record (idempotent: saving it again changes
        nothing). A host run that becomes final here is counted exactly once
        and moves that host's state; `streaks` is each host's failure streak
        as memory counts it (state.hosts), stored as it is (a host not in it
        keeps the stored one)."""
        job_id, written = job["job_id"], {}
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO jobs (job_id, kind, status, trigger, dry_run, started, finished) "
                "VALUES (:job_id, :kind, :status, :trigger, :dry_run, :started, :finished) "
                "ON CONFLICT(job_id) DO UPDATE SET status=excluded.status, finished=excluded.finished",
                {**job, "dry_run": int(job["dry_run"])})
            for run in job["hosts"]:
                key, row = (job_id, run["host"]), tuple(run.get(column) for column in _ROW)
                previous = self._committed.get(key)
                if previous == row:
                    continue
                if previous is None:
                    rows = await db.execute_fetchall(
                        "SELECT status FROM job_hosts WHERE job_id=? AND host=?", key)
                    was_final = bool(rows) and rows[0]["status"] in FINAL_STATUSES
                else:
                    was_final = previous[0] in FINAL_STATUSES
                await db.execute(
                    "INSERT INTO job_hosts (job_id, host, status, stage, started, finished, snapshot, stats, "
                    "error, detail, listing) VALUES (:job_id, :host, :status, :stage, :started, :finished, "
                    ":snapshot, :stats, :error, :detail, :listing) ON CONFLICT(job_id, host) DO UPDATE SET "
                    "status=excluded.status, stage=excluded.stage, started=excluded.started, "
                    "finished=excluded.finished, snapshot=excluded.snapshot, stats=excluded.stats, "
                    "error=excluded.error, detail=excluded.detail, listing=excluded.listing",
                    {**run, "job_id": job_id, "stats": json.dumps(run["stats"]) if run["stats"] else None,
                     "listing": json.dumps(run["listing"]) if run.get("listing") is not None else None})
                if run["status"] in FINAL_STATUSES and not was_final and not job["dry_run"]:
                    await self._count(db, job, run, (streaks or {}).get(run["host"]))
                # A copy: the caller's stats dict may change after this.
                written[key] = row[:5] + (dict(row[5]) if row[5] else row[5],) + row[6:]
        # Remembered only once committed; a finished job is forgotten (saving it again reads its rows).
        if all(run["status"] in FINAL_STATUSES for run in job["hosts"]):
            for run in job["hosts"]:
                self._committed.pop((job_id, run["host"]), None)
        else:
            self._committed.update(written)

    async def _count(self, db, job: dict, run: dict, streak: int | None) -> None:
        await db.execute(
            "INSERT INTO run_counts (host, kind, status, count) VALUES (?, ?, ?, 1) "
            "ON CONFLICT(host, kind, status) DO UPDATE SET count = count + 1",
            (run["host"], job["kind"], run["status"]))
        if job["kind"] not in BACKUP_KINDS:
            return
        await db.execute(
            "INSERT INTO host_state (host, added, last_job_id, last_status, last_error, last_finished, "
            "last_attempt, consecutive_failures) VALUES (:host, :now, :job_id, :status, :error, :finished, "
            ":started, COALESCE(:streak, 0)) ON CONFLICT(host) DO UPDATE SET last_job_id=excluded.last_job_id, "
            "last_status=excluded.last_status, last_error=excluded.last_error, "
            "last_finished=excluded.last_finished, last_attempt=COALESCE(excluded.last_attempt, last_attempt), "
            "consecutive_failures = COALESCE(:streak, consecutive_failures)",
            {**run, "job_id": job["job_id"], "streak": streak, "now": clock.iso_ms(clock.now())})

    async def ensure_hosts(self, hosts: list[str]) -> None:
        """Remember when each host was first seen (a host that never succeeded
        is stale counted from then)."""
        now = clock.iso_ms(clock.now())
        async with self.store.transaction() as db:
            await db.executemany("INSERT OR IGNORE INTO host_state (host, added) VALUES (?, ?)",
                                 [(host, now) for host in hosts])

    async def host_states(self) -> dict[str, dict]:
        rows = await self.store.fetch("SELECT * FROM host_state")
        return {row["host"]: dict(row) for row in rows}

    async def run_counts(self) -> list[dict]:
        return [dict(row) for row in await self.store.fetch("SELECT * FROM run_counts")]

    async def results_since(self, since: str) -> dict[str, dict[str, int]]:
        """host → {status: runs} of the backup runs (not dry runs) started since `since`."""
        rows = await self.store.fetch(
            "SELECT h.host, h.status, COUNT(*) AS n FROM jobs AS j JOIN job_hosts AS h USING (job_id) "
            f"WHERE j.started >= ? AND j.dry_run = 0 AND j.kind IN ({','.join('?' * len(BACKUP_KINDS))}) "
            "GROUP BY h.host, h.status", (since, *BACKUP_KINDS))
        found: dict[str, dict[str, int]] = {}
        for row in rows:
            found.setdefault(row["host"], {})[row["status"]] = row["n"]
        return found

    async def mark_interrupted(self) -> int:
        """Runs left unfinished by a previous daemon (stopped or crashed) become interrupted."""
        unfinished = await self.store.fetch(
            "SELECT job_id FROM jobs WHERE status IN ('queued', 'running') "
            "UNION SELECT job_id FROM job_hosts WHERE status IN ('queued', 'running')")
        now = clock.iso_ms(clock.now())
        for row in unfinished:
            job = await self.get(row["job_id"])
            if job is None:
                continue
            for run in job["hosts"]:
                if run["status"] not in FINAL_STATUSES:
                    run.update(status="interrupted", finished=run["finished"] or now,
                               error=run["error"] or "the daemon stopped during this run")
            job.update(status="interrupted", finished=job["finished"] or now)
            await self.save(job)
        return len(unfinished)

    async def prune_before(self, cutoff: str, batch: int = 5000) -> int:
        """Delete finished jobs that ended before cutoff, a batch per
        transaction so that other writers never wait long. The counters
        (run_counts, host_state) are kept."""
        total = 0
        while True:
            async with self.store.transaction() as db:
                rows = await db.execute_fetchall(
                    f"SELECT job_id FROM jobs WHERE finished < ? AND status IN ({','.join('?' * len(_FINAL))}) "
                    "ORDER BY finished LIMIT ?", (cutoff, *_FINAL, batch))  # jobs_by_finished: no table scan
                ids = [row["job_id"] for row in rows]
                if ids:
                    marks = ",".join("?" * len(ids))
                    await db.execute(f"DELETE FROM job_hosts WHERE job_id IN ({marks})", ids)
                    await db.execute(f"DELETE FROM jobs WHERE job_id IN ({marks})", ids)
            total += len(ids)
            if len(ids) < batch:
                return total

    async def get(self, job_id: int) -> dict | None:
        rows = await self.store.fetch("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        return (await self._with_hosts(rows))[0] if rows else None

    async def page(self, host: str | None, limit: int, before: int | None = None) -> list[dict]:
        """The newest `limit` jobs older than job `before`, newest first, each
        with its runs' SUMMARY (only host's run, when given): two queries
        walking indexes backwards, whatever the history holds."""
        below = MAX_JOB_ID if before is None else before
        if host:
            # job_hosts_by_host (host, job_id) backwards, each job by its key: no sort, no scan.
            rows = await self.store.fetch(
                "SELECT jobs.*, job_hosts.status AS run_status, job_hosts.snapshot, job_hosts.error "
                "FROM job_hosts JOIN jobs USING (job_id) WHERE host=? AND job_hosts.job_id < ? "
                "ORDER BY job_hosts.job_id DESC LIMIT ?", (host, below, limit))
            return [{**_job(row), "hosts": [{"host": host, "status": row["run_status"], "snapshot": row["snapshot"],
                                             "error": row["error"]}]} for row in rows]
        rows = await self.store.fetch("SELECT * FROM jobs WHERE job_id < ? ORDER BY job_id DESC LIMIT ?",
                                      (below, limit))
        if not rows:
            return []
        # The page's jobs are the ones with ids in this range: one range of the (job_id, host) key.
        runs = await self.store.fetch(
            f"SELECT job_id, {', '.join(SUMMARY)} FROM job_hosts WHERE job_id BETWEEN ? AND ? ORDER BY job_id, host",
            (rows[-1]["job_id"], rows[0]["job_id"]))
        by_job: dict[int, list[dict]] = {}
        for run in runs:
            by_job.setdefault(run["job_id"], []).append({k: run[k] for k in SUMMARY})
        return [{**_job(row), "hosts": by_job.get(row["job_id"], [])} for row in rows]

    async def _with_hosts(self, job_rows) -> list[dict]:
        if not job_rows:
            return []
        ids = [row["job_id"] for row in job_rows]
        marks = ",".join("?" * len(ids))
        host_rows = await self.store.fetch(
            f"SELECT * FROM job_hosts WHERE job_id IN ({marks}) ORDER BY job_id, host", ids)
        # Every row's stats in one json.loads: a thousand calls (a few jobs of
        # a hundred hosts) cost more than the parsing itself.
        stats = json.loads("[" + ",".join(row["stats"] or "null" for row in host_rows) + "]")
        by_job: dict[int, list[dict]] = {}
        for row, decoded in zip(host_rows, stats):
            record = dict(row)
            record["stats"] = decoded
            listing = record.pop("listing")
            if listing is not None:  # a dry-run restore's, as it was in memory
                record["listing"] = json.loads(listing)
            by_job.setdefault(record.pop("job_id"), []).append(record)
        return [{**_job(row), "hosts": by_job.get(row["job_id"], [])} for row in job_rows]
