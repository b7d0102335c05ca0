"""The one wrapper every external command runs through.

Each child gets its own process group, so stopping it stops everything it
spawned (rsync's ssh, a hook's grandchildren). Output is streamed line by line
to an optional callback and only a bounded tail of stderr is kept; every line
is bounded too, since what a source host prints is hostile. A tool's
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
# Bytes of one line kept. rsync's itemized lines (stdout, a Channel) name a path
# of up to PATH_MAX bytes, each escaped byte written as 5, and a link's target:
# 64 KiB holds them. People read stderr: 4 KiB of a line is plenty.
LINE_LIMIT = 65536
STDERR_LINE_LIMIT = 4096


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stderr_tail: list[str]
    dropped: int = 0  # bytes of over-long lines that were not kept

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_tail)


class _Lines:
    """A child's output cut into lines (ending in \n or \r, as rsync's progress
    does) of at most `limit` bytes, in time linear in its size. A longer line
    never reaches on_line, where a parser could take its start for a whole
    line; the tail keeps its start, marked, and the rest is counted as it
    arrives, never buffered."""

    def __init__(self, limit: int, on_line: Callable[[str], None] | None, tail: deque | None):
        self.limit, self.on_line, self.tail = limit, on_line, tail
        self.pending = bytearray()
        self.over = 0  # bytes of the current line beyond limit
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        if self.on_line is None and self.tail is None:
            return  # nobody reads it: drained, not split
        data = chunk.replace(b"\r", b"\n")
        if self.on_line is None:
            # Only the newest lines can stay in the tail: a flood of lines is skipped in C, not line by line.
            parts = data.rsplit(b"\n", self.tail.maxlen + 1)
            if len(parts) == self.tail.maxlen + 2:  # the line pending and the first part end among them
                self.pending.clear()
                self.over, parts[0] = 0, b""
        else:
            parts = data.split(b"\n")
        self._add(parts[0])
        for part in parts[1:]:
            self.end()
            self._add(part)

    def _add(self, piece: bytes) -> None:
        room = self.limit - len(self.pending)
        if len(piece) > room:
            self.over += len(piece) - room
            piece = piece[:room]
        self.pending += piece

    def end(self) -> None:
        """The current line is complete (a separator, or the end of the output)."""
        line = self.pending.decode("utf-8", "surrogateescape")
        if self.over:
            self.dropped += self.over
            if self.tail is not None:
                self.tail.append(f"{line} [+{self.over} bytes not kept]")
        elif line:
            if self.tail is not None:
                self.tail.append(line)
            if self.on_line is not None:
                self.on_line(line)
        self.pending.clear()
        self.over = 0


async def _pump(stream: asyncio.StreamReader, on_line: Callable[[str], None] | None,
                tail: deque | None, limit: int = LINE_LIMIT) -> int:
    """Deliver stream's lines; the bytes of over-long lines not kept."""
    lines = _Lines(limit, on_line, tail)
    while chunk := await stream.read(65536):
        lines.feed(chunk)
    lines.end()
    return lines.dropped


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
              cwd: str | None = None, grace: float = GRACE_SECONDS, channel: Channel | None = None) -> Result:
    """Run argv to completion. Cancelling the calling task stops the process group."""
    argv = [str(a) for a in argv]
    log.debug("exec", argv=argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *_DEATH_SIGNAL, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, process_group=0, env=env, cwd=cwd,
            pass_fds=(channel._write,) if channel else (),
        )
    except BaseException:
        if channel:
            channel.close()
        raise
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    streams = [_pump(proc.stdout, on_stdout, None), _pump(proc.stderr, on_stderr, tail, STDERR_LINE_LIMIT)]
    if channel:
        channel._spawned()
        streams.append(channel._pump())
    pumps = asyncio.gather(*streams)
    try:
        dropped = await pumps
        returncode = await proc.wait()
    except BaseException:
        await stop_group(proc, grace)
        pumps.cancel()
        raise
    finally:
        if channel:
            channel.close()
    return _result(argv, returncode, tail, dropped)


def _result(argv: list[str], returncode: int, tail: deque, dropped: list[int | None]) -> Result:
    cut = sum(filter(None, dropped))
    if cut:
        log.warning("exec.lines_cut", program=os.path.basename(argv[0]), bytes_not_kept=cut)
    return Result(argv, returncode, list(tail), cut)


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

    pumps = asyncio.gather(upstream(), downstream(), _pump(proc.stderr, None, tail, STDERR_LINE_LIMIT))
    try:
        *_, dropped = await pumps
        returncode = await proc.wait()
    except BaseException:
        # Cut the connection at once: close() would wait for a peer that may never read again.
        writer.transport.abort()
        await stop_group(proc, grace)
        pumps.cancel()
        raise
    writer.close()
    return _result(argv, returncode, tail, [dropped])
