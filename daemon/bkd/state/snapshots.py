"""Per-snapshot statistics: a cache of each host's meta/ records (the
filesystem is the truth about which snapshots exist)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store


class SnapshotStore:
    def __init__(self, store: Store):
        self.store = store

    async def record(self, host: str, rows: list[tuple[str, str, dict, int | None]]) -> None:
        """(name, time, stats, job id) of each snapshot, in one transaction."""
        async with self.store.transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO snapshots (host, name, time, stats, job_id) VALUES (?, ?, ?, ?, ?)",
                [(host, name, time, json.dumps(stats), job_id) for name, time, stats, job_id in rows])

    async def forget(self, host: str, names: list[str]) -> None:
        async with self.store.transaction() as db:
            await db.executemany("DELETE FROM snapshots WHERE host=? AND name=?",
                                 [(host, name) for name in names])

    async def stats(self, host: str) -> dict[str, dict]:
        rows = await self.store.fetch("SELECT name, stats FROM snapshots WHERE host=?", (host,))
        return {row["name"]: json.loads(row["stats"]) for row in rows}

    async def stats_of(self, host: str, name: str) -> dict | None:
        rows = await self.store.fetch("SELECT stats FROM snapshots WHERE host=? AND name=?", (host, name))
        return json.loads(rows[0]["stats"]) if rows else None

    async def stats_between(self, host: str, first: str, last: str) -> dict[str, dict]:
        rows = await self.store.fetch(
            "SELECT name, stats FROM snapshots WHERE host=? AND name BETWEEN ? AND ?", (host, first, last))
        return {row["name"]: json.loads(row["stats"]) for row in rows}

    async def stats_of_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Stats of (host, name) pairs, in one query: a lookup in the primary key
        per pair (`(host, name) IN (VALUES …)` would scan the whole table)."""
        if not pairs:
            return {}
        values = ",".join("(?, ?)" for _ in pairs)
        rows = await self.store.fetch(
            f"WITH wanted (host, name) AS (VALUES {values}) SELECT s.host, s.name, s.stats "
            "FROM wanted JOIN snapshots AS s ON s.host = wanted.host AND s.name = wanted.name",
            [part for pair in pairs for part in pair])
        return {(row["host"], row["name"]): json.loads(row["stats"]) for row in rows}

    async def trend(self, hosts: list[str], first: str) -> dict[str, list[dict]]:
        """Each host's recorded snapshots named `first` or later, oldest first,
        with the statistics a trend needs: a range of the primary key per host,
        and only four fields taken out of each record (no JSON parsing here)."""
        if not hosts:
            return {}
        marks = ",".join("?" * len(hosts))
        rows = await self.store.fetch(
            "SELECT host, name, json_extract(stats, '$.bytes') AS bytes, "
            "json_extract(stats, '$.changed_files') AS changed_files, "
            "json_extract(stats, '$.duration_s') AS duration_s, json_extract(stats, '$.unique_bytes') AS space "
            f"FROM snapshots WHERE host IN ({marks}) AND name >= ? ORDER BY host, name", (*hosts, first))
        found: dict[str, list[dict]] = {host: [] for host in hosts}
        for row in rows:
            found[row["host"]].append({k: row[k] for k in ("name", "bytes", "changed_files", "duration_s", "space")})
        return found
