"""THE method table: every RPC method, its params, its role and its handler,
in one place. Dispatch looks names up here and nowhere else (no getattr on
request data). Every parameter is validated here, at the edge: host names
by the host-name rule, paths as file names, ids within SQLite's range."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from bkctl.protocol import RUN_KINDS, AlertKind, Kind, Method as M

from .. import __version__
from ..alerts.notify.outbox import Notifier
from ..alerts.service import Alerts
from ..config.models import Duration, HostName, SinkName, redact_url
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.errors import Denied, NotFound, NotReady
from ..infra.events import DEFAULT_QUEUE, TOPICS, EventBus
from ..pipeline import selfguard, tarstream
from ..pipeline.selfguard import SelfGuard
from ..pipeline.versions.service import Versions
from ..restore.receivers import Receivers
from ..restore.request import Caller, Received, Restores
from ..runs.housekeeping import Housekeeping
from ..runs.jobs import Jobs
from ..runs.plan import Trigger
from ..state.store import Store
from ..tree import browse, copies, relpath
from ..tree.layout import HostDir
from ..views import catalog, report
from ..views import results as r
from ..views.metrics import Metrics
from ..views.replicas import Replicas
from ..views.report import Reports
from ..views.status import Info, StatusView
from ..watch.anomaly import Anomalies
from ..watch.auditwitness import AuditWatch
from ..watch.hosts import Hosts
from ..watch.integrity import Integrity
from . import access

if TYPE_CHECKING:
    from .server import Call

log = structlog.get_logger()

SUBSCRIBER_BUFFER = 8 * 1024  # bytes the kernel and transport each hold for one subscriber
MAX_ID = 2**63 - 1  # SQLite's integers


def _file_name(path: str) -> str:
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise ValueError("contains a character that cannot be part of a file name (a lone surrogate)") from None
    if b"\0" in raw:
        raise ValueError("contains a NUL byte")
    return path


FsPath = Annotated[str, AfterValidator(_file_name)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
KindOfAlert = Literal[tuple(AlertKind)]  # strict params take the wire's string, not an enum instance


@dataclass(frozen=True)
class Cap:
    """A limit's cap: a larger value is clamped to it, and the result says
    `truncated: true` (SPEC §5) — the cost of one call stays bounded."""

    value: int


def capped(cap: int, kind=int):
    return Annotated[kind, Field(ge=1), Cap(cap)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    _clamped: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _clamp(self):
        for name, cap in self.caps().items():
            if (value := getattr(self, name)) is not None and value > cap:
                setattr(self, name, cap)
                self._clamped = True
        return self

    @classmethod
    @functools.cache
    def caps(cls) -> dict[str, int]:
        """field → cap, for each capped limit."""
        return {name: meta.value for name, field in cls.model_fields.items()
                for meta in field.metadata if isinstance(meta, Cap)}

    @property
    def clamped(self) -> bool:
        return self._clamped


class NoParams(Params):
    pass


class JobStart(Params):
    hosts: Optional[list[HostName]] = None
    kind: Literal[RUN_KINDS] = Kind.SNAPSHOT
    dry_run: bool = False


class JobCancel(Params):
    hosts: Optional[list[HostName]] = None
    job_id: Optional[Id] = None

    @model_validator(mode="after")
    def _one_target(self):
        if not self.hosts and self.job_id is None:
            raise ValueError("give hosts or job_id")
        return self


class JobGet(Params):
    job_id: Id


class JobsList(Params):
    host: Optional[HostName] = None
    limit: capped(1000) = 50
    before: Optional[Id] = None  # a job_id: the page of older jobs after it


class SnapshotsList(Params):
    host: HostName
    kind: Literal["hourly", "monthly", "archive", "all"] = "hourly"
    limit: capped(1_000_000, Optional[int]) = None  # more than retention can ever keep
    before: Optional[str] = Field(None, max_length=64)


SnapshotRef = Annotated[str, Field(max_length=300)]  # latest, an hourly name, monthly/YYYY-MM, archive/FILE


class SnapshotsBrowse(Params):
    host: HostName
    snapshot: Optional[SnapshotRef] = None
    path: FsPath = "/"
    offset: int = Field(0, ge=0, le=MAX_ID)
    limit: capped(100_000) = browse.DEFAULT_PAGE


class Find(Params):
    host: HostName
    pattern: Optional[Annotated[FsPath, Field(min_length=1, max_length=4096)]] = None
    path: Optional[FsPath] = None  # one path exactly, whatever characters it holds (bkctl ls --history)
    since: Optional[Duration] = None  # only versions a copy this recent holds
    limit: capped(100_000) = 1000

    @model_validator(mode="after")
    def _one_of(self):
        if (self.pattern is None) == (self.path is None):
            raise ValueError("give pattern or path")
        return self


class Du(Params):
    hosts: Optional[list[HostName]] = None
    snapshots: bool = False  # what deleting each copy would free


Identity = Annotated[list[Annotated[int, Field(ge=0, le=2**64 - 1)]], Field(min_length=2, max_length=2)]  # dev, ino


class Location(Params):
    dev: int = Field(ge=0, le=2**64 - 1)  # the filesystem's device
    path: FsPath  # inside that filesystem


class Receiver(Params):
    """What a caller's bkctl found under DEST (as the caller) before it receives a local restore."""

    kinds: list[Literal["D", "F", "L", "N"]] = Field(min_length=1, max_length=4096)
    dest_empty: bool
    # (st_dev, st_ino) of the directory the receiver writes under and of each of its parents up to /
    ancestors: list[Identity] = Field(min_length=1, max_length=4096)
    location: Optional[Location] = None  # that directory's place in its filesystem, when bkctl can tell
    missing: FsPath = ""  # a DEST that does not exist yet, relative to that directory (its deepest parent)

    @model_validator(mode="after")
    def _missing_below(self):
        if self.missing and not relpath.inside(os.fsencode(self.missing)):
            raise ValueError("missing: must be a relative path without '..'")
        return self


