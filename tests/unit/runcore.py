"""The run core as app.py wires it, for its unit tests: a real Runtime (a
config file that can be reloaded), Registry, Limits, Fleet, Lifecycle and
Worker, whose stage table is replaced by fake stages the test controls, and
fakes for what the core tells the world (events, alerts, the record). No
rsync, no daemon, no socket.

The worker's stages and the tasks that follow a run's end are private
(`Worker._stages`, `Lifecycle._aftermath`): this module is the one place
that reaches them."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
from pathlib import Path

import tomli_w

from bkctl.protocol import Kind
from bkd.config import load_config
from bkd.config.runtime import Runtime
from bkd.restore.receivers import Receivers
from bkd.runs.lifecycle import Lifecycle
from bkd.runs.plan import Request, Stage, Trigger
from bkd.runs.registry import Limits, Registry, Run
from bkd.runs.worker import Worker
from bkd.state.hosts import Fleet

TIMEOUT = 10.0  # seconds any awaited condition may take on a loaded machine


async def until(predicate, what: str = "the condition", timeout: float = TIMEOUT):
    """Wait until predicate() (or what it returns, when awaitable) is true,
    looking again every couple of milliseconds; its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


async def settled(lifecycle) -> None:
    """Wait until what follows the runs that ended (record, alerts) is done."""
    await until(lambda: not lifecycle._aftermath, "the aftermath of the runs that ended")


class Events:
    """A fake `publish`: every event, with the loop's time it was published at."""

    def __init__(self):
        self.published: list[tuple[float, str, dict]] = []

    def __call__(self, topic: str, **data) -> None:
        self.published.append((asyncio.get_running_loop().time(), topic, data))

    def of(self, topic: str) -> list[dict]:
        return [data for _, t, data in self.published if t == topic]

    def times(self, topic: str) -> list[float]:
        return [time for time, t, _ in self.published if t == topic]


class Stages:
    """A fake stage table. Each (host, stage) does what the test chose:
    "ok" (the default), "hang" (until released or cancelled; a cancel cleans
    up over a few turns of the loop, as removing a partial would), an
    exception to raise, or an async function of the run."""

    def __init__(self):
        self.behaviour: dict[tuple[str, Stage], object] = {}
        self.calls: list[tuple[str, Stage]] = []
        self.results_seen: dict[tuple[str, Stage], object] = {}  # run.result as each stage began
        self.cleaned: list[tuple[str, Stage]] = []
        self._entered: dict[tuple[str, Stage], asyncio.Event] = {}
        self._gates: dict[tuple[str, Stage], asyncio.Event] = {}

    def on(self, host: str, stage: Stage, behaviour) -> None:
        self.behaviour[(host, stage)] = behaviour

    def table(self) -> dict:
        return {stage: functools.partial(self._stage, stage) for stage in Stage}

    def of(self, host: str) -> list[Stage]:
        return [stage for h, stage in self.calls if h == host]

    def _event(self, events: dict, key) -> asyncio.Event:
        return events.setdefault(key, asyncio.Event())

    async def reached(self, host: str, stage: Stage) -> None:
        await asyncio.wait_for(self._event(self._entered, (host, stage)).wait(), TIMEOUT)

    def release(self, host: str, stage: Stage) -> None:
        self._event(self._gates, (host, stage)).set()

    async def _stage(self, stage: Stage, run: Run) -> None:
        key = (run.host, stage)
        self.calls.append(key)
        self.results_seen[key] = run.result
        self._event(self._entered, key).set()
        what = self.behaviour.get(key, "ok")
        if isinstance(what, BaseException):
            raise copy.copy(what)  # a fresh one each time, with what the stage put on it
        if callable(what):
            await what(run)
        elif what == "hang":
            try:
                await self._event(self._gates, key).wait()
            except asyncio.CancelledError:
                for _ in range(3):
                    await asyncio.sleep(0)
                self.cleaned.append(key)
                raise


class FakeRecorder:
    """A record that is written at once, nowhere (the worker's tests need no store)."""

    async def save(self, job) -> bool:
        return True


class FakeAlerts:
    """What Jobs tells the alert service, as calls."""

    def __init__(self):
        self.calls: list[tuple] = []

    async def raise_(self, kind, host, message, subject=None, count=None):
        self.calls.append(("raise", str(kind), host, message, subject, count))

    async def resolve(self, kind, host, subject=None):
        self.calls.append(("resolve", str(kind), host, subject))


class Core:
    """Runtime, registry, limits, lifecycle and a worker with fake stages, as app.py builds them."""

    def __init__(self, tmp_path: Path, hosts: list[dict], **settings):
        self.path = tmp_path / "bkd.toml"
        self.settings = {"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                         "socket": str(tmp_path / "bkd.sock"), **settings}
        self.write(hosts)
        self.runtime = Runtime(self.path, load_config(self.path))
        self.registry = Registry(next_job_id=1)
        self.limits = Limits(self.runtime)
        self.events = Events()
        self.stages = Stages()
        self.fleet = Fleet(self.runtime)
        self.lifecycle = Lifecycle(self.registry, FakeRecorder(), self.fleet, Receivers(), self.events)
        # Housekeeping, store, self-guard and the version index serve only the real stages.
        self.worker = Worker(self.runtime, self.registry, self.limits, self.lifecycle, None, None, self.fleet,
                             Receivers(), None, None)
        self.worker._stages = self.stages.table()

    def write(self, hosts: list[dict], **settings) -> None:
        self.path.write_text(tomli_w.dumps({**self.settings, **settings, "host": hosts}))

    async def reload(self, hosts: list[dict], **settings) -> None:
        self.write(hosts, **settings)
        answer = await self.runtime.reload()
        assert answer["ok"], answer

    @property
    def changes(self) -> list[tuple[str, str, str | None]]:
        """(host, status, stage) of each `host` event: what the lifecycle was told (started, each stage)."""
        return [(e["host"], e["status"], e["stage"]) for e in self.events.of("host")]

    def progress(self, run: Run, value: dict) -> None:
        """What a real stage's rsync reports, through the lifecycle's throttle."""
        self.lifecycle.progress(run, value)

    def start(self, host: str, kind: Kind = Kind.SNAPSHOT, trigger: Trigger = Trigger.MANUAL,
              dry_run: bool = False) -> Run:
        """Claim a run of kind on host and execute it as a task, as the lifecycle
        does for Jobs.start, but with nothing to conclude it when it ends."""
        job = self.registry.claim(kind, trigger, [Request(host, kind, trigger, dry_run)], dry_run)
        run = job.runs[host]
        run.task = asyncio.create_task(self.worker.execute(run))
        return run


def host(name: str, tmp_path: Path, **fields) -> dict:
    return {"name": name, "source": str(tmp_path / f"src-{name}"), **fields}
