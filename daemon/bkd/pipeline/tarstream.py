"""Reading an archive's tar stream: its decompressor runs through the one
subprocess wrapper, and what it writes is read on a thread of its own (a
stream of gigabytes does not pass through the event loop). Three readers:
the index written beside the archive (every entry and where its bytes lie),
a restore's extraction (only the byte ranges the index names, into tar -x,
and the stream is closed once past them), and verify (each file's SHA-256
against the manifest of the snapshot the archive was made from)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import structlog

from ..infra import exec as bkexec
from ..infra.errors import InvalidArgument
from ..infra.threads import in_own_thread
from ..tree import archiveindex, copies, relpath
from ..tree.archiveindex import Entry
from ..tree.layout import ArchiveFile

log = structlog.get_logger()

T = TypeVar("T")
CHUNK = 1 << 20
DECOMPRESSORS = {".zst": ["zstd", "-d", "-c", "-q"], ".gz": ["gzip", "-d", "-c"]}
# How tar -x writes a restore's staging copy: what the archive kept, as it was.
EXTRACT = ["tar", "--extract", "--file=-", "--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*",
           "--sparse", "--same-permissions"]
_TYPES = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.CONTTYPE: "f", tarfile.DIRTYPE: "d",
          tarfile.SYMTYPE: "l", tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b",
          tarfile.FIFOTYPE: "p"}


class ArchiveUnreadable(Exception):
    """The archive could not be read to the end (damaged, or its tool failed); the message says why."""


def decompressor(archive: Path) -> list[str]:
    return [*DECOMPRESSORS[archive.suffix], "--", str(archive)]


async def read(archive: Path, reader: Callable[[BinaryIO], T], whole: bool = True) -> T:
    """reader(stream) on a thread of its own, stream being the archive's tar
    stream as its decompressor writes it. With whole, the stream is read to
    its end and the decompressor must succeed; else the reader may stop
    early (the decompressor is then stopped by the closed pipe). Cancelling
    stops the decompressor, and with it the reader."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    stream = os.fdopen(read_end, "rb", buffering=CHUNK)

    def reading() -> T:
        with stream:  # closing it stops a decompressor that has more to say
            result = reader(stream)
            while whole and stream.read(CHUNK):
                pass  # the padding after tar's end: the tool's outcome counts only once it wrote everything
            return result

    tool = _running(decompressor(archive), stdout=write_end)
    try:
        result = await in_own_thread(reading)
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        try:
            done = await tool
        except OSError as started:
            raise ArchiveUnreadable(f"{archive.name}: cannot run {decompressor(archive)[0]}: {started}") from None
        raise ArchiveUnreadable(_failure(archive, done) or f"{archive.name}: {e}") from None
    except BaseException:
        tool.cancel()  # the reader then sees the stream end, and ends
        await asyncio.gather(tool, return_exceptions=True)
        raise
    done = await tool
    if done.returncode != 0 and (whole or done.returncode != -signal.SIGPIPE):
        raise ArchiveUnreadable(_failure(archive, done))
    return result


def _running(argv: list[str], **fds: int) -> asyncio.Future:
    """Run argv with the given end of a pipe (stdin= or stdout=) as its own:
    our copy is closed once the child has it, or once it failed to start
    (so that the other end sees the pipe end, not a hang)."""
    (fd,) = fds.values()
    closed: list[bool] = []

    def close(*_) -> None:
        if not closed:
            closed.append(True)
            os.close(fd)

    task = asyncio.ensure_future(bkexec.run(argv, on_spawn=close, **fds))
    task.add_done_callback(close)
    return task


def _failure(archive: Path, done: bkexec.Result) -> str | None:
    if done.returncode == 0:
        return None
    said = done.stderr_tail[-1] if done.stderr_tail else f"exit {done.returncode}"
    return f"{archive.name}: {os.path.basename(done.argv[0])} failed: {said}"


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The exact mtime a pax header records (seconds.nanoseconds), else the header's seconds."""
    text = member.pax_headers.get("mtime")
    if text:
        whole, _, fraction = text.partition(".")
        try:
            return int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])
        except ValueError:
            pass
    return int(member.mtime * 1_000_000_000)


def _relative(name: str, where: str) -> bytes:
    raw = os.fsencode(name)
    while raw.startswith(b"./"):
        raw = raw[2:]
    raw = raw.rstrip(b"/")
    return b"" if raw in (b"", b".") else relpath.check(raw, where)


def entries_of(stream: BinaryIO, where: str = "archive") -> list[Entry]:
    """Every entry of a tar stream, in its order, with the byte range each one takes."""
    entries: list[Entry] = []
    pending = None
    archive = tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape")
    for member in archive:
        if pending is not None:
            entries.append(pending._replace(end=member.offset))
        kind = _TYPES.get(member.type)
        if kind is None:  # a type bkd's archives never hold: kept out of the index, not misread
            pending = None
            continue
        link = _relative(member.linkname, where) if kind == "h" else os.fsencode(member.linkname) if kind == "l" \
            else b""
        pending = Entry(kind, member.mode & 0o7777, member.uid, member.gid, member.size if kind != "h" else 0,
                        _mtime_ns(member), member.offset, member.offset, _relative(member.name, where), link)
    if pending is not None:
        entries.append(pending._replace(end=archive.offset))
    return entries


async def write_index(archive: ArchiveFile) -> int:
    """Read the archive once and write its index beside it; how many entries it holds."""
    entries = await read(archive.path, lambda stream: entries_of(stream, archive.name))
    await asyncio.to_thread(archiveindex.write, archive.index, entries)
    return len(entries)


