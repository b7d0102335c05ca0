"""The wire contract shared by bkd and bkctl: framing, method names, statuses,
kinds and error codes, as enums both sides import.

Standard library only: the daemon imports this module, never the reverse.
"""

from __future__ import annotations

import json
import os
from enum import IntEnum, StrEnum

PROTOCOL_VERSION = 4  # 4: holds.list, hosts.release; snapshots.list's profile, anomaly and suspect;
# find, du; monthly copies and archives as SNAPSHOT (snapshots.list kind); -32007; replicas.list, replica_lag
# 3: jobs.list pages of summaries (before, next_before, truncated); -32006
# 2: restores received by the caller, alert episodes, paged snapshot listings
DEFAULT_SOCKET = "/run/bkd/bkd.sock"
MAX_LINE = 1024 * 1024  # a request line longer than this is refused


class ErrorCode(IntEnum):
    """JSON-RPC 2.0 standard errors and bkd's application errors (SPEC §5)."""

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
    METHOD_BUSY = -32006  # the method's own concurrency limit is reached: try again
    NOT_READY = -32007  # e.g. the version index is being rebuilt; data says how far


class Method(StrEnum):
    """Every method the daemon serves; the daemon's dispatch table must match it."""

    DAEMON_INFO = "daemon.info"
    STATUS = "status"
    JOB_START = "job.start"
    JOB_CANCEL = "job.cancel"
    JOB_GET = "job.get"
    JOBS_LIST = "jobs.list"
    SCHEDULE_LIST = "schedule.list"
    SNAPSHOTS_LIST = "snapshots.list"
    SNAPSHOTS_BROWSE = "snapshots.browse"
    FIND = "find"
    DU = "du"
    PRUNE = "prune"
    RESTORE = "restore"
    RESTORE_STREAM = "restore.stream"
    VERIFY = "verify"
    ALERTS_LIST = "alerts.list"
    ALERTS_ACK = "alerts.ack"
    ALERTS_SILENCE = "alerts.silence"
    ALERTS_UNSILENCE = "alerts.unsilence"
    NOTIFY_STATUS = "notify.status"
    NOTIFY_TEST = "notify.test"
    REPORT = "report"
    AUDIT_LIST = "audit.list"
    METRICS = "metrics"
    HOSTS_LIST = "hosts.list"
    HOSTS_TEST = "hosts.test"
    HOSTS_RELEASE = "hosts.release"
    HOLDS_LIST = "holds.list"
    REPLICAS_LIST = "replicas.list"
    CONFIG_RELOAD = "config.reload"
    EVENTS_SUBSCRIBE = "events.subscribe"


class Status(StrEnum):
    """A job's or a host run's status (SPEC §5)."""

    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    WARNING = "warning"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"


class Kind(StrEnum):
    """What a job does. `all` is a snapshot, then the heavy work on it."""

    SNAPSHOT = "snapshot"
    ARCHIVE = "archive"
    MONTHLY = "monthly"
    ALL = "all"
    RESTORE = "restore"


class AlertKind(StrEnum):
    """What an alert episode is about (SPEC §8)."""

    RUN_FAILED = "run_failed"
    STALE = "stale"
    HUNG = "hung"
    AUTH = "auth"
    INTEGRITY = "integrity"
    ANOMALY = "anomaly"
    DISK = "disk"
    CLOCK = "clock"
    NOTIFY = "notify"
    REPLICA_LAG = "replica_lag"
    INTERNAL = "internal"


METHODS = tuple(Method)
STATUSES = tuple(Status)
FINAL_STATUSES = frozenset(Status) - {Status.QUEUED, Status.RUNNING}
SUCCESS_STATUSES = frozenset({Status.OK, Status.WARNING, Status.SKIPPED})
RUN_KINDS = (Kind.SNAPSHOT, Kind.ARCHIVE, Kind.MONTHLY, Kind.ALL)  # what `bkctl run --kind` takes
BACKUP_KINDS = (Kind.SNAPSHOT, Kind.ALL)  # the runs that take a snapshot: a host's last result is theirs
# A complete snapshot's name (SPEC §4): its UTC time, then -2, -3, … for a second one in the same
# second. The daemon reads names on disk with it, bkctl tells a SNAPSHOT argument from a PATH.
SNAPSHOT_NAME = r"(\d{4})-(\d{2})-(\d{2})_(\d{2})(\d{2})(\d{2})(?:-([2-9]|[1-9]\d+))?"


def default_socket() -> str:
    return os.environ.get("BKD_SOCKET") or DEFAULT_SOCKET


def encode(message: dict) -> bytes:
    """One JSON object per line. Surrogate escapes (non-UTF-8 file names, as
    os.fsdecode makes them) are carried as \\udcXX escapes, which ensure_ascii
    writes and json.loads reads back unchanged."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def request(method: str, params: dict | None, request_id: int | str) -> dict:
    message = {"jsonrpc": "2.0", "method": str(method), "id": request_id}
    if params is not None:
        message["params"] = params
    return message
