"""structlog set-up: one event per line — key=value on a terminal, JSON
otherwise, and under systemd the journal's native protocol, so that every
line keeps its severity and carries host and job as fields of their own.

What people read shows control characters escaped (a host's stderr may hold
any): the terminal's lines and the journal's fields; JSON escapes them
itself. An entry too large for one datagram goes to the journal the way
journald documents (a sealed memfd passed over its socket); only if the
journal cannot be reached at all is a line written to stderr, escaped and
cut to STDERR_LIMIT."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable

import structlog

from bkctl.fmt import colour_allowed, safe

# BKD_JOURNAL_SOCKET: another journal socket (tests bind one of their own).
JOURNAL_SOCKET = os.environ.get("BKD_JOURNAL_SOCKET", "/run/systemd/journal/socket")
STDERR_LIMIT = 16384  # characters of an entry written to stderr when the journal cannot take it
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}

_forward: Callable[..., None] | None = None


def forward_to(publish: Callable[..., None] | None) -> None:
    """Send every log event to publish(topic, **fields) too (live "log" events)."""
    global _forward
    _forward = publish


def _forward_event(_, __, event_dict: dict) -> dict:
    # Only from the event loop's thread: subscribers' queues are not thread-safe.
    if _forward is not None and threading.current_thread() is threading.main_thread():
        fields = json.loads(json.dumps(event_dict, default=str))
        _forward("log", **{k: v for k, v in fields.items() if k not in ("topic", "seq", "time")})
    return event_dict


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected."""
    try:
        device, inode = (int(part) for part in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def journal_fields(event_dict: dict, message: str) -> dict[str, str]:
    """MESSAGE and PRIORITY, plus each scalar field as BKD_<NAME> (BKD_HOST,
    BKD_JOB_ID, BKD_EVENT, …) so `journalctl BKD_HOST=web1` filters a host."""
    fields = {"MESSAGE": message, "PRIORITY": str(PRIORITIES.get(event_dict.get("level", "info"), 6)),
              "SYSLOG_IDENTIFIER": "bkd"}
    for key, value in event_dict.items():
        if isinstance(value, (str, int, float, bool)) and key not in ("level", "timestamp"):
            name = "BKD_" + re.sub(r"[^A-Z0-9_]", "_", key.upper())
            fields[name] = str(value)
    return fields


def encode_journal(fields: dict[str, str]) -> bytes:
    """The native protocol: KEY=value lines; values with a newline in binary form."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalLogger:
    """A structlog logger that writes each event as one journal entry; if the
    journal socket fails, a `<priority>`-prefixed line on stderr (which
    journald's stream reader also turns into a severity)."""

    def __init__(self, *_args):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def msg(self, message: str, fields: dict[str, str]) -> None:
        try:
            send(self._sock, encode_journal(fields))
        except OSError:
            line = safe(message)  # never the host's bytes raw, nor a line without end
            if len(line) > STDERR_LIMIT:
                line = f"{line[:STDERR_LIMIT]} [+{len(line) - STDERR_LIMIT} characters not shown]"
            print(f"<{fields['PRIORITY']}>{line}", file=sys.stderr, flush=True)

    debug = info = warning = warn = error = err = critical = exception = fatal = log = msg


def send(sock: socket.socket, data: bytes) -> None:
    """One entry to the journal: in a datagram, or in a memfd when too large for one."""
    try:
        sock.sendto(data, JOURNAL_SOCKET)
    except OSError as e:
        if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
            raise
        send_large(sock, data, JOURNAL_SOCKET)


def send_large(sock: socket.socket, data: bytes, path: str) -> None:
    """An entry too large for a datagram, as journald takes it: written to a
    memfd, sealed, and the descriptor sent alone over the journal's socket."""
    fd = os.memfd_create("bkd-journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, path)
    finally:
        os.close(fd)


def to_journal(event_dict: dict) -> bool:
    """One event to the journal whatever stderr is (`bkd audit reanchor`, run from
    a shell, leaves its audit entry where the daemon's are); False without one."""
    _, entry = _to_journal(None, None, _visible(None, None, event_dict))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            send(sock, encode_journal(entry["fields"]))
        except OSError:
            return False
    return True


def _visible(_, __, event_dict: dict) -> dict:
    """Strings as people may read them: control characters escaped; a
    traceback keeps its lines."""
    return {key: ("\n".join(map(safe, value.split("\n"))) if key == "exception" else safe(value))
            if isinstance(value, str) else value for key, value in event_dict.items()}


def _to_journal(_, __, event_dict: dict):
    message = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)(
        None, None, {k: v for k, v in event_dict.items() if k not in ("level", "timestamp")})
    return (message,), {"fields": journal_fields(event_dict, message)}


def configure(level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    common = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _forward_event,
    ]
    if stream is sys.stderr and stderr_is_journal():
        processors = [*common, structlog.processors.format_exc_info, _visible, _to_journal]
        factory = JournalLogger
    elif stream.isatty():
        processors = [*common, _visible, structlog.dev.ConsoleRenderer(
            colors=colour_allowed(stream), exception_formatter=structlog.dev.plain_traceback)]
        factory = structlog.PrintLoggerFactory(stream)
    else:
        # Tracebacks without local variables: those hold configs and hook command lines.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        processors = [*common, tracebacks, structlog.processors.JSONRenderer()]
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
