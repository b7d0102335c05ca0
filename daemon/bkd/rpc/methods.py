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
from ..config.models import Duration, HostName, SinkName, redact_url
from ..infra import clock
from ..infra.errors import Denied, InvalidArgument, NotFound
from ..infra.events import DEFAULT_QUEUE, TOPICS
from ..pipeline import selfguard
from ..restore import transfer as restore
from ..runs.plan import RestoreTarget, Trigger
from ..tree import browse, relpath
from ..tree.layout import HostDir
from ..views import catalog, metrics, replicas, report
from . import access

if TYPE_CHECKING:
    from ..app import Services
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
    limit: capped(1_000_000, Optional[int]) = None  # more than retention can ever keep
    before: Optional[str] = Field(None, max_length=64)


class SnapshotsBrowse(Params):
    host: HostName
    snapshot: Optional[str] = Field(None, max_length=64)
    path: FsPath = "/"
    offset: int = Field(0, ge=0, le=MAX_ID)
    limit: capped(100_000) = browse.DEFAULT_PAGE


class SnapshotsHistory(Params):
    host: HostName
    path: FsPath


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
    snapshot: str = Field(max_length=64)
    path: FsPath
    dest: FsPath
    overwrite: bool = False
    dry_run: bool = False
    receiver: Optional[Receiver] = None  # a local DEST: the caller receives (bkctl does)


class RestoreStream(Params):
    token: str = Field(max_length=64)


class Verify(Params):
    host: HostName
    snapshot: Optional[str] = Field(None, max_length=64)
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


class EventsSubscribe(Params):
    topics: Optional[list[Literal[TOPICS]]] = None
    max_queue: int = Field(DEFAULT_QUEUE, ge=1, le=10000)


Role = Literal["viewer", "operator", "admin"]


@dataclass(frozen=True)
class Method:
    params: type[Params]
    handler: Callable[..., Awaitable]  # handler(params, call) -> result
    role: Role
    streams: bool = False  # the handler returns (result, start the stream)
    mutating: bool = False  # changes something: every call goes to the audit log
    takes_over: bool = False  # after the answer, handler's second value gets the raw connection
    concurrency: int | None = None  # calls answered at once, from every connection; more get -32006


def _outside_own(config, dest: str, where: restore.Where) -> None:
    """A restore never writes into bkd's own directories, by whatever path
    (a symlink, a bind mount of them or of a directory inside them) DEST
    reaches them: the directory it writes under and its parents are compared
    with them by device and inode, and by place in their filesystem."""
    if not where.identities and where.location is None:
        raise InvalidArgument(f"invalid params: dest: cannot tell whether {dest} is inside bkd's own directories")
    own = selfguard.inside_own(config, where.identities, where.location)
    if own is not None:
        what, path = own
        raise InvalidArgument(f"invalid params: dest: {dest} is inside {what} ({path}); restore elsewhere")


# Fields that may quote file names or command output: admins only (SPEC §5).
ADMIN_ONLY = frozenset({"detail", "listing", "identity_detail"})


def _public(records: list[dict], call: Call) -> list[dict]:
    """Records (a job's runs, hosts, test results) as the caller may see them."""
    if call.role == "admin":
        return records
    return [{k: v for k, v in record.items() if k not in ADMIN_ONLY} for record in records]


def _public_job(job: dict, call: Call) -> dict:
    return {**job, "hosts": _public(job["hosts"], call)}


