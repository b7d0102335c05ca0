"""The backup root's disk (SPEC §8, `disk` alerts): free space and free inodes
below `disk_free_percent`, or a growth trend that fills it within
`disk_full_days`. A sample is persisted every SAMPLE_EVERY, so the trend
survives restarts; the trend is a least-squares line through the samples
of the last TREND_WINDOW."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta

import structlog

from bkctl.protocol import AlertKind

from ..alerts.service import Alerts
from ..config.runtime import Runtime
from ..infra import clock
from ..state.store import STORE_ERRORS, Store

log = structlog.get_logger()

SAMPLE_EVERY = timedelta(hours=1)
KEEP_SAMPLES = timedelta(weeks=8)
TREND_WINDOW = timedelta(weeks=4)
MIN_TREND_SPAN = timedelta(days=1)  # a trend over less than a day says nothing about weeks
SUBJECTS = ("space", "inodes", "trend")


def sample_of(stat: os.statvfs_result, now: datetime) -> dict:
    return {"time": clock.iso(now),
            "used_bytes": (stat.f_blocks - stat.f_bfree) * stat.f_frsize, "free_bytes": stat.f_bavail * stat.f_frsize,
            "total_bytes": stat.f_blocks * stat.f_frsize,
            "used_inodes": stat.f_files - stat.f_ffree, "free_inodes": stat.f_favail, "total_inodes": stat.f_files}


def days_to_full(samples: list[dict], now: datetime) -> float | None:
    """Days until free space runs out at the trend of the samples of the last
    TREND_WINDOW (the newest sample's free space over the growth per day);
    None when there is no trend to speak of or usage is not growing."""
    recent = [(clock.parse(s["time"]), s) for s in samples if now - clock.parse(s["time"]) <= TREND_WINDOW]
    if len(recent) < 3 or recent[-1][0] - recent[0][0] < MIN_TREND_SPAN:
        return None
    xs = [(t - recent[0][0]).total_seconds() / 86400 for t, _ in recent]
    ys = [s["used_bytes"] for _, s in recent]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread  # bytes per day
    if slope <= 0:
        return None
    return recent[-1][1]["free_bytes"] / slope


def problems(sample: dict, samples: list[dict], now: datetime, free_percent: float,
             full_days: int) -> dict[str, str]:
    """subject → message, for each disk condition that holds now."""
    found = {}
    if sample["total_bytes"] and 100 * sample["free_bytes"] / sample["total_bytes"] < free_percent:
        found["space"] = (f"the backup root has {100 * sample['free_bytes'] / sample['total_bytes']:.1f}% space "
                          f"free, less than {free_percent:g}%")
    if sample["total_inodes"] and 100 * sample["free_inodes"] / sample["total_inodes"] < free_percent:
        found["inodes"] = (f"the backup root has {100 * sample['free_inodes'] / sample['total_inodes']:.1f}% "
                           f"inodes free, less than {free_percent:g}%")
    days = days_to_full(samples, now)
    if days is not None and days < full_days:
        found["trend"] = (f"at the growth of the last weeks the backup root is full in about {days:.1f} days "
                          f"(alert below {full_days} days)")
    return found


class DiskWatch:
    def __init__(self, runtime: Runtime, store: Store, alerts: Alerts):
        self.runtime = runtime
        self.store = store
        self.alerts = alerts
        self.samples: list[dict] | None = None  # the persisted ones, loaded at the first check

    async def check(self) -> None:
        config = self.runtime.config
        now = clock.now()
        try:
            sample = sample_of(await asyncio.to_thread(os.statvfs, config.backup_root), now)
        except OSError as e:
            log.warning("disk.unreadable", error=e.strerror)
            return
        if self.samples is None:
            try:
                self.samples = await self.store.disk.samples()
            except STORE_ERRORS as e:
                log.warning("store.read_failed", error=str(e))
                return
        last = clock.parse(self.samples[-1]["time"]) if self.samples else None
        if last is None or now - last >= SAMPLE_EVERY:
            try:
                await self.store.disk.add_sample({k: sample[k] for k in ("time", "used_bytes", "free_bytes",
                                                                         "used_inodes", "free_inodes")},
                                                 clock.iso(now - KEEP_SAMPLES))
                self.samples = [s for s in self.samples if now - clock.parse(s["time"]) <= KEEP_SAMPLES]
                self.samples.append(sample)
            except STORE_ERRORS as e:
                log.warning("store.write_failed", error=str(e))
        found = problems(sample, self.samples + ([] if self.samples and self.samples[-1] is sample else [sample]),
                         now, config.alerts.disk_free_percent, config.alerts.disk_full_days)
        for subject in SUBJECTS:
            if subject in found:
                if not self.alerts.is_current(AlertKind.DISK, None, subject):
                    await self.alerts.raise_(AlertKind.DISK, None, found[subject], subject=subject)
            else:
                await self.alerts.resolve(AlertKind.DISK, None, subject)
