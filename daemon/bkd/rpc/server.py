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
from bkctl.protocol import ErrorCode
from .. import access
from ..config.models import Access
from ..errors import Busy, Conflict, Denied, DomainError, InvalidArgument, NotFound, ShuttingDown
from .methods import Method

log = structlog.get_logger()

WRITE_TIMEOUT = 30.0  # a client that does not read its answers for this long is dropped
DROP_GRACE = 30.0  # seconds a dropped client gets to read what is buffered and its last notice


# The one table from domain errors to wire codes.
WIRE_CODES: dict[type[DomainError], ErrorCode] = {
    NotFound: ErrorCode.NOT_FOUND,
    Busy: ErrorCode.BUSY,
    Conflict: ErrorCode.CONFLICT,
    InvalidArgument: ErrorCode.INVALID_PARAMS,
    Denied: ErrorCode.PERMISSION_DENIED,
    ShuttingDown: ErrorCode.SHUTTING_DOWN,
}


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Call:
    """Who is calling, as a handler sees it."""

    uid: int
    gid: int
    pid: int
    user: str
    role: str
    conn: "Connection"


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
    error = {"code": int(code), "message": message}
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
        self._clients: set[asyncio.Task] = set()

    async def start(self, sock: socket.socket | None = None) -> None:
        sock = sock or bind_socket(self.path)
        # +1 for the newline: a line of exactly MAX_LINE bytes is allowed.
        self._server = await asyncio.start_unix_server(self._serve_client, sock=sock,
                                                       limit=protocol.MAX_LINE + 1)

    async def serve(self) -> None:
        """The supervised loop: serve until cancelled; a failure rebinds."""
        if self._server is None or not self._server.is_serving():
            await self.start()
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, end every connection and wait for its handlers, so
        that nothing runs against the state store once it is closed."""
        self.closing = True
        if self._server:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._clients.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer, peer_of(writer.get_extra_info("socket")))
        pending: set[asyncio.Task] = set()
        handed_over = False
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await conn.send(_error(None, ErrorCode.INVALID_REQUEST,
                                           f"request too large (limit {protocol.MAX_LINE} bytes)"))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                if self._takes_over(line):
                    # Answered here, in order: once it succeeds the connection is no longer ours.
                    response, then = await self.dispatch(line, conn)
                    if response is not None:
                        await conn.send(response)
                    if then is not None:
                        await asyncio.gather(*pending, return_exceptions=True)
                        handed_over = True
                        then(reader, writer)
                        return
                    continue
                task = asyncio.create_task(self._answer(line, conn))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            conn.close_streams()
            if pending:
                if self.closing:
                    for task in pending:
                        task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if not handed_over:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def _takes_over(self, line: bytes) -> bool:
        """A request for a method that takes the connection over (restore.stream)."""
        names = [name for name, method in self.methods.items() if method.takes_over]
        if not any(name.encode() in line for name in names):  # cheap: most lines are not
            return False
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return False
        return isinstance(message, dict) and message.get("method") in names

    async def _answer(self, line: bytes, conn: Connection) -> None:
        try:
            response, then = await self.dispatch(line, conn)
        except Exception:  # a bug in the plumbing still gets an answer, never silence
            response, then = _internal(_request_id(line), "rpc.internal_error"), None
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
            return _error(None, ErrorCode.PARSE_ERROR, f"parse error: {e}"), None
        except RecursionError:
            return _error(None, ErrorCode.PARSE_ERROR, "parse error: nested too deeply"), None
        if isinstance(message, list):
            return _error(None, ErrorCode.INVALID_REQUEST, "batches are not supported"), None
        if not isinstance(message, dict):
            return _error(None, ErrorCode.INVALID_REQUEST, "a request must be a JSON object"), None
        request_id = message.get("id")
        if not isinstance(request_id, (str, int, type(None))) or isinstance(request_id, bool):
            return _error(None, ErrorCode.INVALID_REQUEST, "id must be a string, a number or null"), None
        method_name = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(method_name, str):
            return _error(request_id, ErrorCode.INVALID_REQUEST,
                          'a request needs "jsonrpc": "2.0" and a string "method"'), None
        is_notification = "id" not in message
        response, then = await self._call(method_name, message.get("params"), request_id, conn)
        return (None if is_notification else response), then

    async def _call(self, method_name: str, raw_params, request_id, conn: Connection):
        method = self.methods.get(method_name)
        if method is None:
            return _error(request_id, ErrorCode.METHOD_NOT_FOUND, f"unknown method: {method_name}"), None
        if self.closing:
            return _error(request_id, ErrorCode.SHUTTING_DOWN, "the daemon is shutting down"), None
        peer = conn.peer
        role = access.role_of(peer.uid, peer.gid, peer.pid, self.access())
        if not access.allowed(role, method.role):
            who = f"{access.user_name(peer.uid)} (uid {peer.uid})"
            error = _error(request_id, ErrorCode.PERMISSION_DENIED,
                           f"permission denied: {method_name} needs the {method.role} role; "
                           f"{who} has {'the ' + role + ' role' if role else 'no role'}")
            return await self._audited(method, method_name, raw_params, conn, error), None
        if raw_params is None:
            raw_params = {}
        if not isinstance(raw_params, dict):
            return _error(request_id, ErrorCode.INVALID_PARAMS,
                          "invalid params: params must be an object (named parameters)"), None
        try:
            params = method.params.model_validate(raw_params)
        except ValidationError as e:
            return _error(request_id, ErrorCode.INVALID_PARAMS, _params_error(e)), None
        call = Call(peer.uid, peer.gid, peer.pid, access.user_name(peer.uid), role, conn)
        response, then = await self._invoke(method, method_name, params, request_id, call)
        return await self._audited(method, method_name, raw_params, conn, response), then

    async def _audited(self, method: Method, name: str, params, conn: Connection, response: dict) -> dict:
        """Every call that changes something is written to the audit log, refused ones too."""
        if method.mutating:
            error = response.get("error")
            outcome = f"error {error['code']}: {error['message']}" if error else "ok"
            peer = conn.peer
            try:
                await self.audit(peer.uid, access.user_name(peer.uid), peer.pid, name,
                                 params if isinstance(params, dict) else {"params": params}, outcome)
            except Exception as e:  # the journal still has it; the caller still gets the answer
                log.error("audit.unrecorded", method=name, uid=peer.uid, outcome=outcome, error=str(e))
        return response

    async def _invoke(self, method: Method, method_name: str, params, request_id, call: Call):
        then = None
        try:
            if method.streams or method.takes_over:
                result, then = await method.handler(params, call)
            else:
                result = await method.handler(params, call)
        except DomainError as e:
            return _error(request_id, WIRE_CODES[type(e)], e.message, e.data), None
        except Exception:
            return _internal(request_id, "rpc.internal_error", method=method_name, uid=call.uid), None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}, then


def _internal(request_id, event: str, **fields) -> dict:
    """-32603 with an incident id that is in the log (with the traceback, no locals)."""
    incident = uuid.uuid4().hex[:12]
    log.exception(event, incident=incident, **fields)
    return _error(request_id, ErrorCode.INTERNAL_ERROR, f"internal error (incident {incident}; see the daemon's log)",
                  {"incident": incident})


def _request_id(line: bytes):
    """The id of a request line, if it can be read at all: errors keep it."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else None
