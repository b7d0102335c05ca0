"""Dead-man pings in the healthchecks.io convention (SPEC §8): a host's
`ping_url` gets `URL/start` when a backup run starts, `URL` when it
succeeds and `URL/fail` (with the log tail) when it fails; the daemon's own
`[heartbeat] url` gets a ping every `every` while every supervised loop is
healthy, and none once it stops.

Pings are time-critical: they are sent at once, never through the outbox,
retried a few times within PING_EXPIRY and then dropped — a `/start` that
arrived an hour late would break the dead-man's logic. One host's pings go
out in order (a run's end never overtakes its start)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog

from ...config.models import redact_url
from ...config.runtime import Runtime
from . import http

log = structlog.get_logger()

PING_TIMEOUT = 10.0  # seconds for one attempt
RETRY_DELAYS = (0.0, 1.0, 3.0, 10.0, 30.0, 60.0)  # before each attempt
PING_EXPIRY = 180.0  # seconds after which a ping not yet delivered is dropped


def ping_url(url: str, suffix: str) -> str:
    """URL/suffix, keeping the URL's query (healthchecks' `?create=1` and the like)."""
    if not suffix:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + suffix))


class Pinger:
    """Pings sent at once, one key's (a host's) in order: a run's end never
    overtakes its start (watch/runs.py says what a run pings)."""

    def __init__(self):
        self._last: dict[str, asyncio.Task] = {}  # host → its newest ping: the next one waits for it
        self._tasks: set[asyncio.Task] = set()

    def send(self, key: str, url: str, suffix: str, body: bytes = b"") -> None:
        """Queue a ping behind key's previous one; returns at once."""
        previous = self._last.get(key)
        task = asyncio.get_running_loop().create_task(
            self._send(previous, ping_url(url, suffix), body, time.monotonic()))
        self._last[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._forget(key, t))

    def _forget(self, key: str, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self._last.get(key) is task:
            del self._last[key]

    async def _send(self, previous: asyncio.Task | None, url: str, body: bytes, created: float) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        error = await ping(url, body, created + PING_EXPIRY)
        if error:
            log.warning("ping.failed", url=redact_url(url), error=error)


async def ping(url: str, body: bytes, deadline: float, delays=RETRY_DELAYS) -> str | None:
    """Send one ping, retrying until deadline (monotonic); None once delivered,
    else why not."""
    error = "expired before it could be sent"
    for delay in delays:
        if delay:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        left = deadline - time.monotonic()
        if left <= 0:
            return f"{error}; dropped after {PING_EXPIRY:g}s"
        try:
            status = await http.request(url, "POST" if body else "GET", body,
                                        {"Content-Type": "text/plain; charset=utf-8"} if body else None,
                                        min(PING_TIMEOUT, left))
        except http.HttpError as e:
            error = str(e)
            continue
        if http.delivered(status):
            return None
        error = f"HTTP {status}"
        if http.permanent(status):
            return error
    return error


async def heartbeat(runtime: Runtime, healthy: Callable[[], bool]) -> None:
    """The heartbeat loop (supervised): ping [heartbeat] url every `every`
    while healthy() — every supervised loop running — and not otherwise.
    Cancelled at shutdown, so the pings stop with the daemon."""
    reported = None
    while True:
        config = runtime.config.heartbeat
        every = config.every.total_seconds()
        state = None
        if config.url and healthy():
            error = await ping(config.url, b"", time.monotonic() + min(every, PING_EXPIRY), (0.0,))
            state = f"failed: {error}" if error else None
            if state and state != reported:
                log.warning("heartbeat.failed", url=redact_url(config.url), error=error)
        elif config.url:
            state = "withheld"
            if state != reported:
                log.error("heartbeat.withheld", reason="a supervised loop keeps failing")
        if reported and not state:
            log.info("heartbeat.resumed")
        reported = state
        await asyncio.sleep(every if config.url else min(every, 60.0))
