"""Starting, cancelling and concluding jobs (runs/jobs.py, runs/lifecycle.py):
the claim that decides busy, cancel and shutdown, a bug concluding its run
with an incident id, a failing store that never strands a run, and the
alert rules that follow a run's end (watch/runs.py). Real Registry, Limits,
Lifecycle, Worker (fake stages), Recorder on a temporary SQLite and Fleet;
a fake alert sink."""

import asyncio
import re

import pytest
from runcore import Core, FakeAlerts, host, settled, until
from structlog.testing import capture_logs

from bkctl.protocol import ErrorCode, Kind, Status
from bkd.alerts.notify.ping import Pinger
from bkd.infra.errors import Busy, NotFound, ShuttingDown
from bkd.pipeline import failures
from bkd.pipeline.archive import StageFailed
from bkd.pipeline.snapshot import SnapshotFailed
from bkd.rpc.server import WIRE_CODES
from bkd.runs.jobs import Jobs
from bkd.runs.plan import Lane, Stage, Trigger
from bkd.runs.recorder import Recorder
from bkd.state.store import Store
from bkd.watch.runs import RunWatch

MANUAL, SCHEDULE = Trigger.MANUAL, Trigger.SCHEDULE
INCIDENT = re.compile(r"internal error \(incident ([0-9a-f]{12}); see the daemon's log\)")


class Harness(Core):
    """The run core with Jobs on top, as app.py wires it."""

    async def open(self, tmp_path) -> "Harness":
        self.store = await Store.open(tmp_path / "bkd.sqlite")
        self.fleet.store = self.store
        self.recorder = self.lifecycle.recorder = Recorder(self.store, self.registry, self.fleet.records)
        self.alerts = FakeAlerts()
        RunWatch(self.runtime, self.lifecycle, self.fleet, self.alerts, Pinger())
        self.jobs = Jobs(self.runtime, self.registry, self.lifecycle, self.worker, self.recorder, self.fleet)
        return self

    async def run(self, hosts, kind=Kind.SNAPSHOT, trigger=MANUAL, **options) -> dict:
        """Start a job, wait for its end and what follows it; its record."""
        job_id = await self.jobs.start(hosts, kind, trigger, **options)
        await self.finished(job_id)
        return await self.jobs.get(job_id)

    async def finished(self, job_id: int) -> None:
        await until(lambda: any(e["job_id"] == job_id and e["job"]["finished"] for e in self.events.of("job")),
                    f"job {job_id} to finish")
        await settled(self.lifecycle)


@pytest.fixture
async def build(tmp_path):
    made = []

    async def make(names=("a",), hosts=None, **settings) -> Harness:
        harness = await Harness(tmp_path, hosts or [host(n, tmp_path) for n in names], **settings).open(tmp_path)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.store.close()


async def test_two_starts_in_the_same_instant_one_wins_and_the_other_is_refused_busy(build):
    h = await build()
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    results = await asyncio.gather(h.jobs.start(["a"], Kind.SNAPSHOT, MANUAL),
                                   h.jobs.start(["a"], Kind.SNAPSHOT, MANUAL), return_exceptions=True)
    (winner,) = [r for r in results if isinstance(r, int)]
    (refused,) = [r for r in results if isinstance(r, Busy)]
    assert refused.data == {"hosts": ["a"], "job_ids": [winner]} and refused.message == "already running: a"
    assert WIRE_CODES[Busy] == ErrorCode.BUSY == -32001
    assert list(h.registry.jobs) == [winner] and len(h.events.of("job")) == 1
    await h.stages.reached("a", Stage.SNAPSHOT)
    assert h.stages.of("a") == [Stage.SNAPSHOT]


async def test_a_manual_start_that_finds_one_host_busy_starts_none_of_them(build):
    h = await build(["a", "b"])
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    first = await h.jobs.start(["a"], Kind.SNAPSHOT, MANUAL)
    with pytest.raises(Busy) as refused:
        await h.jobs.start(["b", "a"], Kind.SNAPSHOT, MANUAL)
    assert refused.value.data == {"hosts": ["a"], "job_ids": [first]}
    assert list(h.registry.jobs) == [first] and h.registry.busy_run("b", Lane.SNAPSHOT) is None
    # Another lane of the busy host is free: its heavy work starts.
    assert await h.jobs.start(["a"], Kind.ARCHIVE, MANUAL) == first + 1


