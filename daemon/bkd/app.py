"""The composition root: config → directories and locks → store → services →
RPC server → supervised loops, and the lifecycle around them (ready,
signals, shutdown in order)."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from bkctl.protocol import PROTOCOL_VERSION

from . import __version__
from .alerts.notify.outbox import Notifier
from .alerts.notify.ping import Pinger, heartbeat
from .alerts.service import AlertKind, Alerts
from .config import Config
from .config.runtime import Runtime
from .infra import clock, logs
from .infra.events import EventBus
from .infra.supervise import Supervisor
from .infra.systemd import keep_alive, notify, watchdog_interval
from .infra.users import user_name
from .pipeline.rsync import check_rsync
from .pipeline.selfguard import SelfGuard
from .replica.upstreams import Upstreams, found_here
from .restore.receivers import Receivers
from .rpc.methods import Api, method_table
from .rpc.server import RpcServer
from .runs.housekeeping import Housekeeping
from .runs.jobs import Jobs
from .runs.plan import Lane
from .runs.recorder import Recorder
from .runs.registry import Limit, Registry
from .runs.worker import Worker
from .schedule.due import Scheduler
from .state.audit import HEAD_NAME
from .state.copy import StateCopy
from .state.history import prune_history
from .state.hosts import ReadModel
from .state.store import DATABASE_NAME, STORE_ERRORS, Store, StoreUnusable
from .tree.layout import HostDir
from .tree.ownership import DirError, check_dir, in_memory, prepare_dir
from .views.metrics import Textfile
from .views.report import Reporter
from .watch.auditwitness import AuditWatch
from .watch.disk import DiskWatch
from .watch.freshness import Freshness
from .watch.hosts import Hosts
from .watch.integrity import Integrity

log = structlog.get_logger()

LOCK_NAME = ".bkd.lock"


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do, in one line."""