class Restore(Params):
    host: HostName
    snapshot: SnapshotRef
    path: FsPath
    dest: FsPath
    overwrite: bool = False
    dry_run: bool = False
    receiver: Optional[Receiver] = None  # a local DEST: the caller receives (bkctl does)


class RestoreStream(Params):
    token: str = Field(max_length=64)


class Verify(Params):
    host: HostName
    snapshot: Optional[SnapshotRef] = None
    all: bool = False
    sample: bool = False  # run the background pass's sample now


class AuditList(Params):
    limit: capped(10_000) = 50  # an entry keeps at most about 1 KiB of params
    verify: bool = False


class AlertsList(Params):
    all: bool = False


class AlertsAck(Params):
    ids: Optional[list[Id]] = None
    host: Optional[HostName] = None
    kind: Optional[KindOfAlert] = None
    all: bool = False
    note: Optional[str] = Field(None, max_length=1000)

    @model_validator(mode="after")
    def _some_target(self):
        if not (self.ids or self.host or self.kind or self.all):
            raise ValueError("give ids, host, kind or all")
        return self


class AlertsUnsilence(Params):
    host: Optional[HostName] = None
    kind: Optional[KindOfAlert] = None

    @model_validator(mode="after")
    def _some_target(self):
        if not (self.host or self.kind):
            raise ValueError("give host, kind or both")
        return self


class AlertsSilence(AlertsUnsilence):
    for_: Duration = Field(alias="for")
    note: Optional[str] = Field(None, max_length=1000)


class Report(Params):
    since: Optional[Duration] = None  # the period the digest's run counts cover (default: a day)
    hosts: Optional[list[HostName]] = None
    trends: bool = True  # the per-day series (bkctl check needs none)

    @model_validator(mode="after")
    def _period(self):
        if self.since is not None and self.since > report.MAX_PERIOD:
            raise ValueError(f"since: at most {report.MAX_PERIOD.days}d")
        return self


class NotifyTest(Params):
    sink: Optional[SinkName] = None


class Prune(Params):
    hosts: Optional[list[HostName]] = None
    dry_run: bool = False


