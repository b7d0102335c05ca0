"""A blocking JSON-RPC client for bkd's Unix socket (standard library only)."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import deque

from . import protocol
from .fmt import safe_tree


BUSY_RETRIES = (0.1, 0.2, 0.5, 1.0, 2.0)  # seconds before each new try of a call refused with -32006


class Unreachable(Exception):
    """The daemon's socket cannot be reached (exit code 3)."""


class RemoteError(Exception):
    """The daemon answered with a JSON-RPC error (exit code 1)."""

    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _exact(value):
    return value


class Client:
    """escape: every string of an answer, an event or an error arrives made safe
    for a terminal (fmt.safe) — for human output, where what a host printed or
    another user wrote must not reach the terminal raw; `call(..., exact=True)`
    for an answer that is used, not shown. Without it (--json) values are exact."""

    def __init__(self, path: str, timeout: float | None = 30.0, escape: bool = False):
        self.path = path
        self._shown = safe_tree if escape else _exact
        self._ids = itertools.count(1)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise Unreachable(self._shown(_unreachable(path, e))) from None
        self._reader = self._sock.makefile("rb")
        self._backlog: deque[dict] = deque()  # events that arrived while waiting for an answer

    def close(self) -> None:
        # shutdown first: it wakes a thread blocked reading this socket, which
        # would otherwise hold the reader's lock and make close() wait forever.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, params: dict | None = None, exact: bool = False) -> dict:
        """The method's result (exact: as the daemon sent it; else with control
        characters made visible, for people). A call refused because the
        method's own concurrency limit is reached (-32006: try again) is tried
        again a few times, a little later each time, before the error is raised."""
        for delay in BUSY_RETRIES:
            try:
                return self._call_once(method, params, exact)
            except RemoteError as e:
                if e.code != protocol.ErrorCode.METHOD_BUSY:
                    raise
            time.sleep(delay)
        return self._call_once(method, params, exact)

    def _call_once(self, method: str, params: dict | None, exact: bool) -> dict:
        request_id = next(self._ids)
        try:
            self._sock.sendall(protocol.encode(protocol.request(method, params, request_id)))
            while True:
                message = self._read()
                if message.get("id") == request_id:
                    break
                if message.get("id") is None and "error" in message:
                    break  # an error the daemon could not tie to a request: still its answer
                if message.get("method") == "event":
                    self._backlog.append(message["params"])
        except socket.timeout:
            raise Unreachable(self._shown(f"bkd at {self.path} did not answer {method} in time")) from None
        except OSError as e:
            raise Unreachable(self._shown(f"lost the connection to bkd at {self.path}: {e.strerror or e}")) from None
        if "error" in message:
            error = self._shown(message["error"])
            raise RemoteError(error.get("code", 0), error.get("message", "unknown error"), error.get("data"))
        return message["result"] if exact else self._shown(message["result"])

    def set_timeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def subscribe(self, topics: list[str] | None = None, max_queue: int | None = None):
        """Subscribe on this connection; then iterate events() for the notifications."""
        params = {}
        if topics:
            params["topics"] = topics
        if max_queue:
            params["max_queue"] = max_queue
        return self.call("events.subscribe", params)

    def events(self, timeout: float | None = None):
        """Yield each event's params as it arrives (blocking). Ends when the daemon closes."""
        self._sock.settimeout(timeout)
        while True:
            if self._backlog:
                yield self._shown(self._backlog.popleft())
                continue
            try:
                message = self._read()
            except Unreachable:
                return
            except socket.timeout:
                raise Unreachable(self._shown(f"no event from bkd at {self.path} in {timeout}s")) from None
            except OSError as e:
                raise Unreachable(self._shown(f"lost the connection to bkd at {self.path}: {e.strerror or e}")) from None
            if message.get("method") == "event":
                yield self._shown(message["params"])

    def _read(self) -> dict:
        line = self._reader.readline()
        if not line:
            raise Unreachable(self._shown(f"bkd closed the connection at {self.path}"))
        return json.loads(line)


def _unreachable(path: str, error: OSError) -> str:
    """Why the socket cannot be reached, naming it (exit code 3)."""
    if isinstance(error, FileNotFoundError):
        return f"cannot reach bkd: socket {path} does not exist (is bkd running?)"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot reach bkd: connection to {path} refused (is bkd running?)"
    if isinstance(error, PermissionError):
        return f"cannot reach bkd: permission denied on {path} (are you in the bkd group?)"
    return f"cannot reach bkd at {path}: {error.strerror or error}"
