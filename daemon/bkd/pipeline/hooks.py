"""Per-host pre and post commands, run by /bin/sh with a timeout; their output
goes into the run's log."""

from __future__ import annotations

import asyncio
import os

import structlog

from .. import exec as bkexec

log = structlog.get_logger()


class HookFailed(Exception):
    pass


async def run_hook(which: str, command: str, timeout: float, env: dict[str, str]) -> None:
    """Run one hook; raise HookFailed if it exits non-zero or outlives timeout
    (then its whole process group is stopped)."""
    def output(line: str) -> None:
        log.info("hook.output", hook=which, line=line)

    log.info("hook.start", hook=which, command=command)
    try:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel (see supervise.woken)
            result = await bkexec.run(["/bin/sh", "-c", command], on_stdout=output, on_stderr=output,
                                      env={**os.environ, **env})
    except TimeoutError:
        raise HookFailed(f"{which} hook timed out after {int(timeout)}s") from None
    if result.returncode != 0:
        last = f": {result.stderr_tail[-1]}" if result.stderr_tail else ""
        raise HookFailed(f"{which} hook exited with code {result.returncode}{last}")
    log.info("hook.done", hook=which)
