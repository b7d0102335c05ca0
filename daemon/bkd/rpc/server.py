"""JSON-RPC 2.0 over a Unix stream socket, one JSON object per line.

Each request runs as its own task, so a slow call never blocks a fast one on
the same connection; a client that sends garbage or stops reading only ever
hurts its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
import stat
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from bkctl import protocol
from .. import access
from ..config.models import Access
from ..errors import RpcError
from .methods import Method

log = structlog.get_logger()

WRITE_TIMEOUT = 30.0  # a client that does not read its answers for this long is dropped
DROP_GRACE = 30.0  # seconds a dropped client gets to read what is buffered and its last notice


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", creds))


class Connection:
    """One client connection: serialised writes, and the event streams it owns."""

    def __init__(self, writer: asyncio.StreamWriter, peer: Peer):
        self.writer = writer
        self.peer = peer
        self._write_lock = asyncio.Lock()
        self._streams: set[asyncio.Task] = set()
        self._on_close: list[Callable[[], None]] = []

    async def send(self, message: dict) -> None:
        async with self._write_lock:
            self.writer.write(protocol.encode(message))
            await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    def stream(self, coroutine, on_close: Callable[[], None]) -> None:
        """Run coroutine (an event pump) for as long as the connection lives."""
        task = asyncio.create_task(coroutine)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        self._on_close.append(on_close)

    def limit_buffering(self, size: int) -> None:
        """Keep what the kernel and the transport buffer small, so that a client
        that stops reading is noticed after a few events, not a few megabytes."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        self.writer.transport.set_write_buffer_limits(high=size)

    def drop(self, notice: dict) -> None:
        """Give up on a client: queue a last message and close once it is read;
        a client that reads nothing more is cut off after DROP_GRACE."""
        self.close_streams()
        with contextlib.suppress(Exception):
            self.writer.write(protocol.encode(notice))
            self.writer.close()
        asyncio.get_running_loop().call_later(DROP_GRACE, self.writer.transport.abort)

    def close_streams(self) -> None:
        for task in list(self._streams):
            task.cancel()
        while self._on_close:
            self._on_close.pop()()


def _error(request_id, code: int, message: str, data: dict | None = None) -> dict:
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _params_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "params"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{field}: {message}")
    return "invalid params: " + "; ".join(parts)


