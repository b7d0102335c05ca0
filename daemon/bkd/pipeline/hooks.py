"""Per-host pre and post commands, run by /bin/sh with a timeout; their output
goes into the run's log (its first LOGGED_LINES lines: a hook that relays a
host's output may print without end)."""

from __future__ import annotations

import asyncio
import os

import structlog

from .. import exec as bkexec

log = structlog.get_logger()

LOGGED_LINES = 200  # per hook run; the rest is counted


class HookFailed(Exception):
    pass


async def run_hook(which: str, command: str, timeout: float, env: dict[str, str]) -> None:
    """Run one hook; raise HookFailed if it exits non-zero or outlives timeout
    (then its whole process group is stopped)."""
    lines = 0

    def output(line: str) -> None:
        nonlocal lines
        lines += 1
        if lines <= LOGGED_LINES:
            log.info("hook.output", hook=which, line=line)

    log.info("hook.start", hook=which, command=command)
    try:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel (see supervise.woken)
            result = await bkexec.run(["/bin/sh", "-c", command], on_stdout=output, on_stderr=output,
                                      env={**os.environ, **env})
    except TimeoutError:
        raise HookFailed(f"{which} hook timed out after {int(timeout)}s") from None
    finally:
        if lines > LOGGED_LINES:
            log.info("hook.output_not_logged", hook=which, lines=lines - LOGGED_LINES)
    if result.returncode != 0:
        last = f": {result.stderr_tail[-1]}" if result.stderr_tail else ""
        raise HookFailed(f"{which} hook exited with code {result.returncode}{last}")
    log.info("hook.done", hook=which)
