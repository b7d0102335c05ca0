"""Verifying snapshots against their manifests: on request (`verify`), and
the background sample pass, whose last pass per host is persisted so that a
daemon restarted more often than `verify.every` still samples. What they find
goes into the host's damage ledger (pipeline/damage.py), which the next run
heals from and the `integrity` alerts are kept in line with."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import structlog

from ..alerts.service import AlertKind, Alerts
from ..config.models import Config
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.supervise import woken
from ..infra.threads import in_own_thread
from ..pipeline import damage, manifest, tarstream
from ..pipeline.versions.service import Versions
from ..state.store import Store
from ..tree import copies
from ..tree.layout import HostDir, SnapshotName

log = structlog.get_logger()

MAX_SLEEP = 3600.0  # wake at least hourly, so a reload's new `verify.every` is noticed


def _key(host: str) -> str:
    return f"verify.sample.last.{host}"


class Integrity:
    def __init__(self, runtime: Runtime, store: Store, alerts: Alerts, versions: Versions | None = None):
        self.runtime = runtime
        self.versions = versions  # its index is checked against the manifests of the snapshots verified
        self.store = store
        self.alerts = alerts
        self.wake = asyncio.Event()
        runtime.on_reload(self._reloaded)
        self._locks: dict[str, asyncio.Lock] = {}  # one update of a host's damage ledger at a time

    def _reloaded(self, old: Config, new: Config) -> None:
        self.wake.set()  # hosts and `verify.every` may have changed

    async def settle(self, host_dir: HostDir, verified: dict[str, list[dict]] | None = None,
                     hashed: set[bytes] | None = None) -> None:
        """Bring the host's damage ledger and its `integrity` alerts in line
        with what a verify just found (mismatches by snapshot; `hashed`: the
        paths a sample hashed) and with the snapshots there are now. Called
        after every verify and prune, and by the sampler loop: an alert
        whose snapshot and sharers are all gone resolves."""
        host = host_dir.root.name
        verified = verified or {}
        current = {e["subject"]: e for e in self.alerts.current.values()
                   if e["kind"] == AlertKind.INTEGRITY and e["host"] == host and e["subject"]}
        if not verified and not current and not host_dir.damage_file.exists():
            return  # nothing known, nothing found: no work for a healthy host
        async with self._locks.setdefault(host, asyncio.Lock()):
            findings, known, names, found = await asyncio.to_thread(_settle, host_dir, verified, hashed)
        for subject, finding in findings.items():
            message = finding.message(host)
            episode = current.get(subject)
            if subject in found or episode is None:
                await self.alerts.raise_(AlertKind.INTEGRITY, host, message, subject=subject)
            elif episode["message"] != message:  # fewer sharers: the same episode, said anew
                await self.alerts.raise_(AlertKind.INTEGRITY, host, message, subject=subject,
                                         count=episode["count"])
        for subject in current.keys() - findings.keys():
            # A snapshot that is gone is not damage; nor one verified clean, or whose damage nothing holds any more.
            if SnapshotName.parse(subject) and (subject not in names or subject in known
                                                or (subject in verified and hashed is None)):
                await self.alerts.resolve(AlertKind.INTEGRITY, host, subject)

    async def verify(self, host_dir: HostDir, chosen: list[copies.Copy], every: bool) -> dict:
        """Re-hash every file of the chosen copies: snapshots and monthly
        copies against their manifests; archives (those of the chosen
        snapshots, or with `every` all of them) against their checksums and,
        file by file, against the manifest of the snapshot they were made from."""
        names = [c.ref for c in chosen if c.kind == copies.HOURLY]
        monthly = [c for c in chosen if c.kind == copies.MONTHLY]
        archives = [a for a in copies.archives(host_dir) if every or a.snapshot in names]
        archives += [c for c in chosen if c.kind == copies.ARCHIVE and c not in archives]
        host = host_dir.root.name
        log.info("verify.start", host=host, snapshots=len(names), monthly=len(monthly), archives=len(archives))
        # Its own thread: a stop must not wait for a re-hash of whole snapshots (it only reads).
        result = await in_own_thread(manifest.verify_snapshots, host_dir.hourly, host_dir.meta, names, [])
        await self.settle(host_dir, {name: [m for m in result["mismatches"] if m.get("snapshot") == name]
                                     for name in result["snapshots"]})
        if monthly:
            found = await in_own_thread(manifest.verify_trees, [(c.ref, c.path, copies.manifest_of(host_dir, c))
                                                                for c in monthly])
            result["checked"] += found["checked"]
            result["snapshots"] += found["verified"]
            result["gone"] += found["gone"]
            result["mismatches"] += found["mismatches"]
        for copy in archives:
            checked, mismatches = await self._archive(host_dir, copy)
            if checked is None:
                result["gone"].append(copy.ref)
                continue
            result["checked"] += checked
            result["archives"].append(copy.archive.name)
            result["mismatches"] += mismatches
        if self.versions is not None and result["snapshots"]:
            checked = await self.versions.check(host_dir, [n for n in result["snapshots"] if n in names])
            result["index"] = checked
            # A file that differs from its manifest is reported once: its index entry (what is on disk) differs too.
            damaged = {(m.get("snapshot"), m.get("path")) for m in result["mismatches"]}
            result["mismatches"] += [{**p, "problem": f"index: {p['problem']}"} for p in checked["problems"]
                                     if (p.get("snapshot"), p.get("path")) not in damaged]
        result["ok"] = not result["mismatches"]
        log.log(40 if result["mismatches"] else 20, "verify.done", host=host, ok=result["ok"],
                checked=result["checked"], mismatches=len(result["mismatches"]), gone=len(result["gone"]))
        return result

    async def _archive(self, host_dir: HostDir, copy: copies.Copy) -> tuple[int | None, list[dict]]:
        """(files and checksums checked, mismatches) of one archive; None if it expired meanwhile."""
        archive = copy.archive
        try:
            problem = await in_own_thread(manifest.verify_archive, archive.path)
        except FileNotFoundError:
            return None, []
        mismatches = [{"snapshot": copy.ref, **problem}] if problem else []
        manifest_file = copies.manifest_of(host_dir, copy)
        try:
            recorded = await asyncio.to_thread(manifest.read, manifest_file) if manifest_file else None
        except manifest.ManifestRefused as e:
            return 1, [*mismatches, {"snapshot": copy.ref, "path": "/", "problem": str(e)}]
        if recorded is None:  # its snapshot's manifest is gone too: the checksum is all there is
            return 1, mismatches
        try:
            checked, found = await tarstream.check_content(archive, recorded)
        except tarstream.ArchiveUnreadable as e:
            if not archive.path.exists():
                return None, []
            return 1, [*mismatches, {"snapshot": copy.ref, "path": f"archives/{archive.name}",
                                     "problem": f"unreadable: {e}"}]
        return 1 + checked, [*mismatches, *({"snapshot": copy.ref, **m} for m in found)]

    async def sample(self, host_dir: HostDir, percent: float) -> dict:
        """A sample of the latest snapshot's files, least recently verified
        first, re-hashed at idle I/O priority."""
        host = host_dir.root.name
        latest = host_dir.latest_snapshot()
        if latest is None:
            return {"host": host, "snapshot": None, "checked": 0, "mismatches": [], "gone": []}
        tree = host_dir.hourly / str(latest)
        before = manifest.identity(tree)
        try:
            recorded = manifest.read(host_dir.manifest_file(latest))
        except manifest.ManifestRefused as e:
            mismatch = {"path": "/", "problem": str(e)}
            await self.settle(host_dir, {str(latest): [mismatch]}, set())
            return {"host": host, "snapshot": str(latest), "checked": 0, "mismatches": [mismatch], "gone": []}
        mismatches, paths = [], []
        if recorded:
            count = max(1, math.ceil(len(recorded) * percent / 100))
            paths = await self.store.least_recently_verified(host, list(recorded), count)
            try:
                mismatches = await in_own_thread(manifest.hash_sample_idle, tree, recorded, paths)
            except OSError:
                if manifest.identity(tree) == before:
                    raise
        if before is None or manifest.identity(tree) != before:  # pruned meanwhile: not damage
            return {"host": host, "snapshot": str(latest), "checked": 0, "mismatches": [], "gone": [str(latest)]}
        if recorded:
            await self.store.mark_verified(host, paths, clock.iso(clock.now()))
            await self.settle(host_dir, {str(latest): mismatches}, set(paths))
        return {"host": host, "snapshot": str(latest), "checked": len(paths), "mismatches": mismatches, "gone": []}

    async def run(self) -> None:
        """The background pass: each host when its last pass is `verify.every` old."""
        while True:
            self.wake.clear()  # a wake during the pass (a run that found damage) brings another pass
            config = self.runtime.config
            every = config.verify.every
            now = clock.now()
            soonest = now + timedelta(seconds=MAX_SLEEP)
            for host in config.host:
                host_dir = HostDir.of(config.backup_root, host.name)
                try:
                    await self.settle(host_dir)  # damage whose snapshots were pruned meanwhile, alerts after a restart
                except (OSError, ValueError) as e:
                    log.warning("verify.settle_failed", host=host.name, error=str(e))
                last = await self.store.get_value(_key(host.name))
                due = clock.parse(last) + every if last else now
                if due <= now:
                    try:
                        result = await self.sample(host_dir, config.verify.sample_percent)
                        log.info("verify.sampled", host=host.name, snapshot=result["snapshot"],
                                 checked=result["checked"], mismatches=len(result["mismatches"]))
                    except (OSError, ValueError) as e:  # this host's tree or manifest: its problem alone
                        log.warning("verify.sample_failed", host=host.name, error=str(e))
                    await self.store.set_value(_key(host.name), clock.iso(clock.now()))
                    due = clock.now() + every
                soonest = min(soonest, due)
            await woken(self.wake, max(1.0, (soonest - clock.now()).total_seconds()))


def _settle(host_dir: HostDir, verified: dict[str, list[dict]], hashed: set[bytes] | None):
    """(findings by subject, subjects the ledger knew before, the snapshots now,
    subjects a verify found just now): the ledger updated and saved."""
    ledger = damage.Ledger(host_dir)
    known = {c.subject for c in ledger.copies} | set(ledger.problems)
    names = [str(n) for n in host_dir.snapshots()]
    found = set()
    for snapshot, mismatches in verified.items():
        ledger.record(snapshot, mismatches, names, hashed)
        changed = {m["path"] for m in mismatches if m["problem"] == "changed"}
        found |= {c.subject for c in ledger.copies if c.path in changed}
        if ledger.problems.get(snapshot):
            found.add(snapshot)
    findings = ledger.findings(names)
    try:
        ledger.save()
    except OSError as e:  # the alerts still say what was found; the next run cannot heal it
        log.error("damage.unrecorded", host=host_dir.root.name, error=str(e))
    return findings, known, set(names), found
