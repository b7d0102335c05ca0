"""A journal socket of the test's own: a Unix datagram socket bound where the
daemon is told to send (BKD_JOURNAL_SOCKET, with JOURNAL_STREAM naming its
stderr), collecting each entry as journald would receive it — in a datagram,
or in a sealed memfd passed alone (SCM_RIGHTS)."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path


def parse_entry(data: bytes) -> dict[str, bytes]:
    """The native protocol: KEY=value lines, or KEY, a 64-bit length and the value."""
    fields, at = {}, 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            at = end + 1
        else:
            key, (size,) = line, struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            at = end + 9 + size + 1
        fields[key.decode()] = value
    return fields


class FakeJournal:
    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict[str, bytes]] = []
        self.sealed: list[dict[str, bytes]] = []  # those that came in a memfd
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def env(self, stderr_file: Path) -> dict[str, str]:
        """What makes a daemon whose stderr is stderr_file log here."""
        stderr_file.touch()
        st = os.stat(stderr_file)
        return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "BKD_JOURNAL_SOCKET": str(self.path)}

    def _receive(self) -> None:
        while True:
            fds = array.array("i")
            try:
                data, ancdata, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
            except OSError:
                return
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            if fds:
                for fd in fds:
                    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK, "journald refuses an unsealed memfd"
                    with os.fdopen(fd, "rb") as f:
                        f.seek(0)  # the sender's offset is shared: journald reads (maps) it from the start
                        entry = parse_entry(f.read())
                    self.sealed.append(entry)
                    self.entries.append(entry)
            elif data:
                self.entries.append(parse_entry(data))

    def close(self) -> None:
        self.sock.close()