async def test_a_scheduled_start_leaves_busy_hosts_out_and_starts_nothing_when_all_are_busy(build):
    h = await build(["a", "b"])
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    busy = await h.jobs.start(["a"], Kind.SNAPSHOT, SCHEDULE)
    coalesced = await h.jobs.start(None, Kind.SNAPSHOT, SCHEDULE)
    assert coalesced == busy + 1 and list(h.registry.jobs[coalesced].runs) == ["b"]
    await h.finished(coalesced)
    assert await h.jobs.start(["a"], Kind.SNAPSHOT, SCHEDULE) is None
    assert sorted(h.registry.jobs) == [busy] and h.stages.of("a") == [Stage.SNAPSHOT]
    assert [e["job_id"] for e in h.events.of("job")] == [busy, coalesced, coalesced]


async def test_cancel_returns_once_the_runs_have_cleaned_up(build):
    h = await build(["a", "b"], max_parallel_hosts=1)
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    job_id = await h.jobs.start(["a", "b"], Kind.SNAPSHOT, MANUAL)
    await h.stages.reached("a", Stage.SNAPSHOT)  # b waits for the slot
    assert await h.jobs.cancel(job_id=job_id) == ["a", "b"]
    # Cleaned up (the partial removed) and concluded by the time cancel answers.
    assert h.stages.cleaned == [("a", Stage.SNAPSHOT)] and h.stages.of("b") == []
    job = await h.jobs.get(job_id)
    assert job["status"] == "cancelled" and job["finished"]
    assert {r["host"]: (r["status"], r["error"]) for r in job["hosts"]} == {
        "a": ("cancelled", "cancelled during snapshot"), "b": ("cancelled", "cancelled during queue")}
    assert h.registry.busy_run("a", Lane.SNAPSHOT) is None and h.limits[Lane.SNAPSHOT].in_use == 0
    await settled(h.lifecycle)
    assert (await h.store.jobs.get(job_id))["status"] == "cancelled" and h.alerts.calls == []
    assert await h.jobs.cancel(job_id=job_id) == []  # finished: nothing to stop
    with pytest.raises(NotFound):
        await h.jobs.cancel(job_id=job_id + 1)
    with pytest.raises(NotFound):
        await h.jobs.cancel(hosts=["nosuchhost"])


async def test_a_bug_in_a_run_concludes_it_failed_with_an_incident_id_that_is_in_the_log(build):
    h = await build()
    h.stages.on("a", Stage.SNAPSHOT, KeyError("a bug"))
    with capture_logs() as logs:
        job = await h.run(["a"])
    (run,) = job["hosts"]
    incident = INCIDENT.fullmatch(run["error"])[1]
    assert (job["status"], run["status"], run["detail"]) == ("failed", "failed", run["error"])
    (logged,) = [entry for entry in logs if entry["event"] == "run.internal_error"]
    assert logged["incident"] == incident and isinstance(logged["exc_info"][1], KeyError)
    assert (await h.store.jobs.get(job["job_id"]))["hosts"][0]["error"] == run["error"]  # stored
    assert h.registry.busy_run("a", Lane.SNAPSHOT) is None
    h.stages.on("a", Stage.SNAPSHOT, "ok")
    assert (await h.run(["a"]))["status"] == "ok"  # nothing of it is left holding the host


