"""The one wrapper every external command runs through.

Each child gets its own process group, so stopping it stops everything it
spawned (rsync's ssh, a hook's grandchildren). Output is streamed line by line
to an optional callback and only a bounded tail of stderr is kept. A tool's
machine-readable output can have a pipe of its own (a Channel), so that it is
never interleaved with what the tool prints for humans.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger()

GRACE_SECONDS = 5.0
# If the daemon itself is killed (kill -9, OOM), its children must not run on
# unsupervised: the kernel sends them SIGKILL when their parent dies.
_DEATH_SIGNAL = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
STDERR_TAIL_LINES = 40


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stderr_tail: list[str]

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_tail)


async def _pump(stream: asyncio.StreamReader, on_line: Callable[[str], None] | None,
                tail: deque | None) -> None:
    # Lines may end in \r (rsync progress) as well as \n.
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            if raw:
                _deliver(raw, on_line, tail)
    if pending:
        _deliver(pending, on_line, tail)


def _deliver(raw: bytes, on_line, tail) -> None:
    line = raw.decode("utf-8", "surrogateescape")
    if tail is not None:
        tail.append(line)
    if on_line is not None:
        on_line(line)


class Channel:
    """An extra output pipe for one run: the child writes to `path`
    (/dev/fd/N, inherited), each line goes to on_line. Use it in a `with`
    block around everything from its creation to the run, so that a step
    failing before the child starts does not leak the pipe."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line = on_line
        read, self._write = os.pipe()
        # One file object owns the read end, whoever closes it (us, or the
        # transport, which closes it when connecting is cancelled): closing
        # it twice is harmless, closing its number twice could close another
        # run's pipe that reused it.
        self._read = open(read, "rb", buffering=0)
        self.path = f"/dev/fd/{self._write}"
        self._transport: asyncio.BaseTransport | None = None

    def _spawned(self) -> None:
        # Only the child may hold the write end, so that the pipe ends with it.
        os.close(self._write)
        self._write = -1

    async def _pump(self) -> None:
        reader = asyncio.StreamReader()
        self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._read)
        await _pump(reader, self.on_line, None)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Idempotent: run() closes it when the child ends, the `with` block again."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
        if self._transport is not None:
            self._transport.close()  # stops watching the read end before it is closed
        self._read.close()


async def stop_group(proc: asyncio.subprocess.Process, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the whole group, SIGKILL it after the grace period, always reap."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if await _exited(proc, grace):
            break
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # members that outlived the leader
    except ProcessLookupError:
        pass
    await _exited(proc, None)
    # Stop reading its pipes: a child that left the group may hold them open
    # for as long as it lives. (Process has no public close.)
    proc._transport.close()


async def _exited(proc: asyncio.subprocess.Process, timeout: float | None) -> bool:
    """Whether proc has exited within timeout. Not proc.wait(): that also waits
    until its output pipes close, which output nobody reads any more, or a
    child that left the group holding them, can put off indefinitely."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.returncode is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def run(argv: Sequence[str], *, on_stdout: Callable[[str], None] | None = None,
              on_stderr: Callable[[str], None] | None = None, env: dict | None = None,
              cwd: str | None = None, grace: float = GRACE_SECONDS, channel: Channel | None = None,
              pass_fds: Sequence[int] = (), on_spawn: Callable[[int], None] | None = None) -> Result:
    """Run argv to completion. Cancelling the calling task stops the process group.
    pass_fds: more descriptors the child inherits; on_spawn gets its pid once it runs."""
    argv = [str(a) for a in argv]
    log.debug("exec", argv=argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *_DEATH_SIGNAL, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, process_group=0, env=env, cwd=cwd,
            pass_fds=(*pass_fds, *((channel._write,) if channel else ())),
        )
    except BaseException:
        if channel:
            channel.close()
        raise
    if on_spawn:
        on_spawn(proc.pid)
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    streams = [_pump(proc.stdout, on_stdout, None), _pump(proc.stderr, on_stderr, tail)]
    if channel:
        channel._spawned()
        streams.append(channel._pump())
    pumps = asyncio.gather(*streams)
    try:
        await pumps
        returncode = await proc.wait()
    except BaseException:
        await stop_group(proc, grace)
        pumps.cancel()
        raise
    finally:
        if channel:
            channel.close()
    return Result(argv, returncode, list(tail))

