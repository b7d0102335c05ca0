"""Testing hosts' reachability: SSH, the remote rsync and read access of the
source, in parallel, writing nothing anywhere."""

from __future__ import annotations

import asyncio
import time

from . import exec as bkexec
from .pipeline import rsync
from .runtime import Runtime


class Hosts:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def test(self, names: list[str]) -> dict[str, dict]:
        config = self.runtime.config

        async def test_one(name: str) -> dict:
            settings = config.settings(config.find_host(name))
            started = time.monotonic()
            result = await bkexec.run(rsync.reachability_command(config, settings))
            seconds = round(time.monotonic() - started, 2)
            if result.returncode == 0:
                return {"ok": True, "error": None, "seconds": seconds}
            return {"ok": False, "error": rsync.describe_failure(result.returncode, result.stderr_tail),
                    "seconds": seconds}

        return dict(zip(names, await asyncio.gather(*(test_one(n) for n in names)), strict=True))
