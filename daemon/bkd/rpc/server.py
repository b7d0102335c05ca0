"""JSON-RPC 2.0 over a Unix stream socket, one JSON object per line.

Each request runs as its own task, so a slow call never blocks a fast one on
the same connection; a client that sends garbage or stops reading only ever
hurts its own connection.

Who calls is taken once, when the connection is accepted, from the socket
(access.identity_of); the role is [access]'s for those groups at each call.

No client can starve the daemon: connections are capped per uid and in
total (`[rpc]`), and the total never exceeds what the descriptor limit
leaves after a reserve for the backup path; one over the cap is answered
with one error line and closed at once. One connection has at most
`max_in_flight` requests being answered (then it is not read), and one
that leaves its output unread for `unread_grace` is cut off; one with no
request in flight and no subscription is closed after `idle_timeout`.
Expensive methods have a concurrency limit of their own (-32006 beyond
it). Bursts of the same refusal are coalesced: one audit entry (or log
line) per uid and method per minute, with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import hashlib
import json
import os
import re
import resource
import socket
import stat
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from bkctl import protocol
from bkctl.protocol import ErrorCode
from ..config.models import Access, Rpc
from ..infra import clock
from ..infra.bursts import Burst, Bursts
from ..infra.errors import Busy, Conflict, Denied, DomainError, InvalidArgument, NotFound, NotReady, ShuttingDown
from ..infra.users import user_name
from . import access
from .access import Identity
from .methods import Method

log = structlog.get_logger()

STOP_GRACE = 2.0  # seconds a client gets to read what is buffered when the daemon stops
RESERVED_FDS = 256  # descriptors the backup path keeps (rsync and ssh pipes, hooks, SQLite, manifest walks)
MIN_CONNECTIONS = 16  # even under a tiny descriptor limit, an admin can still connect
PRIVILEGED_EXTRA = 8  # connections root and the daemon's own uid get beyond the total cap
ACCEPT_RETRY = 1.0  # seconds to wait when accept() finds no descriptor free
BURST_WINDOW = 60.0  # seconds: one audit entry or log line per uid and method (or reason) per window
AUDIT_PARAMS_MAX = 1024  # bytes of params JSON an audit entry keeps; longer ones are kept as a digest
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# Refusals audited once a minute per uid and method, with a count.
COALESCED = {ErrorCode.PERMISSION_DENIED: "permission denied", ErrorCode.METHOD_BUSY: "busy"}


# The one table from domain errors to wire codes.
WIRE_CODES: dict[type[DomainError], ErrorCode] = {
    NotFound: ErrorCode.NOT_FOUND,
    Busy: ErrorCode.BUSY,
    Conflict: ErrorCode.CONFLICT,
    InvalidArgument: ErrorCode.INVALID_PARAMS,
    Denied: ErrorCode.PERMISSION_DENIED,
    ShuttingDown: ErrorCode.SHUTTING_DOWN,
    NotReady: ErrorCode.NOT_READY,
}


@dataclass(frozen=True)
class Call:
    """Who is calling, as a handler sees it: the identity taken when the
    connection was accepted, and the role [access] gives it now."""

    who: Identity
    user: str
    role: str
    conn: "Connection"

    @property
    def uid(self) -> int:
        return self.who.uid

    @property
    def pid(self) -> int:
        return self.who.pid


class Connection:
    """One client connection: serialised writes, the requests in flight, the
    event streams it owns, and the idle timer that closes it when it has
    neither. Two limits keep what one client costs bounded ([rpc]): at most
    `max_in_flight` requests are answered at once — beyond that the
    connection is not read until answers are taken — and output left unread
    for `unread_grace` (an answer, an event, a last notice) cuts it off."""

    def __init__(self, writer: asyncio.StreamWriter, peer: Identity, limits: Callable[[], Rpc] = Rpc,
                 on_cut_off: Callable[[Connection, str], None] = lambda conn, why: None):
        self.writer = writer
        self.peer = peer
        self.limits = limits  # the current [rpc] section: a reload applies to open connections
        self.requests: set[asyncio.Task] = set()
        self._room = asyncio.Event()  # set while fewer than max_in_flight requests are in flight
        self._room.set()
        self._write_lock = asyncio.Lock()
        self._streams: set[asyncio.Task] = set()
        self._on_close: list[Callable[[], None]] = []
        self._on_cut_off = on_cut_off
        self._watch_idle = True
        self._idle: asyncio.TimerHandle | None = None
        self.settle()

    def unread_grace(self) -> float:
        return self.limits().unread_grace.total_seconds()

    async def room(self) -> None:
        """Until fewer than max_in_flight requests are being answered: the
        reader waits here, so a client that sends faster than it reads fills
        its own socket, not the daemon's memory."""
        await self._room.wait()

    def track(self, request: asyncio.Task) -> None:
        self.requests.add(request)
        request.add_done_callback(self._request_done)
        self.settle()

    def _request_done(self, request: asyncio.Task) -> None:
        self.requests.discard(request)
        self.settle()

    def settle(self) -> None:
        """Open or close the reader's door, and (re)start the idle timer when
        nothing is in flight and nothing streams; else stop it."""
        if len(self.requests) < self.limits().max_in_flight:
            self._room.set()
        else:
            self._room.clear()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._watch_idle and not self.requests and not self._streams and not self.writer.is_closing():
            self._idle = asyncio.get_running_loop().call_later(self.limits().idle_timeout.total_seconds(),
                                                               self.close_within)

    def close_within(self, grace: float | None = None) -> None:
        """Close once the client has read what is buffered; one that does not
        within grace (default unread_grace) is cut off, or it would hold its
        slot (and a stop)."""
        with contextlib.suppress(Exception):
            self.writer.close()
        asyncio.get_running_loop().call_later(self.unread_grace() if grace is None else grace,
                                              self.writer.transport.abort)

    def detach(self) -> None:
        """The connection ends, or is handed over (restore.stream): no idle timer any more."""
        self._watch_idle = False
        self.settle()

    async def send(self, message: dict) -> None:
        await self.write(protocol.encode(message))

    async def write(self, data: bytes) -> None:
        """Write data (whole messages); ConnectionError once the connection is
        closing, or when the client has left output unread for unread_grace
        (it is then cut off)."""
        async with self._write_lock:
            if self.writer.transport.is_closing():
                raise ConnectionResetError("the connection is closing")
            self.writer.write(data)
            grace = self.unread_grace()
            try:
                async with asyncio.timeout(grace):
                    await self.writer.drain()
            except TimeoutError:
                self.cut_off(f"left its output unread for {grace:g} s (unread_grace)")
                raise ConnectionResetError("cut off: output unread") from None

    def cut_off(self, why: str) -> None:
        self.close_streams()
        self.writer.transport.abort()
        self._on_cut_off(self, why)

    def stream(self, coroutine, on_close: Callable[[], None]) -> None:
        """Run coroutine (an event pump) for as long as the connection lives."""
        task = asyncio.create_task(coroutine)
        self._streams.add(task)
        task.add_done_callback(self._stream_done)
        self._on_close.append(on_close)
        self.settle()

    def _stream_done(self, task: asyncio.Task) -> None:
        self._streams.discard(task)
        self.settle()

    def limit_buffering(self, size: int) -> None:
        """Keep what the kernel and the transport buffer small, so that a client
        that stops reading is noticed after a few events, not a few megabytes."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        self.writer.transport.set_write_buffer_limits(high=size)

    def drop(self, notice: dict) -> None:
        """Give up on a client: queue a last message and close once it is read;
        a client that reads nothing more is cut off after unread_grace."""
        self.close_streams()
        with contextlib.suppress(Exception):
            self.writer.write(protocol.encode(notice))
        self.close_within()

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


_ENUM_REPR = re.compile(r"<\w+\.\w+: ('[^']*')>")  # <Kind.SNAPSHOT: 'snapshot'>: the client knows 'snapshot'


def _params_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "params"
        message = "unknown field" if err["type"] == "extra_forbidden" else _ENUM_REPR.sub(r"\1", err["msg"])
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


def descriptor_budget() -> tuple[int, int]:
    """(connections the descriptor limit allows, that limit): what is left of
    RLIMIT_NOFILE after RESERVED_FDS for the backup path."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 2**31, soft
    return max(soft - RESERVED_FDS, MIN_CONNECTIONS), soft