class HostsTest(Params):
    hosts: Optional[list[HostName]] = None


class HostsRelease(Params):
    host: HostName
    note: Optional[str] = Field(None, max_length=1000)


class EventsSubscribe(Params):
    topics: Optional[list[Literal[TOPICS]]] = None
    max_queue: int = Field(DEFAULT_QUEUE, ge=1, le=10000)


Role = Literal["viewer", "operator", "admin"]


@dataclass(frozen=True)
class Method:
    params: type[Params]
    handler: Callable[..., Awaitable]  # handler(params, call) -> result
    result: type  # the result's TypedDict (views/results.py), checked against docs/protocol.md
    role: Role
    streams: bool = False  # the handler returns (result, start the stream)
    mutating: bool = False  # changes something: every call goes to the audit log
    takes_over: bool = False  # after the answer, handler's second value gets the raw connection
    concurrency: int | None = None  # calls answered at once, from every connection; more get -32006


# Fields that may quote file names or command output: admins only (SPEC §5).
ADMIN_ONLY = frozenset({"detail", "listing", "identity_detail", "examples"})


def _public(records: list[dict], call: Call) -> list[dict]:
    """Records (a job's runs, hosts, test results) as the caller may see them."""
    if call.role == "admin":
        return records
    return [{k: v for k, v in record.items() if k not in ADMIN_ONLY} for record in records]


def _public_job(job: dict, call: Call) -> dict:
    return {**job, "hosts": _public(job["hosts"], call)}