async def test_shutdown_interrupts_running_and_queued_runs_records_them_and_takes_no_new_work(build):
    h = await build(["a", "b"], max_parallel_hosts=1)
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    job_id = await h.jobs.start(["a", "b"], Kind.SNAPSHOT, MANUAL)
    await h.stages.reached("a", Stage.SNAPSHOT)
    runs = list(h.registry.jobs[job_id].runs.values())
    await h.jobs.shutdown()
    assert h.registry.jobs == {}  # the final record was stored before shutdown returned: memory let go
    assert all(run.keep_partial for run in runs)  # the next run resumes from the partial
    stored = await h.store.jobs.get(job_id)
    assert stored["status"] == "interrupted"
    assert {r["host"]: (r["status"], r["error"]) for r in stored["hosts"]} == {
        "a": ("interrupted", "interrupted during snapshot"), "b": ("interrupted", "interrupted during queue")}
    assert h.stages.cleaned == [("a", Stage.SNAPSHOT)] and h.alerts.calls == []
    with pytest.raises(ShuttingDown):
        await h.jobs.start(["a"], Kind.SNAPSHOT, MANUAL)


async def test_a_store_that_refuses_writes_never_strands_a_run(build):
    h = await build()
    await h.store.db.execute("PRAGMA query_only=1")  # every write fails from here on, as on a full disk
    job = await h.run(["a"])  # its final event is published whatever the database does
    assert job["status"] == "ok" and job["finished"]
    assert job["job_id"] in h.registry.jobs and h.recorder.dirty == {job["job_id"]}
    assert await h.store.jobs.get(job["job_id"]) is None
    await h.store.db.execute("PRAGMA query_only=0")
    await h.jobs.shutdown()  # one last try at what is still unwritten
    assert (await h.store.jobs.get(job["job_id"]))["status"] == "ok" and h.registry.jobs == {}


async def test_the_start_and_end_of_each_run_are_told_once(build):
    h = await build(["a", "b"], max_parallel_hosts=1)
    started, ended = [], []
    h.lifecycle.on_started.append(lambda run: started.append((run.host, run.status)))
    h.lifecycle.on_concluded.append(lambda run: ended.append((run.host, run.status)))
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    job_id = await h.jobs.start(["a", "b"], Kind.SNAPSHOT, MANUAL)
    await h.stages.reached("a", Stage.SNAPSHOT)
    assert started == [("a", Status.RUNNING)] and ended == []  # b is still queued
    h.stages.release("a", Stage.SNAPSHOT)
    await h.finished(job_id)
    assert started == [("a", Status.RUNNING), ("b", Status.RUNNING)]
    assert ended == [("a", Status.OK), ("b", Status.OK)]
    record = h.fleet.record("b")
    assert record.last_status == "ok" and record.last_attempt is not None and record.last_finished is not None


# ---- the alert rules that follow a run's end ---------------------------------------

REFUSED_LOGIN = "rsync exited with code 255 (the SSH connection failed): Permission denied (publickey)."


def refused_by_ssh(message: str = REFUSED_LOGIN, refusal: str = failures.LOGIN) -> SnapshotFailed:
    """A snapshot stage's failure after the ssh client reported a refusal."""
    failed = SnapshotFailed(f"snapshot: {message}")
    failed.refusal = refusal  # what the snapshot stage learnt from ssh itself
    return failed


async def test_run_failed_opens_after_failures_before_alert_failures_in_a_row_and_a_good_run_resolves_it(build):
    h = await build(alerts={"failures_before_alert": 3})
    h.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot: /x"))
    for _ in range(2):
        assert (await h.run(["a"]))["status"] == "failed"
    assert h.alerts.calls == []
    await h.run(["a"])
    await h.run(["a"])
    message = "snapshot run failed ({} in a row): snapshot: cannot complete the snapshot"
    assert h.alerts.calls == [("raise", "run_failed", "a", message.format(3), None, 3),
                              ("raise", "run_failed", "a", message.format(4), None, 4)]
    h.stages.on("a", Stage.SNAPSHOT, "ok")
    await h.run(["a"])
    assert h.alerts.calls[2:] == [("resolve", "run_failed", "a", None), ("resolve", "auth", "a", None)]
    h.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot"))
    await h.run(["a"])  # the streak starts again
    assert len(h.alerts.calls) == 4


