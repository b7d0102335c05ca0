"""The composition root. `Daemon.run`: rsync checked, directories and locks
taken, the store opened; then `_serve`: the audit log anchored, `build`
wires every service once, the supervised loops run until a stop, and the
daemon stops in order. Each service reacts to a reload itself (it
registers with the runtime); the listeners of runs and alerts are wired
here, once."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from . import __version__
from .alerts.notify.outbox import Notifier
from .alerts.notify.ping import Pinger, heartbeat
from .alerts.service import AlertKind, Alerts
from .config import Config
from .config.runtime import Runtime
from .infra import clock, logs
from .infra.errors import StartupError
from .infra.events import EventBus
from .infra.supervise import Supervisor
from .infra.systemd import keep_alive, notify, watchdog_interval
from .infra.users import user_name
from .pipeline.rsync import check_rsync
from .pipeline.selfguard import SelfGuard
from .pipeline.versions.service import Versions
from .replica.upstreams import Upstreams, found_here
from .restore.receivers import Receivers
from .restore.request import Restores
from .rpc.methods import Api, method_table
from .rpc.server import RpcServer
from .runs.housekeeping import Housekeeping
from .runs.jobs import Jobs
from .runs.lifecycle import Lifecycle
from .runs.recorder import Recorder
from .runs.registry import Limits, Registry
from .runs.worker import Worker
from .schedule.loop import Scheduler
from .state.audit import HEAD_NAME
from .state.copy import StateCopy
from .state.history import prune_history
from .state.hosts import Fleet
from .state.store import DATABASE_NAME, STORE_ERRORS, Store, StoreUnusable
from .tree.layout import HostDir
from .tree.ownership import DirError, check_dir, in_memory, lock_dir, prepare_dir
from .views.metrics import Metrics, Textfile
from .views.replicas import Replicas
from .views.report import Reporter, Reports
from .views.status import Info, StatusView
from .watch.anomaly import Anomalies
from .watch.auditwitness import AuditWatch
from .watch.disk import DiskWatch
from .watch.freshness import Freshness
from .watch.hosts import Hosts
from .watch.integrity import Integrity
from .watch.runs import RunWatch

log = structlog.get_logger()


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
        for name in config.hosts:
            problem = check_dir(config.backup_root / name, "host directory", follow_symlinks=False)
            if problem:
                raise DirError(problem)
    except DirError as e:
        raise StartupError(str(e)) from None


@dataclass
class Built:
    """What `build` made that the daemon itself runs and stops."""

    server: RpcServer
    jobs: Jobs
    registry: Registry
    status: StatusView
    versions: Versions
    loops: dict[str, Callable[[], Awaitable[None]]]


async def build(runtime: Runtime, store: Store, info: Info, audit_mismatch: str | None) -> Built:
    """Every service, once, each given what it needs; the supervised loops by name."""
    config = runtime.config
    bus = EventBus()
    try:
        next_job_id = await store.jobs.next_job_id()
        await store.jobs.ensure_hosts(list(config.hosts))
        host_rows = await store.jobs.host_states()
        alerts = Alerts(store, bus)
        await alerts.load()
        notifier = await Notifier.create(runtime, store, alerts)
    except STORE_ERRORS as e:
        raise StartupError(f"cannot use the state database {config.state_dir / DATABASE_NAME}: {e}") from None
    alerts.listeners.append(notifier.on_alert)

    async def failed(name: str, incident: str, error: BaseException) -> None:
        await alerts.raise_(AlertKind.INTERNAL, None, f"the {name} loop failed (incident {incident}) and "
                            f"was restarted", subject=name)

    async def recovered(name: str) -> None:
        await alerts.resolve(AlertKind.INTERNAL, None, subject=name)

    supervisor = Supervisor(failed, recovered)
    registry = Registry(next_job_id)
    fleet = Fleet(runtime, store)
    fleet.load_records(host_rows)
    housekeeping = Housekeeping(config.backup_root, store, registry, fleet.refresh)
    versions = Versions(config.state_dir, lambda: runtime.config.backup_root, lambda: list(runtime.config.hosts))
    housekeeping.on_pruned.append(versions.changed)  # the index forgets what went
    receivers = Receivers()
    guard = SelfGuard(runtime)
    recorder = Recorder(store, registry, fleet.records)
    lifecycle = Lifecycle(registry, recorder, fleet, receivers, bus.publish)
    worker = Worker(runtime, registry, Limits(runtime), lifecycle, housekeeping, store, fleet, receivers, guard,
                    versions)
    jobs = Jobs(runtime, registry, lifecycle, worker, recorder, fleet)
    scheduler = Scheduler(runtime, fleet, registry, jobs)
    integrity = Integrity(runtime, store, alerts, versions)
    housekeeping.on_pruned.append(integrity.settle)  # damage that went with its snapshots
    freshness = Freshness(runtime, fleet, registry, alerts, housekeeping, DiskWatch(runtime, store, alerts))
    audit_watch = AuditWatch(store.audit, alerts, os.getuid())
    upstreams = Upstreams(runtime, alerts)
    replicas = Replicas(runtime, fleet, upstreams)
    anomalies = Anomalies(runtime, alerts, fleet)
    lifecycle.on_recorded.append(anomalies.concluded)  # a suspect snapshot's alert, once its run is recorded
    status = StatusView(runtime, fleet, registry, alerts, housekeeping, bus, info, versions)
    metrics = Metrics(runtime, info, supervisor.healthy, fleet, store, registry, housekeeping, alerts, notifier,
                      versions, replicas)
    textfile = Textfile(runtime, metrics.exposition)
    reports = Reports(runtime, fleet, store, alerts, versions, replicas)
    reporter = Reporter(runtime, reports, notifier, store)
    RunWatch(runtime, lifecycle, fleet, alerts, Pinger())  # run_failed, auth and the dead-man pings

    lifecycle.on_concluded += [lambda run: scheduler.wake.set(), lambda run: textfile.changed.set()]
    # A replicated copy that does not match its primary's manifest: its `integrity` alert now.
    lifecycle.on_concluded.append(lambda run: run.stats.get("mismatched_files") and integrity.wake.set())

    async def alerts_changed(event: str, episode: dict) -> None:
        textfile.changed.set()

    alerts.listeners.append(alerts_changed)
    textfile.changed.set()

    fleet.refresh_all()
    await anomalies.settle_all()  # a suspect snapshot committed just before a crash gets its alert now
    for name in config.hosts:
        try:
            await housekeeping.clear_heavy_leftovers(HostDir.of(config.backup_root, name))
        except OSError as e:  # that host's runs will say what is wrong with its directory
            log.warning("heavy.leftovers_unreadable", host=name, error=str(e))
    api = Api(runtime=runtime, info=info, status=status, jobs=jobs, restores=Restores(runtime, guard, receivers),
              receivers=receivers, housekeeping=housekeeping, integrity=integrity, hosts=Hosts(runtime, guard),
              guard=guard, alerts=alerts, notifier=notifier, metrics=metrics, reports=reports, store=store,
              audit_watch=audit_watch, bus=bus, anomalies=anomalies, versions=versions, replicas=replicas)
    server = RpcServer(config.socket, method_table(api), access=lambda: runtime.config.access,
                       audit=lambda *a: store.audit.append(clock.iso(clock.now()), *a),
                       limits=lambda: runtime.config.rpc)
    logs.forward_to(bus.publish)
    loops = {
        "rpc": server.serve,
        "scheduler": scheduler.run,
        "freshness": freshness.run,
        "sampler": integrity.run,
        "trash": housekeeping.collector.run,
        "store-sync": recorder.run,
        "metrics-textfile": textfile.run,
        "history": lambda: prune_history(runtime, store),
        "watchdog": lambda: keep_alive(status.line, watchdog_interval(), supervisor.healthy),
        "outbox": notifier.outbox,
        "reminders": notifier.reminders,
        "heartbeat": lambda: heartbeat(runtime, supervisor.healthy),
        "report": reporter.run,
        "audit-witness": lambda: audit_watch.run(audit_mismatch),
        "versions": versions.run,
        "state-copy": StateCopy(runtime, store).run,
        "replicas": upstreams.run,
    }
    return Built(server, jobs, registry, status, versions, {name: _supervised(supervisor, name, loop)
                                                  for name, loop in loops.items()})


def _supervised(supervisor: Supervisor, name: str, loop: Callable[[], Awaitable[None]]):
    return lambda: supervisor.supervise(name, loop)


class Daemon:
    def __init__(self, config_path: Path, config: Config):
        self.runtime = Runtime(config_path, config)

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
        """Anchor, build, run the loops, wait for a stop, stop in order."""
        config = self.runtime.config
        mismatch = await _anchor(store, config)
        built = None
        try:
            built = await build(self.runtime, store, info, mismatch)
            try:
                await built.server.start()
            except (RuntimeError, OSError) as e:
                raise StartupError(f"cannot listen on {config.socket}: {e}") from None
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(loop(), name=name) for name, loop in built.loops.items()]
                gc.freeze()  # what start-up built stays: keep it out of every full collection
                notify("READY=1", f"STATUS={built.status.line()}")
                log.info("daemon.ready", version=__version__, socket=str(config.socket),
                         backup_root=str(config.backup_root), hosts=len(config.hosts))
                await stop.wait()
                notify("STOPPING=1")
                log.info("daemon.stopping", running=sorted({run.host for run in built.registry.runs()}))
                await built.server.close()  # no new requests; every connection's handlers have ended
                await built.jobs.shutdown()  # running work stopped, partials kept, records written
                built.versions.stop.set()  # a rebuild stops at its next copy
                for task in tasks:
                    task.cancel()
        finally:
            if built is not None:
                built.versions.close()
            logs.forward_to(None)


async def _anchor(store: Store, config: Config) -> str | None:
    """What a previous daemon left: runs it did not finish become interrupted,
    and the audit log is anchored to its head record. Returns the head
    record's disagreement, if any (logged and alerted on by the audit-witness
    loop; the head is kept as evidence)."""
    try:
        interrupted = await store.jobs.mark_interrupted()
    except STORE_ERRORS as e:
        raise StartupError(f"cannot use the state database {config.state_dir / DATABASE_NAME}: {e}") from None
    head = config.backup_root / HEAD_NAME
    uid = os.getuid()
    try:
        mismatch = await store.audit.anchor(head, (uid, user_name(uid), os.getpid()))
    except STORE_ERRORS as e:
        raise StartupError(f"cannot anchor the audit log in {head}: {e}") from None
    if interrupted:
        log.warning("daemon.recovered", interrupted_runs=interrupted)
    return mismatch


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