class Api:
    """The handlers, with the services each needs (None: this table is read,
    not called, as the tests that compare it with the docs do)."""

    def __init__(self, *, runtime: Runtime | None = None, info: Info | None = None,
                 status: StatusView | None = None, jobs: Jobs | None = None, restores: Restores | None = None,
                 receivers: Receivers | None = None, housekeeping: Housekeeping | None = None,
                 integrity: Integrity | None = None, hosts: Hosts | None = None, guard: SelfGuard | None = None,
                 alerts: Alerts | None = None, notifier: Notifier | None = None, metrics: Metrics | None = None,
                 reports: Reports | None = None, store: Store | None = None,
                 audit_watch: AuditWatch | None = None, bus: EventBus | None = None,
                 anomalies: Anomalies | None = None, versions: Versions | None = None,
                 replicas: Replicas | None = None):
        self.runtime = runtime
        self.info = info
        self.status_view = status
        self.jobs = jobs
        self.restores = restores
        self.receivers = receivers
        self.housekeeping = housekeeping
        self.integrity = integrity
        self.hosts = hosts
        self.guard = guard
        self.alerts = alerts
        self.notifier = notifier
        self.metrics_view = metrics
        self.reports = reports
        self.store = store
        self.audit_watch = audit_watch
        self.bus = bus
        self.anomalies = anomalies
        self.versions = versions
        self.replicas = replicas

    def host_dir(self, host: str) -> HostDir:
        """A configured host's directory, or one a removed host left behind."""
        config = self.runtime.config
        host_dir = HostDir.of(config.backup_root, host)
        if host not in config.hosts and not host_dir.root.is_dir():
            raise NotFound(f"unknown host: {host}")
        return host_dir

    async def daemon_info(self, _: NoParams, call: Call) -> r.DaemonInfoResult:
        info = self.info
        return {"version": __version__, "protocol": info.protocol, "pid": os.getpid(),
                "started": clock.iso(info.started), "config_path": str(self.runtime.config_path),
                "backup_root": str(self.runtime.config.backup_root), "rsync": info.rsync_version}

    async def status(self, _: NoParams, call: Call) -> r.StatusResult:
        return self.status_view.status(clock.now())

    async def job_start(self, p: JobStart, call: Call) -> r.JobStartResult:
        return {"job_id": await self.jobs.start(p.hosts, Kind(p.kind), Trigger.MANUAL, dry_run=p.dry_run)}

    async def job_cancel(self, p: JobCancel, call: Call) -> r.JobCancelResult:
        return {"cancelled": await self.jobs.cancel(p.hosts, p.job_id)}

    async def job_get(self, p: JobGet, call: Call) -> r.JobGetResult:
        job = await self.jobs.get(p.job_id)
        if job is None:
            raise NotFound(f"no job {p.job_id}")
        return {"job": _public_job(job, call)}

    async def jobs_list(self, p: JobsList, call: Call) -> r.JobsListResult:
        """Summaries, the same for every role: no statistics, no detail (job.get has them)."""
        jobs = await self.jobs.list(p.host, p.limit, p.before)
        return {"jobs": jobs, "next_before": jobs[-1]["job_id"] if len(jobs) == p.limit else None}

    async def snapshots_list(self, p: SnapshotsList, call: Call) -> r.SnapshotsListResult:
        config = self.runtime.config
        host_dir = self.host_dir(p.host)
        settings = config.hosts.get(p.host)
        policy = settings.retention if settings else config.retention
        page = await catalog.list_kinds(self.store, host_dir, policy, p.kind, p.limit, p.before)
        return {"host": p.host, **page, "snapshots": _public(page["snapshots"], call)}

    async def schedule_list(self, _: NoParams, call: Call) -> r.ScheduleListResult:
        return {"entries": self.status_view.schedule(clock.now())}

    async def snapshots_browse(self, p: SnapshotsBrowse, call: Call) -> r.SnapshotsBrowseResult:
        host_dir = self.host_dir(p.host)
        copy = copies.resolve(host_dir, p.snapshot)
        tree = await tarstream.tree_of(copy)
        page = await asyncio.to_thread(tree.list_dir, p.path, p.offset, p.limit)
        # A monthly copy or an archive of a suspect snapshot is as suspect as it.
        suspect = bool(copy.snapshot) and await asyncio.to_thread(catalog.is_suspect, host_dir, copy.snapshot)
        return {"host": p.host, "snapshot": copy.ref, "kind": copy.kind, "suspect": suspect, "path": p.path, **page}

    async def find(self, p: Find, call: Call) -> r.FindResult:
        """Every version of the paths matching pattern, from the host's version index."""
        since = clock.now() - p.since if p.since else None
        versions, more = await self.versions.find(self.host_dir(p.host), p.pattern, p.path, since, p.limit)
        asked = {"pattern": p.pattern} if p.pattern is not None else {"path": p.path}
        return {"host": p.host, **asked, "versions": versions, "truncated": more or p.clamped}

    async def du(self, p: Du, call: Call) -> r.DuResult:
        """Real disk use by inode and allocated blocks (counts only: for viewers too)."""
        names = self.jobs.host_names(p.hosts) if p.hosts else list(self.runtime.config.hosts)
        hosts, waiting = {}, {}
        for name in names:
            try:
                hosts[name] = await self.versions.space(self.host_dir(name), p.snapshots)
            except NotReady as e:
                waiting[name] = e.data
        if waiting:
            raise NotReady(f"the version index of {', '.join(sorted(waiting))} is being rebuilt; try again later",
                           {"hosts": waiting})
        return {"hosts": hosts}

    async def restore(self, p: Restore, call: Call) -> r.RestoreResult:
        received = None if p.receiver is None else Received(
            tuple(p.receiver.kinds), p.receiver.dest_empty, tuple(map(tuple, p.receiver.ancestors)),
            (p.receiver.location.dev, p.receiver.location.path) if p.receiver.location else None,
            os.fsencode(p.receiver.missing))
        caller = Caller(call.uid, call.user, access.may_restore_remotely(call.who, self.runtime.config.access))
        target = await self.restores.check(self.host_dir(p.host), p.snapshot, p.path, p.dest, p.overwrite, p.dry_run,
                                           received, caller)
        job_id = await self.jobs.start([p.host], Kind.RESTORE, Trigger.MANUAL, restore=target, dry_run=p.dry_run)
        answer: r.RestoreResult = {"job_id": job_id}
        if target.token:
            answer["receive"] = {"token": target.token, "into": os.fsdecode(target.into)}
        return answer

    async def restore_stream(self, p: RestoreStream, call: Call) -> tuple[r.RestoreStreamResult, Callable]:
        """The caller's receiver attaches: after this answer the restore sends,
        on this connection, the receiver's command line and (SCM_RIGHTS) its
        two ends of the sender's connection, and closes it."""
        self.receivers.check(p.token, call.uid)
        return {"attached": True}, lambda reader, writer: self.receivers.hand_over(p.token, (reader, writer))

    async def verify(self, p: Verify, call: Call) -> r.VerifyResult:
        host_dir = self.host_dir(p.host)
        integrity = self.integrity
        if p.sample:
            result = await integrity.sample(host_dir, self.runtime.config.verify.sample_percent)
            return {**result, "ok": not result["mismatches"], "snapshots": [result["snapshot"]], "archives": []}
        if p.all:
            chosen = [copies.hourly(host_dir, n) for n in host_dir.snapshots()] + copies.monthly_copies(host_dir)
        else:
            chosen = [copies.resolve(host_dir, p.snapshot)]
        return {"host": p.host, **await integrity.verify(host_dir, chosen, p.all)}

    async def metrics(self, _: NoParams, call: Call) -> r.MetricsResult:
        return {"text": await self.metrics_view.exposition()}

    async def audit_list(self, p: AuditList, call: Call) -> r.AuditListResult:
        """verify: the chain, its head record and the journal's record of it (watch/auditwitness.py)."""
        checked = await self.audit_watch.verify() if p.verify else \
            {"chain_ok": None, "broken_at": None, "problem": None, "journal": None}
        return {"entries": await self.store.audit.entries(p.limit), **checked}

    async def alerts_list(self, p: AlertsList, call: Call) -> r.AlertsListResult:
        return {"alerts": await self.alerts.list(p.all), "silences": self.alerts.silences_in_force()}

    async def alerts_ack(self, p: AlertsAck, call: Call) -> r.AlertsAckResult:
        acked = await self.alerts.ack(p.ids, p.host, p.kind and str(p.kind), call.user, p.note)
        if not acked and p.ids:
            raise NotFound(f"no open alert with id {', '.join(map(str, p.ids))}")
        return {"acked": [episode["id"] for episode in acked]}

    async def alerts_silence(self, p: AlertsSilence, call: Call) -> r.AlertsSilenceResult:
        """Maintenance: alerts of the host and/or kind are still recorded, not notified, until `for` is over."""
        if p.host:
            self.jobs.host_names([p.host])
        silence = await self.alerts.silence(p.host, p.kind and str(p.kind), clock.now() + p.for_, p.note,
                                            call.user)
        return {"silence": silence, "silences": self.alerts.silences_in_force()}

    async def alerts_unsilence(self, p: AlertsUnsilence, call: Call) -> r.AlertsUnsilenceResult:
        ended = await self.alerts.unsilence(p.host, p.kind and str(p.kind), call.user)
        if not ended:
            what = " and ".join(filter(None, [p.host and f"host {p.host}", p.kind and f"kind {p.kind}"]))
            raise NotFound(f"no silence of {what} is in force")
        return {"ended": ended, "silences": self.alerts.silences_in_force()}

    async def notify_status(self, _: NoParams, call: Call) -> r.NotifyStatusResult:
        return {"sinks": await self.notifier.status()}

    async def notify_test(self, p: NotifyTest, call: Call) -> r.NotifyTestResult:
        results = await self.notifier.test(p.sink)
        return {"results": results, "sinks": await self.notifier.status()}

    async def report(self, p: Report, call: Call) -> r.ReportResult:
        """The fleet digest: counts and outcomes only, so it is for viewers too."""
        hosts = self.jobs.host_names(p.hosts) if p.hosts else None
        return await self.reports.gather(p.since or report.DAILY_PERIOD, hosts, p.trends)

    async def prune(self, p: Prune, call: Call) -> r.PruneResult:
        config = self.runtime.config
        plan, frees = {}, {}
        for host in self.jobs.host_names(p.hosts):
            policy = config.hosts[host].retention
            host_dir = HostDir.of(config.backup_root, host)
            plan[host] = await self.housekeeping.prune(host_dir, policy, p.dry_run)
            if p.dry_run:  # what the plan would return to the filesystem (None: the index cannot say yet)
                frees[host] = await self.versions.freed(host_dir, [d["snapshot"] for d in plan[host]
                                                                  if d["action"] == "delete"])
        return {"dry_run": p.dry_run, "plan": plan, **({"frees": frees} if p.dry_run else {})}

    async def hosts_list(self, _: NoParams, call: Call) -> r.HostsListResult:
        config = self.runtime.config
        hosts = []
        own_dirs = selfguard.own_dirs(config)
        for settings in config.hosts.values():
            host = settings.host
            verdict = self.guard.known(settings)
            own = selfguard.inside_source(host.path, own_dirs) if verdict and verdict.same else []
            hosts.append({"name": host.name, "source": host.source, "remote": host.is_remote,
                          "schedule": settings.schedule.model_dump(mode="json"),
                          "excludes": selfguard.effective_excludes(settings, own),
                          "ping_url": redact_url(host.ping_url),
                          "this_machine": verdict.same if verdict else None,
                          "self_excluded": own,
                          "identity": verdict.how if verdict else
                          "not known yet: found out before its next run, or by `bkctl hosts test`",
                          "identity_detail": verdict.detail if verdict else None})
        return {"hosts": _public(hosts, call)}

    async def replicas_list(self, _: NoParams, call: Call) -> r.ReplicasListResult:
        """On a replica server: each upstream and its hosts' lag (counts, names and outcomes: viewers too)."""
        return {"upstreams": _public(await self.replicas.gather(), call)}

    async def hosts_test(self, p: HostsTest, call: Call) -> r.HostsTestResult:
        names = self.jobs.host_names(p.hosts)
        results = await self.hosts.test(names)
        return {"results": dict(zip(names, _public([results[name] for name in names], call), strict=True))}

    async def holds_list(self, _: NoParams, call: Call) -> r.HoldsListResult:
        """Hosts with unreleased suspect snapshots (and whether their pruning
        is held): numbers for every role, example file names for admins."""
        return {"holds": await asyncio.to_thread(self.anomalies.holds, call.role == "admin")}

    async def hosts_release(self, p: HostsRelease, call: Call) -> r.HostsReleaseResult:
        self.host_dir(p.host)
        return await self.anomalies.release(p.host, call.user, p.note)

    async def config_reload(self, _: NoParams, call: Call) -> r.ConfigReloadResult:
        return await self.runtime.reload()

    async def events_subscribe(self, p: EventsSubscribe, call: Call) -> tuple[r.EventsSubscribeResult,
                                                                               Callable[[], None]]:
        """Viewers and operators get every topic but `log` (it quotes file
        names and hook command lines): asking for it is refused."""
        allowed = set(TOPICS) if call.role == "admin" else set(TOPICS) - {"log"}
        topics = set(p.topics) if p.topics else allowed
        if topics - allowed:
            raise Denied(f"permission denied: the {', '.join(sorted(topics - allowed))} topic needs the admin role")
        bus, conn = self.bus, call.conn

        def on_drop() -> None:
            log.warning("events.subscriber_dropped", uid=call.uid, pid=call.pid, max_queue=p.max_queue)
            conn.drop({"jsonrpc": "2.0", "method": "event",
                       "params": {"topic": "dropped", "time": clock.iso(clock.now()),
                                  "reason": f"too slow: more than {p.max_queue} events behind"}})

        subscription = bus.subscribe(topics, p.max_queue, on_drop)

        async def pump() -> None:
            while True:
                event = await subscription.queue.get()
                try:
                    await conn.send({"jsonrpc": "2.0", "method": "event", "params": event})
                except (ConnectionError, asyncio.TimeoutError):
                    bus.unsubscribe(subscription)
                    return

        def start() -> None:
            conn.limit_buffering(SUBSCRIBER_BUFFER)
            conn.stream(pump(), on_close=lambda: bus.unsubscribe(subscription))

        return {"subscribed": sorted(topics), "max_queue": p.max_queue}, start