def bind_socket(path: Path) -> socket.socket:
    """Bind path as a 0660 socket, under a umask so it is never wider, not even
    for an instant. Refuses to replace anything that is not a stale socket."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    parent = path.parent.stat()
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        raise RuntimeError(f"refusing to create the socket in world-writable {path.parent}")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink()  # left behind by a daemon that died
        else:
            raise RuntimeError(f"another bkd is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    try:
        os.chown(path, -1, grp.getgrnam("bkd").gr_gid)
    except KeyError:
        pass  # no bkd group: the socket keeps the daemon's own group
    sock.listen(64)
    sock.setblocking(False)
    return sock


class RpcServer:
    def __init__(self, path: Path, methods: dict[str, Method], access: Callable[[], Access],
                 audit: Callable[..., Awaitable[None]]):
        self.path = path
        self.methods = methods
        self.access = access  # the current [access] section: it changes on reload
        self.audit = audit
        self._server: asyncio.base_events.Server | None = None
        self.closing = False

    async def start(self, sock: socket.socket | None = None) -> None:
        sock = sock or bind_socket(self.path)
        # +1 for the newline: a line of exactly MAX_LINE bytes is allowed.
        self._server = await asyncio.start_unix_server(self._serve_client, sock=sock,
                                                       limit=protocol.MAX_LINE + 1)

    async def close(self) -> None:
        self.closing = True
        if self._server:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer, peer_of(writer.get_extra_info("socket")))
        pending: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await conn.send(_error(None, protocol.INVALID_REQUEST,
                                           f"request too large (limit {protocol.MAX_LINE} bytes)"))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                task = asyncio.create_task(self._answer(line, conn))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            conn.close_streams()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes, conn: Connection) -> None:
        try:
            response, then = await self.dispatch(line, conn)
        except Exception:  # a bug in the plumbing still gets an answer, never silence
            incident = uuid.uuid4().hex[:12]
            log.exception("rpc.internal_error", incident=incident)
            response, then = _error(None, protocol.INTERNAL_ERROR,
                                    f"internal error (incident {incident}; see the daemon's log)",
                                    {"incident": incident}), None
        if response is not None:
            try:
                await conn.send(response)
            except (ConnectionError, asyncio.TimeoutError):
                return
        if then is not None:
            then()

    async def dispatch(self, line: bytes, conn: Connection) -> tuple[dict | None, Callable | None]:
        """The response to one request line (None for a notification), and what to
        start once it has been sent (a subscription's event stream)."""
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return _error(None, protocol.PARSE_ERROR, f"parse error: {e}"), None
        if isinstance(message, list):
            return _error(None, protocol.INVALID_REQUEST, "batches are not supported"), None
        if not isinstance(message, dict):
            return _error(None, protocol.INVALID_REQUEST, "a request must be a JSON object"), None
        request_id = message.get("id")
        if not isinstance(request_id, (str, int, type(None))) or isinstance(request_id, bool):
            return _error(None, protocol.INVALID_REQUEST, "id must be a string, a number or null"), None
        method_name = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(method_name, str):
            return _error(request_id, protocol.INVALID_REQUEST,
                          'a request needs "jsonrpc": "2.0" and a string "method"'), None
        is_notification = "id" not in message
        response, then = await self._call(method_name, message.get("params"), request_id, conn)
        return (None if is_notification else response), then

    async def _call(self, method_name: str, raw_params, request_id, conn: Connection):
        method = self.methods.get(method_name)
        if method is None:
            return _error(request_id, protocol.METHOD_NOT_FOUND, f"unknown method: {method_name}"), None
        if self.closing:
            return _error(request_id, protocol.SHUTTING_DOWN, "the daemon is shutting down"), None
        peer = conn.peer
        role = access.role_of(peer.uid, peer.gid, peer.pid, self.access())
        if not access.allowed(role, method.role):
            who = f"{access.user_name(peer.uid)} (uid {peer.uid})"
            error = _error(request_id, protocol.PERMISSION_DENIED,
                           f"permission denied: {method_name} needs the {method.role} role; "
                           f"{who} has {'the ' + role + ' role' if role else 'no role'}")
            return await self._audited(method, method_name, raw_params, conn, error), None
        if raw_params is None:
            raw_params = {}
        if not isinstance(raw_params, dict):
            return _error(request_id, protocol.INVALID_PARAMS,
                          "invalid params: params must be an object (named parameters)"), None
        try:
            params = method.params.model_validate(raw_params)
        except ValidationError as e:
            return _error(request_id, protocol.INVALID_PARAMS, _params_error(e)), None
        response, then = await self._invoke(method, method_name, params, request_id, conn)
        return await self._audited(method, method_name, raw_params, conn, response), then

    async def _audited(self, method: Method, name: str, params, conn: Connection, response: dict) -> dict:
        """Every call that changes something is written to the audit log, refused ones too."""
        if method.mutating:
            error = response.get("error")
            outcome = f"error {error['code']}: {error['message']}" if error else "ok"
            peer = conn.peer
            await self.audit(peer.uid, access.user_name(peer.uid), peer.pid, name,
                             params if isinstance(params, dict) else {"params": params}, outcome)
        return response

    async def _invoke(self, method: Method, method_name: str, params, request_id, conn: Connection):
        then = None
        try:
            if method.streams:
                result, then = await method.handler(params, conn)
            else:
                result = await method.handler(params)
        except RpcError as e:
            return _error(request_id, e.code, e.message, e.data), None
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("rpc.internal_error", method=method_name, incident=incident, uid=conn.peer.uid)
            return _error(request_id, protocol.INTERNAL_ERROR,
                          f"internal error (incident {incident}; see the daemon's log)",
                          {"incident": incident}), None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}, then
