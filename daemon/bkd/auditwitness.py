"""The journal as the audit chain's witness, outside the state database.

Every audit entry's id and hash also go to the journal (the `audit.entry`
event: BKD_ID, BKD_HASH, BKD_METHOD, and BKD_ANCHOR naming this backup
root's head record, so that two servers' logs are told apart). `bkctl audit
--verify`, and each start of the daemon, compare the database with what the
journal recorded: an entry the journal saw that the database no longer
holds (a truncated log, whatever the head record says now), or holds with
another hash (an entry edited and every later hash recomputed), is
reported. Only records of bkd's own uid count: journald sets `_UID` itself,
so another local user cannot plant records. A re-anchoring the journal
recorded (`bkd audit reanchor`, after a deliberate rebuild) starts a new
chain: records before it are not compared.

A witness, not a guarantee: root can vacuum the journal too, entries rotate
out, and a journal that holds nothing proves nothing either way (see
docs/design.md, "What the audit chain proves")."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from bkctl.protocol import AlertKind

from . import exec as bkexec

log = structlog.get_logger()

JOURNALCTL = "journalctl"
WITNESS_EVERY = 86400.0  # seconds between two comparisons with the journal while the daemon runs
FIELDS = ("BKD_ID", "BKD_HASH", "BKD_METHOD", "BKD_ANCHOR", "_UID")


@dataclass(frozen=True)
class Record:
    id: int
    hash: str
    method: str


@dataclass(frozen=True)
class Testimony:
    problem: str | None  # the first disagreement, for people
    note: str  # what was compared, or why nothing could be


def parse(lines: list[str], anchor: Path, uid: int) -> list[Record]:
    """`journalctl -o json` lines → this log's records, oldest first. A line
    that is not a record of bkd's uid for this anchor is left out."""
    records = []
    for line in lines:
        try:
            data = json.loads(line)
            if data.get("_UID") != str(uid) or data.get("BKD_ANCHOR") != anchor.as_posix():
                continue
            records.append(Record(int(data["BKD_ID"]), str(data["BKD_HASH"]), str(data.get("BKD_METHOD", ""))))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not one of ours (a field sent twice comes as a list, a binary one as numbers)
    return records


def compare(records: list[Record], held: dict[int, str]) -> str | None:
    """What of the current chain (since the newest re-anchoring the journal
    saw) the database does not hold as the journal recorded it."""
    start = max((i for i, r in enumerate(records) if r.method == "audit.reanchor"), default=0)
    current = records[start:]
    changed = next((r for r in current if r.id in held and held[r.id] != r.hash), None)
    if changed is not None:
        return (f"audit entry {changed.id} is not the one the journal recorded (sha256 {changed.hash[:16]}…): "
                "the log was changed and its hashes recomputed, or replaced")
    missing = sorted({r.id for r in current if r.id not in held})
    if missing:
        newest = max(held, default=0)
        holds = f"its newest is entry {newest}" if newest else "it holds no entries"
        which = f"entry {missing[0]}" if len(missing) == 1 else \
            f"{len(missing)} entries from {missing[0]} to {missing[-1]}"
        return f"the journal recorded audit {which}, which the database does not hold ({holds}): entries were removed"
    return None


async def read_journal(anchor: Path, uid: int) -> list[Record] | str:
    """This log's records in the journal, oldest first; or why they cannot be read."""
    program = shutil.which(JOURNALCTL)
    if program is None:
        return "journalctl is not installed"
    lines: list[str] = []
    result = await bkexec.run([program, "--no-pager", "--quiet", "-o", "json", f"--output-fields={','.join(FIELDS)}",
                               f"_UID={uid}", "SYSLOG_IDENTIFIER=bkd", "BKD_EVENT=audit.entry",
                               f"BKD_ANCHOR={anchor.as_posix()}"], on_stdout=lines.append)
    if result.returncode != 0:
        return f"journalctl exited with code {result.returncode}" + (
            f": {result.stderr_tail[-1]}" if result.stderr_tail else "")
    return parse(lines, anchor, uid)


async def testify(anchor: Path, uid: int, held: dict[int, str]) -> Testimony:
    records = await read_journal(anchor, uid)
    if isinstance(records, str):
        return Testimony(None, f"not compared with the journal: {records}")
    if not records:
        return Testimony(None, "the journal holds no records of this log (bkd does not log to it, or they "
                               "rotated out)")
    return Testimony(compare(records, held), f"compared with {len(records)} record(s) in the journal")


SUBJECT = "audit log"  # the subject of the `integrity` alert about the audit log


class AuditWatch:
    """Checking the audit log — its chain, its head record and the journal's
    record of it — and telling people: an `integrity` alert (subject "audit
    log") for every anchoring and every disagreement, so that a notification
    carries it off the server. An admin's `audit --verify` that finds
    everything in order resolves it."""

    def __init__(self, audit, alerts, uid: int):
        self.audit, self.alerts, self.uid = audit, alerts, uid

    async def testify(self) -> Testimony:
        if self.audit.head_path is None:
            return Testimony(None, "not compared with the journal: the log has no head record")
        return await testify(self.audit.head_path, self.uid, await self.audit.hashes())

    async def verify(self) -> dict:
        """The chain, its end against the head record, the journal; the alert raised or resolved."""
        verdict = await self.audit.verify()
        testimony = await self.testify()
        problem = verdict.problem or testimony.problem
        if problem:
            await self.alerts.raise_(AlertKind.INTEGRITY, None, f"the audit log: {problem}", SUBJECT)
        else:
            await self.alerts.resolve(AlertKind.INTEGRITY, None, SUBJECT)
        return {"chain_ok": problem is None, "broken_at": verdict.broken_at, "problem": problem,
                "journal": testimony.note}

    async def run(self, mismatch: str | None) -> None:
        """The `audit-witness` loop: at start, then once a day (an edit under
        the running daemon, hashes recomputed, is noticed within a day)."""
        await self.at_start(mismatch)
        while True:
            await asyncio.sleep(WITNESS_EVERY)
            await self.witnessed()

    async def witnessed(self) -> None:
        testimony = await self.testify()
        log.info("audit.witnessed", note=testimony.note, problem=testimony.problem)
        if testimony.problem:
            await self.alerts.raise_(AlertKind.INTEGRITY, None, f"the audit log: {testimony.problem}", SUBJECT)

    async def at_start(self, mismatch: str | None) -> None:
        """After anchoring at start: an alert for each anchoring entry not yet
        alerted and for a head record that does not match; then the journal's testimony."""
        for entry in await self.audit.unalerted_anchorings():
            how = "re-anchored by `bkd audit reanchor`" if entry["method"] == "audit.reanchor" else \
                "anchored anew by the daemon (its head record and marker were missing)"
            await self.alerts.raise_(AlertKind.INTEGRITY, None,
                                     f"the audit log was {how} at entry {entry['id']} ({entry['time']}, "
                                     f"{entry['user']}): check that this was meant", SUBJECT)
        if mismatch:
            await self.alerts.raise_(AlertKind.INTEGRITY, None, f"the audit log: {mismatch}", SUBJECT)
        await self.witnessed()
