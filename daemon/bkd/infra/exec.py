"""The one wrapper every external command runs through.

Each child gets its own process group, so stopping it stops everything it
spawned (rsync's ssh, a hook's grandchildren). Output is streamed line by line
to an optional callback, or as the chunks it was read in to a reader that
frames it itself (rsync's itemized list); only a bounded tail of stderr is
kept, and every line is bounded too, since what a source host prints is
hostile. A run may have a stall limit: when its processes read and write
next to nothing for that long, it is stopped (a transfer whose remote end
froze while the connection stays up).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger()

GRACE_SECONDS = 5.0
# If the daemon itself is killed (kill -9, OOM), its children must not run on
# unsupervised: the kernel sends them SIGKILL when their parent dies.
_DEATH_SIGNAL = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
STDERR_TAIL_LINES = 40
# Bytes a run's processes must read or write in all within one check to count as
# progress: more than the keepalives of a frozen transfer (rsync's 4 bytes every
# few seconds, ssh's few dozen per ServerAliveInterval).
STALL_NOISE = 1024
_IO_ACCOUNTING = os.path.exists("/proc/self/io")
# Bytes of one line kept. A line of rsync's names a path of up to PATH_MAX
# bytes, each escaped byte written as 5, and a link's target:
# 64 KiB holds them. People read stderr: 4 KiB of a line is plenty.
LINE_LIMIT = 65536
STDERR_LINE_LIMIT = 4096


class Stalled(Exception):
    """A run made no I/O progress for its stall limit; its processes were stopped."""

    def __init__(self, seconds: float):
        super().__init__(f"no I/O for {seconds:g}s")
        self.seconds = seconds
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


def _group_io(pgid: int) -> dict[int, int]:
    """Bytes read plus bytes written (rchar + wchar: files, pipes and sockets
    alike) by each process of the group, as the kernel counts them."""
    counts = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            # The name in parentheses may hold spaces: the fields after it are state, ppid, pgrp.
            if int(stat[stat.rindex(b")") + 2:].split(b" ", 3)[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/io", "rb") as f:
                fields = dict(line.split(b": ", 1) for line in f.read().splitlines())
            counts[int(entry.name)] = int(fields[b"rchar"]) + int(fields[b"wchar"])
        except (OSError, ValueError, KeyError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return counts


async def _watched(work: Awaitable, pgid: int, stall: float):
    """Await work; raise Stalled once the process group has moved no more than
    STALL_NOISE bytes in any check for `stall` seconds. Its I/O counters, not
    its output: a compare prints nothing for minutes while it reads."""
    task = asyncio.ensure_future(work)
    interval = min(1.0, stall / 4)
    seen = _group_io(pgid)
    quiet_since = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            now = _group_io(pgid)
            moved = sum(max(0, count - seen.get(pid, 0)) for pid, count in now.items())
            seen = now
            if moved > STALL_NOISE:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= stall:
                raise Stalled(stall)
    finally:
        task.cancel()  # nothing if it finished


async def _finish(pumps: asyncio.Future, proc: asyncio.subprocess.Process) -> tuple[int, list[int | None]]:
    """The exit status, and what each pump dropped of over-long lines."""
    dropped = await pumps
    return await proc.wait(), dropped


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
              on_stdout_bytes: Callable[[bytes], None] | None = None, stall: float | None = None,
              pass_fds: Sequence[int] = (), on_spawn: Callable[[int], None] | None = None,
              stdin: int | None = None, stdout: int | None = None) -> Result:
    """Run argv to completion. stdout goes line by line to on_stdout, or, with
    on_stdout_bytes, in chunks as it gathers (unsplit: the reader frames and
    bounds it), or to the descriptor `stdout` (a pipe the caller reads on a
    thread of its own: a stream too large to pass through the event loop);
    `stdin`: a descriptor to read from instead of nothing. The caller closes
    its copies of those two once the child runs (on_spawn). Cancelling the
    calling task stops the process group; so does `stall` seconds without I/O
    progress, raising Stalled. pass_fds: more descriptors the child inherits;
    on_spawn gets its pid once it runs."""
    argv = [str(a) for a in argv]
    log.debug("exec", argv=argv)
    pipe = _ChunkPipe() if on_stdout_bytes else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *_DEATH_SIGNAL, *argv, stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
            stdout=pipe.write_end if pipe else asyncio.subprocess.PIPE if stdout is None else stdout,
            stderr=asyncio.subprocess.PIPE, process_group=0, env=env, cwd=cwd,
            pass_fds=tuple(pass_fds),
        )
    except BaseException:
        if pipe:
            pipe.close()
        raise
    if on_spawn:
        on_spawn(proc.pid)
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    if pipe:
        pipe.spawned()
    reading = pipe.read(on_stdout_bytes) if pipe else _pump(proc.stdout, on_stdout, None) if stdout is None \
        else _nothing()
    pumps = asyncio.gather(reading, _pump(proc.stderr, on_stderr, tail, STDERR_LINE_LIMIT))
    try:
        if stall and _IO_ACCOUNTING:
            returncode, dropped = await _watched(_finish(pumps, proc), proc.pid, stall)
        else:
            if stall:
                log.warning("exec.unwatched", reason="this kernel keeps no per-process I/O counters (/proc/PID/io)")
            returncode, dropped = await _finish(pumps, proc)
    except BaseException:
        await stop_group(proc, grace)
        pumps.cancel()
        raise
    finally:
        if pipe:
            pipe.close()
    return _result(argv, returncode, tail, dropped)


async def _nothing() -> None:
    """The pump of an output the caller reads itself."""


def _result(argv: list[str], returncode: int, tail: deque, dropped: list[int | None]) -> Result:
    cut = sum(filter(None, dropped))
    if cut:
        log.warning("exec.lines_cut", program=os.path.basename(argv[0]), bytes_not_kept=cut)
    return Result(argv, returncode, list(tail), cut)

