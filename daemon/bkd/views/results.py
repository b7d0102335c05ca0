"""What each RPC method answers: one TypedDict per method, named in the
method table (rpc/methods.py) and checked against docs/protocol.md by
tests/unit/test_protocol_docs.py. Only the top level is spelled out where
the rest is a record of its own (a job, an alert, a digest's host).
(No `from __future__ import annotations`: TypedDict must see NotRequired.)"""

from typing import NotRequired, TypedDict


class DaemonInfoResult(TypedDict):
    version: str
    protocol: int
    pid: int
    started: str
    config_path: str
    backup_root: str
    rsync: str


class HostStatus(TypedDict):
    state: str  # idle, queued, running
    job_id: int | None
    stage: str | None
    progress: dict | None
    heavy: dict | None  # {kind, state, job_id, stage, progress} of an archive or monthly copy running beside it
    last_snapshot: str | None
    last_snapshot_time: str | None
    age_s: int | None
    stale: bool
    last_result: str | None
    last_error: str | None
    next_run: str | None
    future_entries: int
    held: bool
    suspects: list[str]
    unique_bytes: int | None  # the host's space on disk, from its version index (None while it is rebuilt)
    error: str | None
    alerts: int
    alert_kinds: list[str]


class StatusResult(TypedDict):
    job_running: bool
    running: int
    queued: int
    hosts: dict[str, HostStatus]
    disk: dict
    started: str
    version: str
    deletion_queue: list[str]
    subscribers: int
    alerts: dict  # {open, by_kind, unacknowledged, silenced}


class JobStartResult(TypedDict):
    job_id: int | None


class JobCancelResult(TypedDict):
    cancelled: list[str]


class JobGetResult(TypedDict):
    job: dict


class JobsListResult(TypedDict):
    jobs: list[dict]
    next_before: int | None
    truncated: bool


class SnapshotsListResult(TypedDict):
    host: str
    snapshots: list[dict]
    total: int
    next_before: str | None
    truncated: bool


class SnapshotsBrowseResult(TypedDict):
    host: str
    snapshot: str
    kind: str  # hourly, monthly, archive
    suspect: bool
    path: str
    entries: list[dict]
    total: int
    offset: int
    next_offset: int | None
    truncated: bool


class FindResult(TypedDict):
    host: str
    pattern: NotRequired[str]  # the one asked for: pattern, or path (bkctl ls --history)
    path: NotRequired[str]
    versions: list[dict]
    truncated: bool


class DuResult(TypedDict):
    hosts: dict[str, dict]


class ScheduleEntry(TypedDict):
    host: str
    kind: str
    every: str
    next_run: str | None
    enabled: bool


class ScheduleListResult(TypedDict):
    entries: list[ScheduleEntry]


class RestoreResult(TypedDict):
    job_id: int | None
    receive: NotRequired[dict]  # a local DEST: {token, into}


class RestoreStreamResult(TypedDict):
    attached: bool


class VerifyResult(TypedDict):
    host: str
    ok: bool
    checked: int
    snapshots: list[str]
    archives: list[str]
    mismatches: list[dict]
    gone: list[str]
    snapshot: NotRequired[str | None]  # with `sample`: the snapshot sampled
    index: NotRequired[dict]  # the version index checked against the manifests of the snapshots verified


class MetricsResult(TypedDict):
    text: str


class AuditListResult(TypedDict):
    entries: list[dict]
    chain_ok: bool | None
    broken_at: int | None
    problem: str | None
    journal: str | None
    truncated: bool


class AlertsListResult(TypedDict):
    alerts: list[dict]
    silences: list[dict]


class AlertsAckResult(TypedDict):
    acked: list[int]


class AlertsSilenceResult(TypedDict):
    silence: dict
    silences: list[dict]


class AlertsUnsilenceResult(TypedDict):
    ended: list[int]
    silences: list[dict]


class NotifyStatusResult(TypedDict):
    sinks: list[dict]


class NotifyTestResult(TypedDict):
    results: dict[str, dict]
    sinks: list[dict]


class ReportResult(TypedDict):
    generated: str
    since: str
    period_s: int
    server: str
    version: str
    timezone: str
    trend_days: int
    hosts: list[dict]
    alerts: dict
    disk: dict
    audit_head: dict
    upstreams: list[dict]  # a replica server's primaries (empty elsewhere)


class PruneResult(TypedDict):
    dry_run: bool
    plan: dict[str, list[dict]]
    frees: NotRequired[dict[str, int | None]]  # with dry_run: what the plan would free, per host


class HostsListResult(TypedDict):
    hosts: list[dict]


class HostsTestResult(TypedDict):
    results: dict[str, dict]


class HoldsListResult(TypedDict):
    holds: list[dict]


class HostsReleaseResult(TypedDict):
    released: bool
    host: str
    held: bool
    since: str | None
    snapshots: list[str]


class ReplicasListResult(TypedDict):
    upstreams: list[dict]


class ConfigReloadResult(TypedDict):
    ok: bool
    changes: list[str]
    errors: list[str]


class EventsSubscribeResult(TypedDict):
    subscribed: list[str]
    max_queue: int
