"""Supervision of the daemon's long-running loops (scheduler, freshness,
sampler, trash collector, store sync, watchdog, RPC server, …).

A loop that raises is logged once with an incident id, opens an `internal`
alert (resolved once the loop has run a while without failing), and is
restarted with a growing delay. A loop that fails FAILURES times within
WINDOW seconds makes the daemon unhealthy: the watchdog pings stop and
systemd restarts the daemon."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()

FAILURES = 5
WINDOW = 600.0
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
RECOVERED_AFTER = 60.0  # seconds without a failure before the internal alert resolves

# For tests of this machinery: BKD_TEST_FAIL_LOOPS="scheduler=2,trash=1" makes
# those loops raise at their first N starts, as a bug would.
TEST_FAULTS = "BKD_TEST_FAIL_LOOPS"


class InjectedFault(RuntimeError):
    pass


def _faults() -> dict[str, int]:
    faults = {}
    for item in filter(None, os.environ.get(TEST_FAULTS, "").split(",")):
        name, _, count = item.partition("=")
        faults[name.strip()] = int(count or 1)
    return faults


async def woken(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until event is set (True) or timeout seconds have passed (False;
    None waits as long as it takes): how every loop sleeps between passes.
    Not asyncio.wait_for: before Python 3.12 it swallows a cancellation that
    comes just as the event is set, and a loop woken by the daemon's last
    work as it stops would then never end, nor the daemon."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


Incident = Callable[[str, str, BaseException], Awaitable[None]]
Recovery = Callable[[str], Awaitable[None]]


class Supervisor:
    def __init__(self, on_failure: Incident, on_recovery: Recovery):
        self.on_failure = on_failure
        self.on_recovery = on_recovery
        self.failures: dict[str, deque[float]] = {}
        self._faults = _faults()

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(sum(now - t <= WINDOW for t in times) < FAILURES for times in self.failures.values())

    async def supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run loop() for ever, restarting it when it fails. Only cancellation ends it."""
        delay = FIRST_DELAY
        failed_since_recovery = False
        while True:
            started = time.monotonic()
            try:
                if self._faults.get(name, 0) > 0:
                    self._faults[name] -= 1
                    raise InjectedFault(f"{TEST_FAULTS} broke the {name} loop")
                await _until_failure(loop, name, failed_since_recovery, self.on_recovery)
                failed_since_recovery = False
                raise RuntimeError(f"the {name} loop returned; loops run until the daemon stops")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                incident = uuid.uuid4().hex[:12]
                log.error("loop.failed", loop=name, incident=incident,
                          exc_info=(type(error), error, error.__traceback__))
                times = self.failures.setdefault(name, deque(maxlen=FAILURES))
                times.append(time.monotonic())
                failed_since_recovery = True
                try:
                    await self.on_failure(name, incident, error)
                except Exception:  # reporting must not take the loop down with it
                    log.exception("loop.report_failed", loop=name)
                if time.monotonic() - started > RECOVERED_AFTER:
                    delay = FIRST_DELAY
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                log.info("loop.restarted", loop=name, after_s=delay)


async def _until_failure(loop, name: str, failed: bool, on_recovery: Recovery) -> None:
    """Run loop(); once it has run RECOVERED_AFTER seconds after a failure, say so."""
    if not failed:
        await loop()
        return
    task = asyncio.ensure_future(loop())
    try:
        done, _ = await asyncio.wait({task}, timeout=RECOVERED_AFTER)
        if not done:
            log.info("loop.recovered", loop=name)
            try:
                await on_recovery(name)
            except Exception:
                log.exception("loop.report_failed", loop=name)
        await task
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
