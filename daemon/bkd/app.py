"""The composition root: config → store → engine → RPC server → scheduler, and
the lifecycle around them (ready, signals, shutdown)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from pathlib import Path

import structlog

from . import __version__, clock, logs
from .config import Config, ConfigError, load_config
from .config.models import RESTART_ONLY, describe_changes
from .engine import Engine
from .fsutil import make_private_dir
from .pipeline.rsync import check_rsync
from .rpc.methods import Api, method_table
from .rpc.server import RpcServer
from .scheduler import next_runs, run_schedule, watch_freshness
from .store import Store
from .systemd import keep_alive, notify, watchdog_interval

log = structlog.get_logger()

LOCK_NAME = ".bkd.lock"
DATABASE_NAME = "bkd.sqlite"


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def lock_backup_root(backup_root: Path) -> int:
    """One daemon per backup root, held by the kernel for as long as we live."""
    make_private_dir(backup_root)
    path = backup_root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(
            f"another bkd (pid {holder}) is already running on backup root {backup_root} "
            f"(it holds the lock on {path})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon:
    def __init__(self, config_path: Path, config: Config):
        self.config_path = config_path
        self.config = config
        self.started = clock.now()
        self.rsync_version = ""
        self.engine: Engine | None = None

    async def reload(self) -> dict:
        """Re-read the config; swap it in only when it is valid. Running work
        goes on with the settings it started with."""
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as e:
                errors = [str(problem) for problem in e.problems]
                log.error("config.reload_failed", errors=errors)
                return {"ok": False, "changes": [], "errors": errors}
            fixed = [key for key in RESTART_ONLY if getattr(new, key) != getattr(self.config, key)]
            if fixed:
                errors = [f"{self.config_path}:{key}: cannot change while bkd runs "
                          f"(still {getattr(self.config, key)}); restart bkd" for key in fixed]
                log.error("config.reload_failed", errors=errors)
                return {"ok": False, "changes": [], "errors": errors}
            changes = describe_changes(self.config, new)
            self.config = new
            self.engine.reconfigure(new)
            log.info("config.reloaded", changes=changes)
            return {"ok": True, "changes": changes, "errors": []}
        finally:
            notify("READY=1", f"STATUS={self.status_line()}")

    def status_line(self) -> str:
        """One line for `systemctl status`: e.g. "3 hosts, 1 running, next 14:00"."""
        engine = self.engine
        if engine is None:
            return "starting"
        line = f"{len(engine.config.host)} hosts, {len(engine.runs)} running"
        upcoming = [when for host, when in next_runs(engine, clock.now()).items() if host not in engine.runs]
        if upcoming:
            line += f", next {min(upcoming).strftime('%H:%M')} UTC"
        return line

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        try:
            self.rsync_version = await asyncio.to_thread(check_rsync)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
        lock_fd = lock_backup_root(config.backup_root)
        store = await Store.open(config.state_dir / DATABASE_NAME)
        try:
            interrupted = await store.mark_interrupted()
            if interrupted:
                log.warning("daemon.recovered", interrupted_runs=interrupted)
            self.engine = engine = Engine(config, store)
            logs.forward_to(engine.bus.publish)
            server = RpcServer(config.socket, method_table(Api(self)),
                               access=lambda: engine.config.access, audit=store.append_audit)
            try:
                await server.start()
            except (RuntimeError, OSError) as e:
                raise StartupError(f"cannot listen on {config.socket}: {e}") from None
            notify("READY=1", f"STATUS={self.status_line()}")
            log.info("daemon.ready", version=__version__, socket=str(config.socket),
                     backup_root=str(config.backup_root), hosts=len(config.host))
            background = [asyncio.create_task(run_schedule(engine), name="scheduler"),
                          asyncio.create_task(engine.collector.run(), name="trash"),
                          asyncio.create_task(engine.run_sampler(), name="verify-sample"),
                          asyncio.create_task(watch_freshness(engine), name="freshness"),
                          asyncio.create_task(keep_alive(self.status_line, watchdog_interval()),
                                              name="watchdog")]
            await stop.wait()
            notify("STOPPING=1")
            log.info("daemon.stopping", running=sorted(engine.runs))
            await server.close()
            for task in background:
                task.cancel()
            await engine.shutdown()
            await asyncio.gather(*background, return_exceptions=True)
        finally:
            logs.forward_to(None)
            await store.close()
            os.close(lock_fd)
        log.info("daemon.stopped")


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
        task = asyncio.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await daemon.run(stop)
