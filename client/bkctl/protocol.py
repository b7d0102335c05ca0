"""The wire contract shared by bkd and bkctl: framing, method names, error codes.

Standard library only: the daemon imports this module, never the reverse.
"""

from __future__ import annotations

import json
import os

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/bkd/bkd.sock"
MAX_LINE = 1024 * 1024  # a request line longer than this is refused

# JSON-RPC 2.0 standard errors and bkd's application errors (SPEC §5).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
BUSY = -32001
NOT_FOUND = -32002
PERMISSION_DENIED = -32003
CONFLICT = -32004
SHUTTING_DOWN = -32005

# Every method the daemon serves; the daemon's dispatch table must match it.
METHODS = (
    "daemon.info",
    "status",
    "job.start",
    "job.cancel",
    "job.get",
    "jobs.list",
    "schedule.list",
    "snapshots.list",
    "snapshots.browse",
    "snapshots.history",
    "prune",
    "restore",
    "verify",
    "alerts.list",
    "alerts.ack",
    "audit.list",
    "metrics",
    "hosts.list",
    "hosts.test",
    "config.reload",
    "events.subscribe",
)

STATUSES = ("queued", "running", "ok", "warning", "failed", "cancelled", "interrupted", "skipped")
FINAL_STATUSES = frozenset({"ok", "warning", "failed", "cancelled", "interrupted", "skipped"})
SUCCESS_STATUSES = frozenset({"ok", "warning", "skipped"})


def default_socket() -> str:
    return os.environ.get("BKD_SOCKET") or DEFAULT_SOCKET


def encode(message: dict) -> bytes:
    """One JSON object per line. Surrogate escapes (non-UTF-8 file names, as
    os.fsdecode makes them) are carried as \\udcXX escapes, which ensure_ascii
    writes and json.loads reads back unchanged."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def request(method: str, params: dict | None, request_id: int | str) -> dict:
    message = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return message
