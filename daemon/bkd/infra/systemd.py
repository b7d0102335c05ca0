"""sd_notify: READY/STATUS/WATCHDOG/STOPPING/RELOADING for systemd.

A few lines of the standard library instead of a package that swallows send
errors: without NOTIFY_SOCKET this is a no-op; a failing send is logged (once
per kind of error), never ignored silently and never fatal."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger()

_reported: set[str] = set()


def notify(*lines: str) -> bool:
    """Send lines as one datagram to $NOTIFY_SOCKET; True if it was sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # '@': the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as e:
        reason = e.strerror or str(e)
        if reason not in _reported:
            _reported.add(reason)
            log.error("systemd.notify_failed", socket=path, error=reason, message=lines[0] if lines else "")
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def keep_alive(status: Callable[[], str], interval: float | None, healthy: Callable[[], bool]) -> None:
    """Ping the watchdog from the event loop itself while every supervised
    loop is healthy: if the loop hangs, or a loop keeps failing, the pings
    stop and systemd restarts the service. STATUS= rides along."""
    last = None
    withheld = False
    while True:
        line = status()
        ok = healthy()
        if not ok:
            line = f"unhealthy: {line}"
        message = ["WATCHDOG=1"] if interval and ok else []
        if ok == withheld:
            withheld = not ok
            if withheld:
                log.error("watchdog.withheld", reason="a supervised loop keeps failing")
        if line != last:
            message.append(f"STATUS={line}")
            last = line
        if message:
            notify(*message)
        await asyncio.sleep(min(interval or 5.0, 5.0))
