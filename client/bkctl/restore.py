"""The caller's half of a local restore (standard library only).

bkctl looks at DEST as the caller, asks the daemon to restore, and runs the
receiving rsync itself — as the caller, in the caller's mount namespace, so
it writes only where the caller could — with a remote shell that is bkctl
again (`restore-transport`): that connects to the daemon's socket, attaches
to the restore with its one-time token and carries the rsync protocol to and
from the sender the daemon runs in the snapshot."""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
from collections import deque

from . import protocol
from .client import Client
from .fmt import safe


def components(path: str) -> list[bytes]:
    """PATH's components (the daemon refuses '..'; probe() never follows one)."""
    return [p for p in os.fsencode(path or "/").split(b"/") if p not in (b"", b".")]


def probe(dest: str, parts: list[bytes]) -> dict:
    """What exists under DEST along PATH (D dir, F other, L symlink, N none),
    looked at as the caller, without following symlinks."""
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
    empty = kinds[0] != "D" or not os.listdir(dest)
    return {"kinds": kinds, "dest_empty": empty, "realpath": os.path.realpath(dest)}


def _bkctl() -> list[str]:
    """This very bkctl, as rsync's remote shell: the command it was started as
    (the package's launcher sets up its private tree), else this Python."""
    started_as = os.path.abspath(sys.argv[0])
    if os.path.basename(started_as) == "bkctl" and os.access(started_as, os.X_OK):
        return [started_as]
    return [sys.executable, "-m", "bkctl"]


def receive(socket_path: str, receive_spec: dict, dest: str) -> dict:
    """Run the receiving rsync; return what restore.finish reports."""
    into = os.path.join(os.fsencode(dest), os.fsencode(receive_spec["into"])) if receive_spec["into"] \
        else os.fsencode(dest)
    try:
        before = os.lstat(into)  # creating entries changes its mtime: it is put back afterwards
    except FileNotFoundError:
        before = None
    transport = shlex.join([*_bkctl(), "--socket", socket_path, "restore-transport", receive_spec["token"]])
    argv = ["rsync", *receive_spec["options"], "-e", transport, "--",
            *(f"bkd:{source}" for source in receive_spec["sources"]), os.fsdecode(into).rstrip("/") + "/"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    names, stderr = [], deque(maxlen=40)

    def read_stderr() -> None:
        for line in proc.stderr:
            stderr.append(line.decode("utf-8", "surrogateescape").rstrip("\n"))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stats_started = False
    for raw in proc.stdout:
        line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        if line.startswith("Number of files: "):
            stats_started = True
        if line and not stats_started:
            names.append(line.split(" ", 1)[-1])
    returncode = proc.wait()
    reader.join()
    if before is not None and "--dry-run" not in receive_spec["options"]:
        try:
            os.utime(into, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)
        except OSError:
            pass
    return {"token": receive_spec["token"], "returncode": returncode, "written": len(names),
            "stderr": list(stderr), "names": names}


def report(socket_path: str, timeout: float, outcome: dict) -> None:
    with Client(socket_path, timeout) as client:
        client.call("restore.finish", {k: outcome[k] for k in ("token", "returncode", "written", "stderr")})


def transport(socket_path: str, token: str) -> int:
    """rsync's remote shell for a local restore: attach, then relay bytes
    between rsync (our stdin/stdout) and the daemon's sender (the socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as e:
        print(f"bkctl restore-transport: cannot reach bkd at {safe(socket_path)}: {e.strerror or e}", file=sys.stderr)
        return 3
    sock.sendall(protocol.encode(protocol.request(protocol.Method.RESTORE_STREAM, {"token": token}, 1)))
    buffered = b""
    while b"\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            print("bkctl restore-transport: bkd closed the connection", file=sys.stderr)
            return 3
        buffered += chunk
    line, rest = buffered.split(b"\n", 1)
    answer = json.loads(line)
    if "error" in answer:
        print(f"bkctl restore-transport: {safe(str(answer['error']['message']))}", file=sys.stderr)
        return 1
    # rsync may hand us non-blocking descriptors; a short write must never lose bytes.
    for fd in (0, 1):
        os.set_blocking(fd, True)

    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]

    write_all(rest)

    def upstream() -> None:  # rsync → the sender
        try:
            while chunk := os.read(0, 65536):
                sock.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while chunk := sock.recv(65536):
            write_all(chunk)
    except OSError:
        return 1
    return 0