async def test_the_alert_rule_takes_its_threshold_from_the_run_s_plan_not_from_a_reload_during_the_run(build):
    h = await build(alerts={"failures_before_alert": 3})

    async def reloaded_then_failed(run):
        await h.reload([host("a", h.path.parent)], alerts={"failures_before_alert": 1})
        raise SnapshotFailed("snapshot: cannot complete the snapshot")

    h.stages.on("a", Stage.SNAPSHOT, reloaded_then_failed)
    await h.run(["a"])
    assert h.alerts.calls == []  # planned with 3: one failure is not enough
    h.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot"))
    await h.run(["a"])  # planned with 1
    assert h.alerts.calls == [("raise", "run_failed", "a",
                               "snapshot run failed (2 in a row): snapshot: cannot complete the snapshot", None, 2)]


async def test_dry_runs_and_cancelled_runs_neither_count_nor_alert(build):
    h = await build(alerts={"failures_before_alert": 2})
    h.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot"))
    await h.run(["a"])
    await h.run(["a"], dry_run=True)
    h.stages.on("a", Stage.SNAPSHOT, "hang")
    job_id = await h.jobs.start(["a"], Kind.SNAPSHOT, MANUAL)
    await h.stages.reached("a", Stage.SNAPSHOT)
    await h.jobs.cancel(["a"])
    await h.finished(job_id)
    assert h.alerts.calls == [] and h.fleet.record("a").consecutive_failures == 1
    h.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot"))
    await h.run(["a"])
    assert h.alerts.calls == [("raise", "run_failed", "a",
                               "snapshot run failed (2 in a row): snapshot: cannot complete the snapshot", None, 2)]


async def test_the_failure_streak_is_counted_once_in_memory_and_the_store_keeps_that_count(build):
    h = await build()
    h.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot"))
    await h.run(["a"])
    await h.run(["a"], dry_run=True)  # neither counts nor resets
    await h.run(["a"])
    stored = lambda: h.store.jobs.host_states()
    assert h.fleet.record("a").consecutive_failures == (await stored())["a"]["consecutive_failures"] == 2
    h.fleet.record("a").consecutive_failures = 7  # as after a restart that loaded 7: memory is the count
    await h.run(["a"])
    assert (await stored())["a"]["consecutive_failures"] == 8
    h.stages.on("a", Stage.SNAPSHOT, "ok")
    await h.run(["a"])
    assert h.fleet.record("a").consecutive_failures == (await stored())["a"]["consecutive_failures"] == 0


@pytest.mark.parametrize("message, refusal", [
    (REFUSED_LOGIN, failures.LOGIN),
    ("rsync exited with code 255 (the SSH connection failed): Host key verification failed.", failures.HOST_KEY),
])
async def test_an_ssh_refusal_raises_auth_at_once_instead_of_run_failed(build, message, refusal):
    h = await build(alerts={"failures_before_alert": 3})
    h.stages.on("a", Stage.SNAPSHOT, refused_by_ssh(message, refusal))
    await h.run(["a"])
    assert h.alerts.calls == [("raise", "auth", "a", failures.auth_message(refusal), None, None)]


async def test_heavy_work_that_fails_raises_run_failed_for_its_kind_at_once_and_resolves_only_that(build):
    h = await build(alerts={"failures_before_alert": 3})
    h.stages.on("a", Stage.ARCHIVE, StageFailed("archive failed (exit 2): tar: /srv/x: Cannot open"))
    h.stages.on("a", Stage.MONTHLY, refused_by_ssh())  # a refusal in heavy work is no auth alert
    await h.run(["a"], Kind.ARCHIVE)
    await h.run(["a"], Kind.MONTHLY)
    assert h.alerts.calls == [
        ("raise", "run_failed", "a", "archive run failed: archive failed (exit 2)", "archive", None),
        ("raise", "run_failed", "a",
         "monthly run failed: monthly: rsync exited with code 255 (the SSH connection failed)", "monthly", None)]
    h.stages.on("a", Stage.ARCHIVE, "ok")
    await h.run(["a"], Kind.ARCHIVE)
    assert h.alerts.calls[2:] == [("resolve", "run_failed", "a", "archive")]
    assert h.fleet.record("a").consecutive_failures == 0  # heavy work is not in the backup streak