class Api:
    def __init__(self, services: Services | None):
        self.s = services

    def host_dir(self, host: str) -> HostDir:
        """A configured host's directory, or one a removed host left behind."""
        config = self.s.runtime.config
        host_dir = HostDir.of(config.backup_root, host)
        if not config.find_host(host) and not host_dir.root.is_dir():
            raise NotFound(f"unknown host: {host}")
        return host_dir

    async def daemon_info(self, _: NoParams, call: Call) -> dict:
        info = self.s.info
        return {"version": __version__, "protocol": info.protocol, "pid": os.getpid(),
                "started": clock.iso(info.started), "config_path": str(self.s.runtime.config_path),
                "backup_root": str(self.s.runtime.config.backup_root), "rsync": info.rsync_version}

    async def status(self, _: NoParams, call: Call) -> dict:
        result = self.s.readmodel.status(clock.now())
        alerts = self.s.alerts
        for name, host in result["hosts"].items():
            host["alerts"] = alerts.open_for(name)
            host["alert_kinds"] = sorted({e["kind"] for e in alerts.current.values() if e["host"] == name})
        return {**result, "deletion_queue": self.s.housekeeping.collector.pending(),
                "subscribers": len(self.s.bus.subscriptions),
                "alerts": alerts.summary()}

    async def job_start(self, p: JobStart, call: Call) -> dict:
        return {"job_id": await self.s.jobs.start(p.hosts, Kind(p.kind), Trigger.MANUAL, dry_run=p.dry_run)}

    async def job_cancel(self, p: JobCancel, call: Call) -> dict:
        return {"cancelled": await self.s.jobs.cancel(p.hosts, p.job_id)}

    async def job_get(self, p: JobGet, call: Call) -> dict:
        job = await self.s.jobs.get(p.job_id)
        if job is None:
            raise NotFound(f"no job {p.job_id}")
        return {"job": _public_job(job, call)}

    async def jobs_list(self, p: JobsList, call: Call) -> dict:
        """Summaries, the same for every role: no statistics, no detail (job.get has them)."""
        jobs = await self.s.jobs.list(p.host, p.limit, p.before)
        return {"jobs": jobs, "next_before": jobs[-1]["job_id"] if len(jobs) == p.limit else None}

    async def snapshots_list(self, p: SnapshotsList, call: Call) -> dict:
        config = self.s.runtime.config
        host_dir = self.host_dir(p.host)
        host = config.find_host(p.host)
        policy = config.settings(host).retention if host else config.retention
        page = await catalog.list_snapshots(self.s.store, host_dir, policy, p.limit, p.before)
        return {"host": p.host, **page}

    async def schedule_list(self, _: NoParams, call: Call) -> dict:
        return {"entries": self.s.readmodel.schedule_entries(clock.now())}

    async def snapshots_browse(self, p: SnapshotsBrowse, call: Call) -> dict:
        name, root = browse.snapshot_root(self.host_dir(p.host), p.snapshot)
        page = await asyncio.to_thread(browse.list_dir, root, p.path, p.offset, p.limit)
        return {"host": p.host, "snapshot": name, "path": p.path, **page}

    async def snapshots_history(self, p: SnapshotsHistory, call: Call) -> dict:
        found = await asyncio.to_thread(browse.history, self.host_dir(p.host), p.path)
        return {"host": p.host, "path": p.path, "entries": found}

    async def restore(self, p: Restore, call: Call) -> dict:
        """Check everything that can be checked before starting: the snapshot, the
        path inside it, the destination and what is already there."""
        config = self.s.runtime.config
        host_dir = self.host_dir(p.host)
        name, root = browse.snapshot_root(host_dir, p.snapshot)
        await asyncio.to_thread(browse.lookup, root, p.path)
        parts = browse.components(p.path)
        remote = restore.check_destination(p.dest)
        if remote and not access.may_restore_remotely(call.who, config.access):
            raise Denied(f"permission denied: a restore to host:path writes with bkd's own restore key; "
                         f"it needs root or a group in [access] remote_restorers, and {call.user} (uid {call.uid}) "
                         "is in none")
        if remote:
            if p.receiver is not None:
                raise InvalidArgument("invalid params: receiver: a host:path DEST is written by the daemon")
            restore.restore_key(config)  # refused at once without one
            where = await restore.remote_where(config, p.dest, parts)
            rsync_path = restore.rsync_path_at(config, remote, p.host)
            if (await self.s.guard.verdict_of(remote, rsync_path=rsync_path)).same:  # this very machine, over SSH
                _outside_own(config, p.dest, where)
        else:
            if p.receiver is None:
                raise InvalidArgument("invalid params: receiver: a local DEST is received by the caller "
                                      "(bkctl restore does this)")
            if len(p.receiver.kinds) != len(parts) + 1:
                raise InvalidArgument("invalid params: receiver.kinds: one per directory of DEST/PATH")
            location = p.receiver.location
            where = restore.Where(tuple(p.receiver.kinds), p.receiver.dest_empty,
                                  identities=tuple(map(tuple, p.receiver.ancestors)),
                                  location=(location.dev, location.path) if location else None)
            _outside_own(config, p.dest, where)
        restore.conflict(where, p.dest, parts, p.overwrite)
        top_level = await asyncio.to_thread(browse.top_level, root) if not parts else []
        source_args, into = restore.sources(parts, where, top_level)
        options = restore.options(p.overwrite, p.dry_run)
        token = None if remote else self.s.receivers.expect(call.uid)
        target = RestoreTarget(name, p.path, p.dest, p.overwrite, tuple(source_args), into, tuple(options), where,
                               token, os.fsencode(p.receiver.missing) if p.receiver else b"")
        job_id = await self.s.jobs.start([p.host], Kind.RESTORE, Trigger.MANUAL, restore=target, dry_run=p.dry_run)
        answer = {"job_id": job_id}
        if token:
            answer["receive"] = {"token": token, "into": os.fsdecode(into)}
        return answer

    async def restore_stream(self, p: RestoreStream, call: Call) -> tuple[dict, Callable]:
        """The caller's receiver attaches: after this answer the restore sends,
        on this connection, the receiver's command line and (SCM_RIGHTS) its
        two ends of the sender's connection, and closes it."""
        self.s.receivers.check(p.token, call.uid)
        return {"attached": True}, lambda reader, writer: self.s.receivers.hand_over(p.token, (reader, writer))

    async def verify(self, p: Verify, call: Call) -> dict:
        host_dir = self.host_dir(p.host)
        integrity = self.s.integrity
        if p.sample:
            result = await integrity.sample(host_dir, self.s.runtime.config.verify.sample_percent)
            return {**result, "ok": not result["mismatches"], "snapshots": [result["snapshot"]], "archives": []}
        if p.all:
            names = [str(n) for n in host_dir.snapshots()]
        else:
            names = [browse.snapshot_root(host_dir, p.snapshot)[0]]
        return {"host": p.host, **await integrity.verify(host_dir, names, p.all)}

    async def metrics(self, _: NoParams, call: Call) -> dict:
        return {"text": await metrics.exposition(self.s)}

    async def audit_list(self, p: AuditList, call: Call) -> dict:
        """verify: the chain, its head record and the journal's record of it (auditwitness.py)."""
        checked = await self.s.audit_watch.verify() if p.verify else \
            {"chain_ok": None, "broken_at": None, "problem": None, "journal": None}
        return {"entries": await self.s.store.audit.entries(p.limit), **checked}

    async def alerts_list(self, p: AlertsList, call: Call) -> dict:
        return {"alerts": await self.s.alerts.list(p.all), "silences": self.s.alerts.silences_in_force()}

    async def alerts_ack(self, p: AlertsAck, call: Call) -> dict:
        acked = await self.s.alerts.ack(p.ids, p.host, p.kind and str(p.kind), call.user, p.note)
        if not acked and p.ids:
            raise NotFound(f"no open alert with id {', '.join(map(str, p.ids))}")
        return {"acked": [episode["id"] for episode in acked]}

    async def alerts_silence(self, p: AlertsSilence, call: Call) -> dict:
        """Maintenance: alerts of the host and/or kind are still recorded, not notified, until `for` is over."""
        if p.host:
            self.s.jobs.host_names([p.host])
        silence = await self.s.alerts.silence(p.host, p.kind and str(p.kind), clock.now() + p.for_, p.note,
                                              call.user)
        return {"silence": silence, "silences": self.s.alerts.silences_in_force()}

    async def alerts_unsilence(self, p: AlertsUnsilence, call: Call) -> dict:
        ended = await self.s.alerts.unsilence(p.host, p.kind and str(p.kind), call.user)
        if not ended:
            what = " and ".join(filter(None, [p.host and f"host {p.host}", p.kind and f"kind {p.kind}"]))
            raise NotFound(f"no silence of {what} is in force")
        return {"ended": ended, "silences": self.s.alerts.silences_in_force()}

    async def notify_status(self, _: NoParams, call: Call) -> dict:
        return {"sinks": await self.s.notifier.status()}

    async def notify_test(self, p: NotifyTest, call: Call) -> dict:
        results = await self.s.notifier.test(p.sink)
        return {"results": results, "sinks": await self.s.notifier.status()}

    async def report(self, p: Report, call: Call) -> dict:
        """The fleet digest: counts and outcomes only, so it is for viewers too."""
        hosts = self.s.jobs.host_names(p.hosts) if p.hosts else None
        return await report.gather(self.s, p.since or report.DAILY_PERIOD, hosts, p.trends)

    async def prune(self, p: Prune, call: Call) -> dict:
        config = self.s.runtime.config
        plan = {}
        for host in self.s.jobs.host_names(p.hosts):
            policy = config.settings(config.find_host(host)).retention
            plan[host] = await self.s.housekeeping.prune(HostDir.of(config.backup_root, host), policy, p.dry_run)
        return {"dry_run": p.dry_run, "plan": plan}

    async def hosts_list(self, _: NoParams, call: Call) -> dict:
        config = self.s.runtime.config
        hosts = []
        own_dirs = selfguard.own_dirs(config)
        for host in config.host:
            settings = config.settings(host)
            verdict = self.s.guard.known(settings)
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

    async def replicas_list(self, _: NoParams, call: Call) -> dict:
        """On a replica server: each upstream and its hosts' lag (counts, names and outcomes: viewers too)."""
        return {"upstreams": _public(await replicas.gather(self.s), call)}

    async def hosts_test(self, p: HostsTest, call: Call) -> dict:
        names = self.s.jobs.host_names(p.hosts)
        results = await self.s.hosts.test(names)
        return {"results": dict(zip(names, _public([results[name] for name in names], call), strict=True))}

    async def config_reload(self, _: NoParams, call: Call) -> dict:
        return await self.s.runtime.reload()

    async def events_subscribe(self, p: EventsSubscribe, call: Call) -> tuple[dict, Callable[[], None]]:
        """Viewers and operators get every topic but `log` (it quotes file
        names and hook command lines): asking for it is refused."""
        allowed = set(TOPICS) if call.role == "admin" else set(TOPICS) - {"log"}
        topics = set(p.topics) if p.topics else allowed
        if topics - allowed:
            raise Denied(f"permission denied: the {', '.join(sorted(topics - allowed))} topic needs the admin role")
        bus, conn = self.s.bus, call.conn

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
        M.DAEMON_INFO: Method(NoParams, api.daemon_info, "viewer"),
        M.STATUS: Method(NoParams, api.status, "viewer"),
        M.JOB_START: Method(JobStart, api.job_start, "operator", mutating=True),
        M.JOB_CANCEL: Method(JobCancel, api.job_cancel, "operator", mutating=True),
        M.JOB_GET: Method(JobGet, api.job_get, "viewer"),
        M.JOBS_LIST: Method(JobsList, api.jobs_list, "viewer"),
        M.SNAPSHOTS_LIST: Method(SnapshotsList, api.snapshots_list, "viewer"),
        M.SNAPSHOTS_BROWSE: Method(SnapshotsBrowse, api.snapshots_browse, "admin"),
        M.SNAPSHOTS_HISTORY: Method(SnapshotsHistory, api.snapshots_history, "admin", concurrency=2),
        M.SCHEDULE_LIST: Method(NoParams, api.schedule_list, "viewer"),
        M.PRUNE: Method(Prune, api.prune, "admin", mutating=True, concurrency=2),
        M.RESTORE: Method(Restore, api.restore, "admin", mutating=True),
        M.RESTORE_STREAM: Method(RestoreStream, api.restore_stream, "admin", takes_over=True),
        M.VERIFY: Method(Verify, api.verify, "operator", concurrency=2),
        M.ALERTS_LIST: Method(AlertsList, api.alerts_list, "viewer"),
        M.ALERTS_ACK: Method(AlertsAck, api.alerts_ack, "operator", mutating=True),
        M.ALERTS_SILENCE: Method(AlertsSilence, api.alerts_silence, "operator", mutating=True),
        M.ALERTS_UNSILENCE: Method(AlertsUnsilence, api.alerts_unsilence, "operator", mutating=True),
        M.NOTIFY_STATUS: Method(NoParams, api.notify_status, "viewer"),
        M.NOTIFY_TEST: Method(NotifyTest, api.notify_test, "operator", mutating=True, concurrency=1),
        M.REPORT: Method(Report, api.report, "viewer", concurrency=4),
        M.AUDIT_LIST: Method(AuditList, api.audit_list, "admin", concurrency=2),
        M.METRICS: Method(NoParams, api.metrics, "viewer"),
        M.HOSTS_LIST: Method(NoParams, api.hosts_list, "viewer"),
        M.HOSTS_TEST: Method(HostsTest, api.hosts_test, "operator", concurrency=2),
        M.REPLICAS_LIST: Method(NoParams, api.replicas_list, "viewer"),
        M.CONFIG_RELOAD: Method(NoParams, api.config_reload, "admin", mutating=True),
        M.EVENTS_SUBSCRIBE: Method(EventsSubscribe, api.events_subscribe, "viewer", streams=True),
    }
