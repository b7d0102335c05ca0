"""The caller's half of a local restore (standard library only).

bkctl looks at DEST as the caller and holds open the directory the restore
will write under, so that a DEST swapped for something else afterwards is
not where the data lands. It tells the daemon what it found: which
directories of DEST/PATH exist, the identity (device, inode) of the
directory it writes under and of each of its parents, and that directory's
place in its filesystem (mounts.py), so that the daemon can refuse its own
directories by whatever path they are reached (a symlink, a bind mount of
them or of a directory inside them). The daemon's rsync is the sender; bkctl attaches to the
restore (`restore.stream`), gets the receiver's command line and the two
ends of the sender's connection (SCM_RIGHTS), and runs the receiving
`rsync --server` on them itself — as the caller, in the caller's mount
namespace, in the directory it holds — so it writes only where the caller
could, and the two rsyncs talk directly."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import mounts, protocol

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PLACE = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # to stand in, look up and fstat: search permission is enough
MAX_ANCESTORS = 4096  # the daemon accepts this many (deeper directories cannot be reached by a path anyway)
MAX_HANDOFF = 1024 * 1024  # bytes of the attach connection read at most
STDERR_LINES = 40


class ReceiveFailed(Exception):
    pass


def components(path: str) -> list[bytes]:
    """PATH's components (the daemon refuses '..'; look() never follows one)."""
    return [p for p in os.fsencode(path or "/").split(b"/") if p not in (b"", b".")]


@dataclass
class Destination:
    """DEST as the caller saw it, held open until the restore has run."""

    dest: str
    kinds: list[str]  # for DEST, DEST/c1, … DEST/PATH: D directory, F other, L symlink, N none
    dest_empty: bool
    held: int  # DEST itself when it is a directory, else its deepest existing parent
    missing: bytes  # DEST relative to `held` when DEST does not exist yet (b"" when it does)
    ancestors: list[list[int]]
    location: tuple[int, str] | None  # of the directory written under, in its filesystem (mounts.location)

    def receiver(self) -> dict:
        """The `receiver` params of the restore call."""
        where = {"dev": self.location[0], "path": self.location[1]} if self.location else None
        return {"kinds": self.kinds, "dest_empty": self.dest_empty, "ancestors": self.ancestors, "location": where,
                "missing": os.fsdecode(self.missing)}

    def close(self) -> None:
        os.close(self.held)


def look(dest: str, parts: list[bytes]) -> Destination:
    """What exists under DEST along PATH, looked at as the caller without
    following symlinks below DEST; the directory written under is held open."""
    kinds = []
    current = os.fsencode(dest)
    for part in [b"", *parts]:
        if part == b"..":
            break
        current = os.path.join(current, part) if part else current
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            kinds.append("N")
            break
        kinds.append("L" if stat.S_ISLNK(mode) else "D" if stat.S_ISDIR(mode) else "F")
        if kinds[-1] != "D":
            break
    kinds += ["N"] * (len(parts) + 1 - len(kinds))
    if kinds[0] == "D":
        held, missing = os.open(dest, _DIRECTORY | os.O_NOFOLLOW), b""
        existing = 0
        while existing < len(parts) and kinds[existing + 1] == "D":
            existing += 1
        try:
            deepest = _walk(held, parts[:existing], _PLACE)
        except OSError:
            os.close(held)
            raise
    else:  # written under its deepest existing parent (the daemon refuses a DEST that is a file or a symlink)
        held, missing = _deepest_parent(os.fsencode(dest))
        deepest = os.dup(held)
    try:
        ancestors, location = _ancestors(deepest), mounts.location(deepest)
        empty = kinds[0] != "D" or not os.listdir(held)
    except OSError:
        os.close(held)
        raise
    finally:
        os.close(deepest)
    return Destination(dest, kinds, empty, held, missing, ancestors, location)


def _walk(fd: int, names: list[bytes], flags: int = _DIRECTORY) -> int:
    """A new descriptor for fd/names, each step a directory, never a symlink."""
    current = os.dup(fd)
    for name in names:
        try:
            child = os.open(name, flags | os.O_NOFOLLOW, dir_fd=current)
        finally:
            os.close(current)
        current = child
    return current


def _deepest_parent(dest: bytes) -> tuple[int, bytes]:
    """The deepest existing directory above a DEST that does not exist, and DEST relative to it."""
    missing = []
    current = dest
    while True:
        current, name = os.path.split(current)
        missing.insert(0, name)
        try:
            return os.open(current, _PLACE), os.path.join(*missing)
        except FileNotFoundError:
            continue


