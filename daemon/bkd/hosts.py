"""Testing hosts' reachability: SSH, the remote rsync and read access of the
source, in parallel, writing nothing anywhere (and whether each is this
machine, see selfguard.py). The checks are `bkd host add`'s readiness checks
(readiness.py), without the estimate of a first pull: `error` and each
check's message and fix are bkd's own words, for every role; what the tools
and the host printed is `detail`, for admins."""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext

from . import readiness
from .runtime import Runtime
from .selfguard import SelfGuard

TESTS_AT_ONCE = 8  # hosts one hosts.test call tests at once (the method itself runs at most twice at once)


class Hosts:
    def __init__(self, runtime: Runtime, guard: SelfGuard):
        self.runtime = runtime
        self.guard = guard

    async def test(self, names: list[str]) -> dict[str, dict]:
        """Test hosts, TESTS_AT_ONCE at a time (each is an ssh and an rsync:
        descriptors and processes, however many hosts are configured)."""
        config = self.runtime.config
        at_once = asyncio.Semaphore(TESTS_AT_ONCE)

        async def test_one(name: str) -> dict:
            async with at_once:
                return await tested(name)

        async def tested(name: str) -> dict:
            settings = config.settings(config.find_host(name))
            started = time.monotonic()
            found = await readiness.check(config, settings)
            seconds = round(time.monotonic() - started, 2)
            verdict = await self.guard.verdict(settings, fresh=True)  # and whether it is this machine
            return {"ok": found.ok, "error": found.error, "detail": found.detail, "seconds": seconds,
                    "checks": [c.as_dict() for c in found.checks], "this_machine": verdict.same,
                    "identity": verdict.how, "identity_detail": verdict.detail}

        return dict(zip(names, await asyncio.gather(*(test_one(n) for n in names)), strict=True))
