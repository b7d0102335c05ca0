"""Testing hosts' reachability: SSH, the remote rsync and read access of the
source, in parallel, writing nothing anywhere (and whether each is this
machine, see selfguard.py). What went wrong is told in two parts, as for
runs: `error` for every role, `detail` (the command's output) for admins."""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext

from ..config.runtime import Runtime
from ..infra import exec as bkexec
from ..pipeline import failures, rsync
from ..pipeline.outcomes import public_message
from ..pipeline.selfguard import SelfGuard

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
            settings = config.hosts[name]
            started = time.monotonic()
            with rsync.ssh_log_for(settings) or nullcontext() as ssh_log:
                result = await bkexec.run(rsync.reachability_command(config, settings, ssh_log))
                said = ssh_log.said() if ssh_log else []
            seconds = round(time.monotonic() - started, 2)
            verdict = await self.guard.verdict(settings, fresh=True)  # and whether it is this machine
            identity = {"this_machine": verdict.same, "identity": verdict.how, "identity_detail": verdict.detail}
            if result.returncode == 0:
                return {"ok": True, "error": None, "detail": None, "seconds": seconds, **identity}
            detail = rsync.describe_failure(result.returncode, result.stderr_tail, said)
            refusal = failures.ssh_refusal(said)
            error = failures.auth_message(refusal) if refusal else public_message(detail, "the test failed")
            return {"ok": False, "error": error, "detail": detail, "seconds": seconds, **identity}

        return dict(zip(names, await asyncio.gather(*(test_one(n) for n in names)), strict=True))