def _ancestors(fd: int) -> list[list[int]]:
    """(st_dev, st_ino) of the directory fd and of each of its parents up to /
    ('..' of a mount's root is the directory it is mounted on)."""
    chain, current = [], os.dup(fd)
    try:
        while len(chain) < MAX_ANCESTORS:
            st = os.fstat(current)
            identity = [st.st_dev, st.st_ino]
            if chain and chain[-1] == identity:  # '..' of / is / itself
                break
            chain.append(identity)
            try:
                parent = os.open("..", _PLACE, dir_fd=current)
            except PermissionError:  # no search permission: nothing below can be reached by the caller
                break
            os.close(current)
            current = parent
    finally:
        os.close(current)
    return chain


def receive(socket_path: str, spec: dict, destination: Destination, dry_run: bool,
            on_start: Callable[[subprocess.Popen], None] = lambda proc: None) -> dict:
    """Attach to the restore, run the receiving rsync on the sender's connection
    and return how it ended: {returncode, stderr}. on_start gets the receiver's process."""
    command, ends = attach(socket_path, spec["token"])
    try:
        workdir = _workdir(destination, os.fsencode(spec["into"]))
    except (OSError, ReceiveFailed) as e:
        for fd in ends:
            os.close(fd)  # the sender sees the connection end at once
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise ReceiveFailed(f"cannot write under {destination.dest}: {reason}") from None
    try:
        before = os.fstat(workdir)  # creating entries changes its mtime: it is put back afterwards
        outcome = _run(command, ends, workdir, on_start)
        if not destination.missing and not dry_run:
            try:
                os.utime(workdir, ns=(before.st_atime_ns, before.st_mtime_ns))
            except OSError:
                pass
        return outcome
    finally:
        os.close(workdir)


def _workdir(destination: Destination, into: bytes) -> int:
    """The directory the receiver runs in: held since DEST was looked at (DEST,
    or the deepest parent of a DEST not there yet), or DEST/INTO reached from
    it without following a symlink. (The daemon names the rest of the way.)"""
    if destination.missing:
        return os.dup(destination.held)
    workdir = _walk(destination.held, [p for p in into.split(b"/") if p])
    st = os.fstat(workdir)
    if [st.st_dev, st.st_ino] not in destination.ancestors:
        os.close(workdir)
        raise ReceiveFailed("it changed since it was looked at")
    return workdir


def attach(socket_path: str, token: str) -> tuple[list[str], list[int]]:
    """The receiver's command line and its two ends of the sender's connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data, fds, answer = b"", [], None
    try:
        sock.connect(socket_path)
        sock.sendall(protocol.encode(protocol.request(protocol.Method.RESTORE_STREAM, {"token": token}, 1)))
        # Every read takes descriptors too: the answer and the handoff may come in one.
        while data.count(b"\n") < 2 and len(data) < MAX_HANDOFF:
            chunk, received, _flags, _address = socket.recv_fds(sock, 65536, 2)
            fds += received
            if not chunk:
                break
            data += chunk
            if answer is None and b"\n" in data:
                answer = _json(data.split(b"\n", 1)[0])
                if "error" in answer:  # refused: the connection stays bkd's to close
                    raise ReceiveFailed(str(answer["error"].get("message") if isinstance(answer["error"], dict)
                                            else answer["error"]))
    except OSError as e:
        _close(fds)
        raise ReceiveFailed(f"cannot reach bkd at {socket_path}: {e.strerror or e}") from None
    except ReceiveFailed:
        _close(fds)
        raise
    finally:
        sock.close()
    lines = data.split(b"\n")
    command = _json(lines[1]).get("receiver") if len(lines) > 2 else None
    if len(fds) != 2 or not _is_receiver(command):
        _close(fds)
        raise ReceiveFailed("bkd ended the restore before its data was sent (see the job)")
    return command, fds


def _json(line: bytes) -> dict:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _is_receiver(command) -> bool:
    """An rsync server that receives: all bkctl ever runs for the daemon."""
    return (isinstance(command, list) and len(command) > 3 and all(isinstance(a, str) for a in command)
            and command[:2] == ["rsync", "--server"] and "--sender" not in command)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _run(command: list[str], ends: list[int], workdir: int, on_start: Callable[[subprocess.Popen], None]) -> dict:
    """The receiving `rsync --server …` in workdir, on the sender's connection."""
    try:
        proc = subprocess.Popen(command, stdin=ends[0], stdout=ends[1], stderr=subprocess.PIPE,
                                cwd=f"/proc/self/fd/{workdir}", pass_fds=(workdir,))
    except OSError as e:
        raise ReceiveFailed(f"cannot run rsync: {e.strerror or e}") from None
    finally:
        _close(ends)
    on_start(proc)
    stderr: deque[str] = deque(maxlen=STDERR_LINES)

    def read_stderr() -> None:
        for line in proc.stderr:
            stderr.append(line[:1000].decode("utf-8", "surrogateescape").rstrip("\n"))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    returncode = proc.wait()
    reader.join()
    return {"returncode": returncode, "stderr": list(stderr)}
