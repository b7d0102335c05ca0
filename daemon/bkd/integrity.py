"""Verifying snapshots against their manifests: on request (`verify`), and
the background sample pass, whose last pass per host is persisted so that a
daemon restarted more often than `verify.every` still samples."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta

import structlog

from . import clock
from .alerts import AlertKind, Alerts
from .layout import HostDir
from .pipeline import archive, manifest
from .runtime import Runtime
from .store import Store
from .supervise import woken
from .threads import in_own_thread

log = structlog.get_logger()

MAX_SLEEP = 3600.0  # wake at least hourly, so a reload's new `verify.every` is noticed


def _key(host: str) -> str:
    return f"verify.sample.last.{host}"


class Integrity:
    def __init__(self, runtime: Runtime, store: Store, alerts: Alerts):
        self.runtime = runtime
        self.store = store
        self.alerts = alerts
        self.wake = asyncio.Event()

    async def _report(self, host: str, snapshot: str, mismatches: list[dict], complete: bool) -> None:
        """An integrity episode per snapshot: its subject is the snapshot's
        name, its message counts files (no file names: every role sees alerts)."""
        if mismatches:
            await self.alerts.raise_(AlertKind.INTEGRITY, host,
                                     f"{len(mismatches)} file(s) of snapshot {snapshot} do not match its manifest "
                                     f"(bkctl verify {host} {snapshot})", subject=snapshot)
        elif complete:
            await self.alerts.resolve(AlertKind.INTEGRITY, host, snapshot)

    async def verify(self, host_dir: HostDir, names: list[str], with_archives: bool) -> dict:
        """Re-hash every file of the named snapshots (and their archives)."""
        archive_files = [a.path for a in archive.archives(host_dir) if with_archives or str(a.snapshot) in names]
        # Its own thread: a stop must not wait for a re-hash of whole snapshots (it only reads).
        result = await in_own_thread(manifest.verify_snapshots, host_dir.hourly, host_dir.meta, names,
                                     archive_files)
        host = host_dir.root.name
        for name in names:
            await self._report(host, name, [m for m in result["mismatches"] if m.get("snapshot") == name], True)
        log.log(40 if result["mismatches"] else 20, "verify.done", host=host, ok=result["ok"],
                checked=result["checked"], mismatches=len(result["mismatches"]))
        return result

    async def sample(self, host_dir: HostDir, percent: float) -> dict:
        """A sample of the latest snapshot's files, least recently verified
        first, re-hashed at idle I/O priority."""
        host = host_dir.root.name
        latest = host_dir.latest_snapshot()
        try:
            recorded = manifest.read(host_dir.manifest_file(latest)) if latest else None
        except manifest.ManifestRefused as e:
            mismatch = {"path": "/", "problem": str(e)}
            await self._report(host, str(latest), [mismatch], False)
            return {"host": host, "snapshot": str(latest), "checked": 0, "mismatches": [mismatch]}
        if not recorded:
            return {"host": host, "snapshot": str(latest) if latest else None, "checked": 0, "mismatches": []}
        count = max(1, math.ceil(len(recorded) * percent / 100))
        paths = await self.store.least_recently_verified(host, list(recorded), count)
        mismatches = await in_own_thread(manifest.hash_sample_idle, host_dir.hourly / str(latest), recorded, paths)
        await self.store.mark_verified(host, paths, clock.iso(clock.now()))
        await self._report(host, str(latest), mismatches, False)
        return {"host": host, "snapshot": str(latest), "checked": len(paths), "mismatches": mismatches}

    async def run(self) -> None:
        """The background pass: each host when its last pass is `verify.every` old."""
        while True:
            config = self.runtime.config
            every = config.verify.every
            now = clock.now()
            soonest = now + timedelta(seconds=MAX_SLEEP)
            for host in config.host:
                last = await self.store.get_value(_key(host.name))
                due = _parse(last) + every if last else now
                if due <= now:
                    host_dir = HostDir.of(config.backup_root, host.name)
                    try:
                        result = await self.sample(host_dir, config.verify.sample_percent)
                        log.info("verify.sampled", host=host.name, snapshot=result["snapshot"],
                                 checked=result["checked"], mismatches=len(result["mismatches"]))
                    except (OSError, ValueError) as e:  # this host's tree or manifest: its problem alone
                        log.warning("verify.sample_failed", host=host.name, error=str(e))
                    await self.store.set_value(_key(host.name), clock.iso(clock.now()))
                    due = clock.now() + every
                soonest = min(soonest, due)
            self.wake.clear()
            await woken(self.wake, max(1.0, (soonest - clock.now()).total_seconds()))


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