_building: dict[Path, asyncio.Lock] = {}  # archives whose index is being built now


async def index_of(archive: ArchiveFile) -> archiveindex.ArchiveTree:
    """The archive's index as a tree; an archive made before bkd wrote them
    gets its index now, once (a second caller meanwhile waits for it)."""
    entries = await asyncio.to_thread(_read_index, archive)
    if entries is None:
        async with _building.setdefault(archive.path, asyncio.Lock()):
            entries = await asyncio.to_thread(_read_index, archive)
            if entries is None:
                log.info("archive.indexing", archive=archive.name)
                await write_index(archive)
                entries = await asyncio.to_thread(_read_index, archive)
        _building.pop(archive.path, None)  # whoever comes next finds the index written
    return archiveindex.ArchiveTree(entries or [])


def _read_index(archive: ArchiveFile) -> list[Entry] | None:
    """The index's entries; None when it is missing or damaged (it is rebuilt from the archive)."""
    try:
        return archiveindex.read(archive.index)
    except archiveindex.IndexRefused as e:
        log.warning("archive.index_refused", archive=archive.name, error=str(e))
        return None


# ---- a restore: only the ranges asked for, into tar -x ----------------------------------

PROGRESS_EVERY = 0.5  # seconds between two reports of an extraction's progress


def _copy_ranges(stream: BinaryIO, ranges: list[tuple[int, int]], out_fd: int,
                 report: Callable[[int], None] | None = None) -> int:
    """Copy ranges (sorted, disjoint) of stream to out_fd; stop reading after
    the last one. Returns the bytes copied; report(bytes read so far) now and then."""
    position, copied, reported = 0, 0, time.monotonic()
    buffer = memoryview(bytearray(CHUNK))
    with open(out_fd, "wb", buffering=0, closefd=True) as out:
        for start, end in ranges:
            while position < end:
                want = min(CHUNK, end - position) if position >= start else min(CHUNK, start - position)
                count = stream.readinto(buffer[:want])
                if not count:
                    raise EOFError(f"the archive ends at byte {position}, before the entries asked for")
                if position >= start:
                    out.write(buffer[:count])
                    copied += count
                position += count
                if report is not None and time.monotonic() - reported >= PROGRESS_EVERY:
                    reported = time.monotonic()
                    report(position)
    return copied


async def extract(archive: ArchiveFile, ranges: list[tuple[int, int]], into: Path,
                  on_progress: Callable[[int, int], None] | None = None) -> int:
    """Write the entries in ranges of the archive's tar stream under into
    (an empty private directory), as tar -x does; the bytes of the stream
    copied. on_progress(read, up to) on the event loop as the stream is read."""
    loop = asyncio.get_running_loop()
    last = ranges[-1][1] if ranges else 0
    report = (lambda read: loop.call_soon_threadsafe(on_progress, read, last)) if on_progress else None
    tar_in, feed = os.pipe2(os.O_CLOEXEC)  # feed: the reading thread's, closed by it
    untar = _running([*EXTRACT, f"--directory={into}"], stdin=tar_in)
    try:
        copied = await read(archive.path, lambda stream: _copy_ranges(stream, ranges, feed, report), whole=False)
    except BaseException:
        untar.cancel()
        await asyncio.gather(untar, return_exceptions=True)
        raise
    done = await untar
    if done.returncode != 0:
        raise ArchiveUnreadable(_failure(archive.path, done))
    return copied


# ---- verify: each file's content against the snapshot's manifest ------------------------------

def _hash_members(stream: BinaryIO, where: str) -> dict[bytes, tuple[str, int]]:
    """path → (SHA-256, size) of every regular file the stream holds (a hard link has its target's)."""
    found: dict[bytes, tuple[str, int]] = {}
    archive = tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape")
    for member in archive:
        path = _relative(member.name, where)
        if member.islnk():
            target = found.get(_relative(member.linkname, where))
            if target is not None:
                found[path] = target
        elif member.isreg():
            digest, data = hashlib.sha256(), archive.extractfile(member)
            while chunk := data.read(CHUNK):
                digest.update(chunk)
            found[path] = (digest.hexdigest(), member.size)
    return found


async def check_content(archive: ArchiveFile, recorded: dict[bytes, tuple[str, int]]) -> tuple[int, list[dict]]:
    """Each regular file of the archive against the manifest of its snapshot:
    (files checked, mismatches as verify reports them: missing, extra, changed)."""
    found = await read(archive.path, lambda stream: _hash_members(stream, archive.name))
    mismatches = []
    for path in sorted(found.keys() | recorded.keys()):
        have, want = found.get(path), recorded.get(path)
        shown = os.fsdecode(path)
        if want is None:
            mismatches.append({"path": shown, "problem": "extra"})
        elif have is None:
            mismatches.append({"path": shown, "problem": "missing"})
        elif have[0] != want[0]:
            mismatches.append({"path": shown, "problem": "changed", "expected": want[0], "actual": have[0]})
    return len(found.keys() & recorded.keys()), mismatches


async def tree_of(copy: copies.Copy) -> copies.Tree:
    """What browse and restore look into: a copy's directory, or an archive's index."""
    if copy.kind != copies.ARCHIVE:
        return copies.directory_tree(copy)
    try:
        return await index_of(copy.archive)
    except ArchiveUnreadable as e:
        raise InvalidArgument(f"invalid params: snapshot: {copy.ref} cannot be read: {e}") from None
