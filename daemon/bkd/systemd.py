"""sd_notify: READY/STATUS/WATCHDOG/STOPPING for systemd (a no-op without NOTIFY_SOCKET)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import sdnotify

_notifier = sdnotify.SystemdNotifier()


def notify(*lines: str) -> None:
    _notifier.notify("\n".join(lines))


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def keep_alive(status: Callable[[], str], interval: float | None) -> None:
    """Ping the watchdog from the event loop itself: if the loop hangs, the
    pings stop and systemd restarts the service. STATUS= rides along."""
    last = None
    while True:
        line = status()
        message = ["WATCHDOG=1"] if interval else []
        if line != last:
            message.append(f"STATUS={line}")
            last = line
        if message:
            notify(*message)
        await asyncio.sleep(min(interval or 5.0, 5.0))