def audit_params(params) -> dict:
    """Params as an audit entry keeps them: whole when small, else their size,
    SHA-256 and first 200 characters (a refused call must not be able to grow
    the database by what it sends)."""
    params = params if isinstance(params, dict) else {"params": params}
    text = json.dumps(params, sort_keys=True, ensure_ascii=True)
    if len(text) <= AUDIT_PARAMS_MAX:
        return params
    return {"truncated": {"bytes": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                          "head": text[:200]}}


class RpcServer:
    def __init__(self, path: Path, methods: dict[str, Method], access: Callable[[], Access],
                 audit: Callable[..., Awaitable[None]], limits: Callable[[], Rpc] = Rpc):
        self.path = path
        self.methods = methods
        self.access = access  # the current [access] section: it changes on reload
        self.audit = audit
        self.limits = limits  # the current [rpc] section
        self._sock: socket.socket | None = None
        self._serving: asyncio.Task | None = None  # the task that accepts
        self.closing = False
        self._clients: set[asyncio.Task] = set()
        self._open: dict[int, int] = {}  # connections per uid
        self._writes: set[asyncio.Task] = set()  # audit entries being written
        self._denials = Bursts(BURST_WINDOW, self._denials_summary)
        self._running: dict[str, int] = {}  # calls being answered, per method with a concurrency limit
        self._refusals = Bursts(BURST_WINDOW, self._refusals_summary)

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen (connections wait in the backlog until `serve` accepts them)."""
        self._sock = sock or bind_socket(self.path)
        budget, soft = descriptor_budget()
        if budget < self.limits().max_connections:
            log.warning("rpc.connections_capped", max_connections=self.limits().max_connections, allowed=budget,
                        nofile=soft, reserved_for_backups=RESERVED_FDS)

    async def serve(self) -> None:
        """The supervised loop: accept until cancelled; a failure rebinds."""
        if self._sock is None or self._sock.fileno() < 0:
            await self.start()
        self._serving = asyncio.current_task()
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:
                if e.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of descriptors: wait (the backlog holds new clients) and say so once a minute.
                if self._refusals.hit(("accept", e.errno)):
                    log.error("rpc.accept_failed", error=e.strerror, retry_s=ACCEPT_RETRY)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            self._admit(conn)

    async def close(self) -> None:
        """Stop listening, end every connection and wait for its handlers, so
        that nothing runs against the state store once it is closed; counts
        of coalesced refusals are written first."""
        self.closing = True
        if self._serving is not None:
            self._serving.cancel()
            await asyncio.sleep(0)  # the cancelled accept unregisters the socket before it is closed
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        self._refusals.flush()
        self._denials.flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # ---- admission ----------------------------------------------------------------

    def _refusal(self, uid: int) -> str | None:
        """Why a new connection of uid is refused now, or None. Root and the
        daemon's own uid have no per-uid cap and PRIVILEGED_EXTRA connections
        beyond the total cap, so an admin gets in while others fill it."""
        limits = self.limits()
        privileged = uid in (0, os.getuid())
        per_uid = self._open.get(uid, 0)
        if not privileged and per_uid >= limits.max_connections_per_uid:
            return (f"too many connections: uid {uid} has {per_uid} open "
                    f"(max_connections_per_uid = {limits.max_connections_per_uid}); close some and try again")
        total = sum(self._open.values())
        budget, soft = descriptor_budget()
        cap = min(limits.max_connections, budget) + (PRIVILEGED_EXTRA if privileged else 0)
        if total >= cap:
            if budget < limits.max_connections:
                return (f"too many connections: {total} open, as many as the descriptor limit allows "
                        f"(RLIMIT_NOFILE {soft}, {RESERVED_FDS} kept for backups); try again later")
            return f"too many connections: {total} open (max_connections = {limits.max_connections}); try again later"
        return None

    def _admit(self, sock: socket.socket) -> None:
        try:
            peer = access.identity_of(sock)  # once, here: never looked up again (SPEC §5)
        except OSError:
            sock.close()
            return
        refusal = self._refusal(peer.uid)
        if refusal:
            with contextlib.suppress(OSError):  # a few hundred bytes: never blocks
                sock.send(protocol.encode(_error(None, ErrorCode.BUSY, refusal)))
            sock.close()
            if self._refusals.hit(("connection", peer.uid), refusal):
                log.warning("rpc.connection_refused", uid=peer.uid, reason=refusal)
            return
        self._open[peer.uid] = self._open.get(peer.uid, 0) + 1
        task = asyncio.create_task(self._serve_socket(sock, peer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    def _refusals_summary(self, key, burst: Burst) -> None:
        what, detail = key
        if what == "accept":
            log.error("rpc.accept_failed", error=os.strerror(detail), repeated=burst.count,
                      first=clock.iso(burst.first), last=clock.iso(burst.last))
        elif what == "cut_off":
            log.warning("rpc.clients_cut_off", uid=detail, count=burst.count, reason=burst.data,
                        first=clock.iso(burst.first), last=clock.iso(burst.last))
        else:
            log.warning("rpc.connections_refused", uid=detail, count=burst.count, reason=burst.data,
                        first=clock.iso(burst.first), last=clock.iso(burst.last))

    async def _serve_socket(self, sock: socket.socket, peer: Identity) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_LINE + 1)
        except BaseException:
            sock.close()
            self._release(peer.uid)
            raise
        try:
            await self._serve_connection(reader, writer, peer)
        finally:
            self._release(peer.uid)

    def _release(self, uid: int) -> None:
        self._open[uid] -= 1
        if not self._open[uid]:
            del self._open[uid]

    def _cut_off(self, conn: Connection, why: str) -> None:
        if self._refusals.hit(("cut_off", conn.peer.uid), why):
            log.warning("rpc.client_cut_off", uid=conn.peer.uid, pid=conn.peer.pid, reason=why)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                peer: Identity) -> None:
        conn = Connection(writer, peer, self.limits, self._cut_off)
        handed_over = False
        try:
            while True:
                await conn.room()
                if writer.transport.is_closing():
                    break  # closed or cut off: what it sent after that is not read, let alone answered
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
                        await asyncio.gather(*conn.requests, return_exceptions=True)
                        handed_over = True
                        conn.detach()
                        then(reader, writer)
                        return
                    continue
                conn.track(asyncio.create_task(self._answer(line, conn)))
        except ConnectionError:
            pass
        finally:
            conn.close_streams()
            if conn.requests:
                if self.closing:
                    for task in conn.requests:
                        task.cancel()
                await asyncio.gather(*conn.requests, return_exceptions=True)
            conn.detach()
            if not handed_over:
                conn.close_within(STOP_GRACE if self.closing else None)
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
            # An answer waits for its turn as bytes, not as the objects it was made of (several times bigger).
            data, response = protocol.encode(response), None
            try:
                await conn.write(data)
            except ConnectionError:
                return
        if then is not None:
            then()

    async def dispatch(self, line: bytes, conn: Connection) -> tuple[dict | None, Callable | None]:
        """The response to one request line (None for a notification), and what to
        start once it has been sent (a subscription's event stream)."""
        try:
            message = json.loads(line)
        except ValueError as e:  # UnicodeDecodeError too
            if "int_max_str_digits" in str(e):  # Python's advice to Python programmers, not to clients
                return _error(None, ErrorCode.PARSE_ERROR, "parse error: a number with too many digits"), None
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
        role = access.role_of(peer, self.access())
        if not access.allowed(role, method.role):
            who = f"{user_name(peer.uid)} (uid {peer.uid})"
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
        running = self._running.get(method_name, 0)
        if method.concurrency is not None and running >= method.concurrency:
            error = _error(request_id, ErrorCode.METHOD_BUSY,
                           f"busy: {method_name} is already being answered {running} time(s) at once, its limit; "
                           "try again shortly", {"limit": method.concurrency})
            return await self._audited(method, method_name, raw_params, conn, error), None
        self._running[method_name] = running + 1  # no await since the check: the limit holds
        try:
            call = Call(peer, user_name(peer.uid), role, conn)
            response, then = await self._invoke(method, method_name, params, request_id, call)
        finally:
            self._running[method_name] -= 1
        return await self._audited(method, method_name, raw_params, conn, response), then

    async def _audited(self, method: Method, name: str, params, conn: Connection, response: dict) -> dict:
        """Every call that changes something is written to the audit log, refused
        ones too: a refusal (by role, or for the method's own limit) at once the
        first time in a minute, its repeats in that minute as one entry with
        their count."""
        if method.mutating:
            error = response.get("error")
            peer = conn.peer
            if error and error["code"] in COALESCED:
                if not self._denials.hit((peer.uid, name, error["code"]), (peer.pid, params)):
                    return response  # counted: the minute's summary entry records it
            outcome = f"error {error['code']}: {error['message']}" if error else "ok"
            await self._record(peer.uid, peer.pid, name, audit_params(params), outcome)
        return response

    async def _record(self, uid: int, pid: int, name: str, params: dict, outcome: str) -> None:
        try:
            await self.audit(uid, user_name(uid), pid, name, params, outcome)
        except Exception as e:  # the journal still has it; the caller still gets the answer
            log.error("audit.unrecorded", method=name, uid=uid, outcome=outcome, error=str(e))

    def _denials_summary(self, key, burst: Burst) -> None:
        uid, name, code = key
        pid, params = burst.data
        summary = {"repeated": burst.count, "first": clock.iso(burst.first), "last": clock.iso(burst.last),
                   "last_params": audit_params(params)}
        outcome = (f"error {int(code)}: {COALESCED[code]}, {burst.count} more time(s) "
                   f"within {int(BURST_WINDOW)} s of the entry before")
        task = asyncio.create_task(self._record(uid, pid, name, summary, outcome))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

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
        if method.params.caps():  # SPEC §5: a limit above its cap was clamped, and the result says so
            result["truncated"] = params.clamped or bool(result.get("truncated"))
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
