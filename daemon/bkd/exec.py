"""The one wrapper every external command runs through.

Each child gets its own process group, so stopping it stops everything it
spawned (rsync's ssh, a hook's grandchildren). Output is streamed line by line
to an optional callback, or as the chunks it was read in to a reader that
frames it itself (rsync's itemized list), and only a bounded tail of stderr
is kept.
"""

from __future__ import annotations

import asyncio
import fcntl
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
# A reader of chunks (on_stdout_bytes) takes what has gathered in the pipe at
# most this often: a tool that writes a line at a time (rsync) would otherwise
# wake the event loop for every line, which cost as much CPU as hashing.
READ_EVERY = 0.02
PIPE_SIZE = 1 << 20  # room for what a tool writes meanwhile (the default is 64 KiB)
CHUNK = 1 << 20


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


class _ChunkPipe:
    """A child's stdout read in chunks: the read end non-blocking and as large
    as allowed, closed once, and never unwatched after it is closed (its
    number may be another pipe's by then)."""

    def __init__(self):
        self.fd, self.write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.fd, False)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default size does, with more waking

    def spawned(self) -> None:
        # Only the child may hold the write end, so that the pipe ends with it.
        os.close(self.write_end)
        self.write_end = -1

    async def read(self, on_bytes: Callable[[bytes], None]) -> None:
        """Wait until readable, let more gather for READ_EVERY, then take all
        of it: at most one wakeup per READ_EVERY, however the child writes."""
        loop = asyncio.get_running_loop()
        while True:
            readable = loop.create_future()
            loop.add_reader(self.fd, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                if self.fd >= 0:
                    loop.remove_reader(self.fd)
            await asyncio.sleep(READ_EVERY)
            while True:
                try:
                    chunk = os.read(self.fd, CHUNK)
                except BlockingIOError:
                    break
                if not chunk:
                    return
                on_bytes(chunk)

    def close(self) -> None:
        if self.write_end >= 0:
            self.spawned()
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


async def run(argv: Sequence[str], *, on_stdout: Callable[[str], None] | None = None,
              on_stderr: Callable[[str], None] | None = None, env: dict | None = None,
              cwd: str | None = None, grace: float = GRACE_SECONDS,
              on_stdout_bytes: Callable[[bytes], None] | None = None) -> Result:
    """Run argv to completion. stdout goes line by line to on_stdout, or, with
    on_stdout_bytes, in chunks as it gathers (unsplit: the reader frames and
    bounds it). Cancelling the calling task stops the process group."""
    argv = [str(a) for a in argv]
    log.debug("exec", argv=argv)
    pipe = _ChunkPipe() if on_stdout_bytes else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *_DEATH_SIGNAL, *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=pipe.write_end if pipe else asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, process_group=0, env=env, cwd=cwd,
        )
    except BaseException:
        if pipe:
            pipe.close()
        raise
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    if pipe:
        pipe.spawned()
    stdout = pipe.read(on_stdout_bytes) if pipe else _pump(proc.stdout, on_stdout, None)
    pumps = asyncio.gather(stdout, _pump(proc.stderr, on_stderr, tail))
    try:
        await pumps
        returncode = await proc.wait()
    except BaseException:
        await stop_group(proc, grace)
        pumps.cancel()
        raise
    finally:
        if pipe:
            pipe.close()
    return Result(argv, returncode, list(tail))


async def relay(argv: Sequence[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                cwd: str | None = None, on_bytes: Callable[[int], None] | None = None,
                grace: float = GRACE_SECONDS) -> Result:
    """Run argv with its stdin fed from reader and its stdout sent to writer
    (a byte stream, e.g. an rsync protocol connection), counting what it
    sends. Cancelling the calling task stops the process group."""
    argv = [str(a) for a in argv]
    log.debug("exec.relay", argv=argv)
    proc = await asyncio.create_subprocess_exec(
        *_DEATH_SIGNAL, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, process_group=0, cwd=cwd,
    )
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    async def upstream() -> None:
        try:
            while chunk := await reader.read(65536):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            proc.stdin.close()

    async def downstream() -> None:
        while chunk := await proc.stdout.read(65536):
            writer.write(chunk)
            await writer.drain()
            if on_bytes:
                on_bytes(len(chunk))
        if writer.can_write_eof():
            writer.write_eof()

    pumps = asyncio.gather(upstream(), downstream(), _pump(proc.stderr, None, tail))
    try:
        await pumps
        returncode = await proc.wait()
    except BaseException:
        # Cut the connection at once: close() would wait for a peer that may never read again.
        writer.transport.abort()
        await stop_group(proc, grace)
        pumps.cancel()
        raise
    writer.close()
    return Result(argv, returncode, list(tail))