def _why(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def prepare_dirs(config: Config) -> None:
    """The backup root, state_dir and every host directory belong to the
    daemon (SPEC §7): create them without following planted symlinks, and
    refuse, in one line, whatever another user owns or could change."""
    try:
        prepare_dir(config.backup_root, "backup root")
        prepare_dir(config.state_dir, "state_dir")
        for path, what in ((config.backup_root, "backup root"), (config.state_dir, "state_dir")):
            if warning := in_memory(path, what):  # fine for a test; said, so that no one keeps backups there
                log.warning("dir.in_memory", path=str(path), message=warning)
        for host in config.host:
            problem = check_dir(config.backup_root / host.name, "host directory", follow_symlinks=False)
            if problem:
                raise DirError(problem)
    except DirError as e:
        raise StartupError(str(e)) from None


def lock_dir(path: Path, what: str) -> int:
    """One daemon per backup root and per state_dir, held by the kernel (flock)
    for as long as the process lives; no pid file to go stale."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StartupError(f"cannot use {what} {path}: {_why(e)} ({lock})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"another bkd (pid {holder}) is already running on {what} {path} "
                           f"(it holds the lock on {lock})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True)
class Info:
    started: datetime
    rsync_version: str
    protocol: int = PROTOCOL_VERSION


@dataclass
class Services:
    """What the RPC methods and the loops work with; built once, here."""

    info: Info
    runtime: Runtime
    store: Store
    bus: EventBus
    registry: Registry
    readmodel: ReadModel
    alerts: Alerts
    housekeeping: Housekeeping
    jobs: Jobs
    integrity: Integrity
    hosts: Hosts
    receivers: Receivers
    guard: SelfGuard
    notifier: Notifier | None = None
    audit_watch: AuditWatch | None = None
    upstreams: Upstreams | None = None
    healthy: Callable[[], bool] = lambda: True  # the supervisor's verdict, once it exists


class Daemon:
    def __init__(self, config_path: Path, config: Config):
        self.runtime = Runtime(config_path, config)
        self.services: Services | None = None

    async def run(self, stop: asyncio.Event) -> None:
        found_here(self.runtime)  # replicated hosts with a directory here are hosts from the start
        config = self.runtime.config
        try:
            rsync_version = await asyncio.to_thread(check_rsync)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
        prepare_dirs(config)
        locks = [lock_dir(config.backup_root, "backup root"), lock_dir(config.state_dir, "state_dir")]
        try:
            try:
                store = await Store.open(config.state_dir / DATABASE_NAME)
            except StoreUnusable as e:
                raise StartupError(str(e)) from None
            except OSError as e:
                raise StartupError(f"cannot use the state database {config.state_dir / DATABASE_NAME}: "
                                   f"{_why(e)}") from None
            try:
                await self._serve(store, Info(clock.now(), rsync_version), stop)
            finally:
                await store.close()
        finally:
            for fd in locks:
                os.close(fd)
        log.info("daemon.stopped")

    async def _serve(self, store: Store, info: Info, stop: asyncio.Event) -> None:
        runtime, config = self.runtime, self.runtime.config
        try:
            interrupted = await store.jobs.mark_interrupted()
            next_job_id = await store.jobs.next_job_id()
            await store.jobs.ensure_hosts([h.name for h in config.host])
            host_rows = await store.jobs.host_states()
        except STORE_ERRORS as e:
            raise StartupError(f"cannot use the state database {config.state_dir / DATABASE_NAME}: {e}") from None
        head = config.backup_root / HEAD_NAME
        uid = os.getuid()
        try:
            # A mismatch is logged and alerted on (the audit-witness loop), and the head kept as evidence.
            mismatch = await store.audit.anchor(head, (uid, user_name(uid), os.getpid()))
        except STORE_ERRORS as e:
            raise StartupError(f"cannot anchor the audit log in {head}: {e}") from None
        if interrupted:
            log.warning("daemon.recovered", interrupted_runs=interrupted)
        bus = EventBus()
        registry = Registry(next_job_id)
        readmodel = ReadModel(config, registry, info.started)
        readmodel.load_records(host_rows)
        alerts = Alerts(store, bus)
        try:
            await alerts.load()
            notifier = await Notifier.create(runtime, store, alerts)
        except STORE_ERRORS as e:
            raise StartupError(f"cannot use the state database {config.state_dir / DATABASE_NAME}: {e}") from None
        alerts.listeners.append(notifier.on_alert)
        housekeeping = Housekeeping(config.backup_root, store, registry, readmodel.refresh)
        limits = {Lane.SNAPSHOT: Limit(config.max_parallel_hosts), Lane.HEAVY: Limit(config.max_parallel_heavy),
                  Lane.RESTORE: None}
        receivers = Receivers()
        guard = SelfGuard(config)
        worker = Worker(runtime, registry, limits, housekeeping, store, readmodel, bus.publish, receivers, guard)
        recorder = Recorder(store, registry)
        jobs = Jobs(runtime, registry, worker, recorder, readmodel, alerts, bus.publish)
        scheduler = Scheduler(runtime, readmodel, registry, jobs)
        integrity = Integrity(runtime, store, alerts)
        housekeeping.on_pruned.append(integrity.settle)  # damage that went with its snapshots
        freshness = Freshness(runtime, readmodel, alerts, housekeeping, DiskWatch(runtime, store, alerts))
        audit_watch = AuditWatch(store.audit, alerts, uid)
        upstreams = Upstreams(runtime, alerts)
        self.services = s = Services(info, runtime, store, bus, registry, readmodel, alerts, housekeeping, jobs,
                                     integrity, Hosts(runtime, guard), receivers, guard, notifier, audit_watch,
                                     upstreams)
        textfile = Textfile(s)
        reporter = Reporter(s)
        jobs.on_finished += [lambda run: scheduler.wake.set(), lambda run: textfile.changed.set()]
        pinger = Pinger()  # per-host dead-man pings, sent directly (never through the outbox)
        jobs.on_started.append(pinger.run_started)
        jobs.on_finished.append(pinger.run_finished)
        # A replicated copy that does not match its primary's manifest: its `integrity` alert now.
        jobs.on_finished.append(lambda run: run.stats.get("mismatched_files") and integrity.wake.set())

        async def alerts_changed(event: str, episode: dict) -> None:
            textfile.changed.set()

        alerts.listeners.append(alerts_changed)
        textfile.changed.set()

        def reloaded(old: Config, new: Config) -> None:
            readmodel.config = new
            guard.reloaded(new)
            limits[Lane.SNAPSHOT].resize(new.max_parallel_hosts)
            limits[Lane.HEAVY].resize(new.max_parallel_heavy)
            log.info("limits.set", snapshot=new.max_parallel_hosts, heavy=new.max_parallel_heavy)
            added = [h.name for h in new.host if not old.find_host(h.name)]
            for name in added:
                readmodel.record(name)
            if added:
                asyncio.get_running_loop().create_task(_remember_hosts(store, added))
            scheduler.wake.set()
            integrity.wake.set()
            upstreams.wake.set()
            freshness.wake.set()
            textfile.changed.set()
            notifier.wake_reminders.set()  # sinks or their filters may have changed
            notifier.wake_outbox.set()
            reporter.wake.set()
            notify(f"STATUS={readmodel.status_line()}")

        runtime.on_reload(reloaded)
        readmodel.refresh_all()
        for host in config.host:
            try:
                await housekeeping.clear_heavy_leftovers(HostDir.of(config.backup_root, host.name))
            except OSError as e:  # that host's runs will say what is wrong with its directory
                log.warning("heavy.leftovers_unreadable", host=host.name, error=str(e))
        logs.forward_to(bus.publish)
        server = RpcServer(config.socket, method_table(Api(s)), access=lambda: runtime.config.access,
                           audit=lambda *a: store.audit.append(clock.iso(clock.now()), *a),
                           limits=lambda: runtime.config.rpc)
        try:
            await server.start()
        except (RuntimeError, OSError) as e:
            raise StartupError(f"cannot listen on {config.socket}: {e}") from None

        async def failed(name: str, incident: str, error: BaseException) -> None:
            await alerts.raise_(AlertKind.INTERNAL, None, f"the {name} loop failed (incident {incident}) and "
                                f"was restarted", subject=name)

        async def recovered(name: str) -> None:
            await alerts.resolve(AlertKind.INTERNAL, None, subject=name)

        supervisor = Supervisor(failed, recovered)
        s.healthy = supervisor.healthy
        loops = {
            "rpc": server.serve,
            "scheduler": scheduler.run,
            "freshness": freshness.run,
            "sampler": integrity.run,
            "trash": housekeeping.collector.run,
            "store-sync": recorder.run,
            "metrics-textfile": textfile.run,
            "history": lambda: prune_history(runtime, store),
            "watchdog": lambda: keep_alive(readmodel.status_line, watchdog_interval(), supervisor.healthy),
            "outbox": notifier.outbox,
            "reminders": notifier.reminders,
            "heartbeat": lambda: heartbeat(runtime, supervisor.healthy),
            "report": reporter.run,
            "audit-witness": lambda: audit_watch.run(mismatch),
            "state-copy": StateCopy(runtime, store).run,
            "replicas": upstreams.run,
        }
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(supervisor.supervise(name, loop), name=name)
                         for name, loop in loops.items()]
                gc.freeze()  # what start-up built stays: keep it out of every full collection
                notify("READY=1", f"STATUS={readmodel.status_line()}")
                log.info("daemon.ready", version=__version__, socket=str(config.socket),
                         backup_root=str(config.backup_root), hosts=len(config.host))
                await stop.wait()
                notify("STOPPING=1")
                log.info("daemon.stopping", running=sorted({run.host for run in registry.runs()}))
                await server.close()  # no new requests; every connection's handlers have ended
                await jobs.shutdown()  # running work stopped, partials kept, records written
                for task in tasks:
                    task.cancel()
        finally:
            logs.forward_to(None)


async def _remember_hosts(store: Store, hosts: list[str]) -> None:
    try:
        await store.jobs.ensure_hosts(hosts)
    except STORE_ERRORS as e:
        log.warning("store.write_failed", error=str(e))


async def serve(config_path: Path, config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("daemon.forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        stop.set()

    daemon = Daemon(config_path, config)
    reloads: set[asyncio.Task] = set()

    def on_hangup() -> None:
        task = asyncio.create_task(daemon.runtime.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await daemon.run(stop)