def method_table(api: Api) -> dict[str, Method]:
    return {
        M.DAEMON_INFO: Method(NoParams, api.daemon_info, r.DaemonInfoResult, "viewer"),
        M.STATUS: Method(NoParams, api.status, r.StatusResult, "viewer"),
        M.JOB_START: Method(JobStart, api.job_start, r.JobStartResult, "operator", mutating=True),
        M.JOB_CANCEL: Method(JobCancel, api.job_cancel, r.JobCancelResult, "operator", mutating=True),
        M.JOB_GET: Method(JobGet, api.job_get, r.JobGetResult, "viewer"),
        M.JOBS_LIST: Method(JobsList, api.jobs_list, r.JobsListResult, "viewer"),
        M.SNAPSHOTS_LIST: Method(SnapshotsList, api.snapshots_list, r.SnapshotsListResult, "viewer"),
        M.SNAPSHOTS_BROWSE: Method(SnapshotsBrowse, api.snapshots_browse, r.SnapshotsBrowseResult, "admin"),
        M.FIND: Method(Find, api.find, r.FindResult, "admin", concurrency=4),
        M.DU: Method(Du, api.du, r.DuResult, "viewer", concurrency=4),
        M.SCHEDULE_LIST: Method(NoParams, api.schedule_list, r.ScheduleListResult, "viewer"),
        M.PRUNE: Method(Prune, api.prune, r.PruneResult, "admin", mutating=True, concurrency=2),
        M.RESTORE: Method(Restore, api.restore, r.RestoreResult, "admin", mutating=True),
        M.RESTORE_STREAM: Method(RestoreStream, api.restore_stream, r.RestoreStreamResult, "admin", takes_over=True),
        M.VERIFY: Method(Verify, api.verify, r.VerifyResult, "operator", concurrency=2),
        M.ALERTS_LIST: Method(AlertsList, api.alerts_list, r.AlertsListResult, "viewer"),
        M.ALERTS_ACK: Method(AlertsAck, api.alerts_ack, r.AlertsAckResult, "operator", mutating=True),
        M.ALERTS_SILENCE: Method(AlertsSilence, api.alerts_silence, r.AlertsSilenceResult, "operator", mutating=True),
        M.ALERTS_UNSILENCE: Method(AlertsUnsilence, api.alerts_unsilence, r.AlertsUnsilenceResult, "operator",
                                   mutating=True),
        M.NOTIFY_STATUS: Method(NoParams, api.notify_status, r.NotifyStatusResult, "viewer"),
        M.NOTIFY_TEST: Method(NotifyTest, api.notify_test, r.NotifyTestResult, "operator", mutating=True,
                              concurrency=1),
        M.REPORT: Method(Report, api.report, r.ReportResult, "viewer", concurrency=4),
        M.AUDIT_LIST: Method(AuditList, api.audit_list, r.AuditListResult, "admin", concurrency=2),
        M.METRICS: Method(NoParams, api.metrics, r.MetricsResult, "viewer"),
        M.HOSTS_LIST: Method(NoParams, api.hosts_list, r.HostsListResult, "viewer"),
        M.HOSTS_TEST: Method(HostsTest, api.hosts_test, r.HostsTestResult, "operator", concurrency=2),
        M.HOSTS_RELEASE: Method(HostsRelease, api.hosts_release, r.HostsReleaseResult, "admin", mutating=True),
        M.HOLDS_LIST: Method(NoParams, api.holds_list, r.HoldsListResult, "viewer"),
        M.REPLICAS_LIST: Method(NoParams, api.replicas_list, r.ReplicasListResult, "viewer"),
        M.CONFIG_RELOAD: Method(NoParams, api.config_reload, r.ConfigReloadResult, "admin", mutating=True),
        M.EVENTS_SUBSCRIBE: Method(EventsSubscribe, api.events_subscribe, r.EventsSubscribeResult, "viewer",
                                   streams=True),
    }
