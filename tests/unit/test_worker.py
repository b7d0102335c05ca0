"""Executing one run (runs/worker.py): waiting for a slot of its lane,
planning from the config of the moment it leaves the queue, its stages in
order with only the post hook after a failure. Real Registry, Limits,
Lifecycle and Runtime; fake stages."""

import asyncio

import pytest
from runcore import Core, host, until

from bkctl.protocol import Kind, Status
from bkd.pipeline.hooks import HookFailed
from bkd.pipeline.snapshot import SnapshotFailed
from bkd.runs.plan import Lane, Stage


async def test_runs_wait_for_a_slot_of_their_lane_and_start_in_the_order_they_came(tmp_path):
    core = Core(tmp_path, [host(n, tmp_path) for n in ("a", "b", "c")], max_parallel_hosts=1)
    for name in ("a", "b", "c"):
        core.stages.on(name, Stage.SNAPSHOT, "hang")
    c, a, b = (core.start(name) for name in ("c", "a", "b"))  # not in name order
    await core.stages.reached("c", Stage.SNAPSHOT)
    await until(lambda: core.limits[Lane.SNAPSHOT].waiting == 2, "two runs waiting for the slot")
    assert (c.status, a.status, b.status) == (Status.RUNNING, Status.QUEUED, Status.QUEUED)
    assert core.stages.of("a") == core.stages.of("b") == [] and a.plan is None and a.started is None
    # Another lane has its own limit: heavy work on the same host starts beside the snapshot.
    heavy = core.start("c", Kind.ARCHIVE)
    await core.stages.reached("c", Stage.ARCHIVE)

    core.stages.release("c", Stage.SNAPSHOT)
    await core.stages.reached("a", Stage.SNAPSHOT)
    assert b.status is Status.QUEUED and core.stages.of("b") == []
    core.stages.release("a", Stage.SNAPSHOT)
    await core.stages.reached("b", Stage.SNAPSHOT)
    core.stages.release("b", Stage.SNAPSHOT)
    core.stages.release("c", Stage.ARCHIVE)
    await asyncio.gather(c.task, a.task, b.task, heavy.task)
    assert core.limits[Lane.SNAPSHOT].in_use == 0 and core.limits[Lane.HEAVY].in_use == 0
    # No run looks as if it started before the one whose slot it took had finished.
    assert c.finished <= a.started and a.finished <= b.started
    assert [change for change in core.changes if change[0] == "a"] == [
        ("a", "running", None), ("a", "running", Stage.SNAPSHOT), ("a", "running", Stage.PRUNE)]
    # The worker leaves the outcome on the run; the caller concludes it.
    assert (a.status, a.result) == (Status.RUNNING, Status.OK)


async def test_a_run_is_planned_from_the_config_of_the_moment_it_leaves_the_queue(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path), host("b", tmp_path)], max_parallel_hosts=1)
    core.stages.on("a", Stage.SNAPSHOT, "hang")
    a, b = core.start("a"), core.start("b")
    await core.stages.reached("a", Stage.SNAPSHOT)
    before = core.runtime.config
    # A reload while b waits gives both hosts a post hook and b another retention.
    await core.reload([host("a", tmp_path, post="true"),
                       host("b", tmp_path, post="true", retention={"hourly_hours": 5})])
    core.stages.release("a", Stage.SNAPSHOT)
    await asyncio.gather(a.task, b.task)
    # a was planned before the reload: its plan (and so its stages) did not change.
    assert a.plan.config is before and core.stages.of("a") == [Stage.SNAPSHOT, Stage.PRUNE]
    assert b.plan.config is core.runtime.config and b.plan.settings.retention.hourly_hours == 5
    assert core.stages.of("b") == [Stage.SNAPSHOT, Stage.PRUNE, Stage.POST]


async def test_a_run_whose_host_was_removed_while_it_waited_is_skipped(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path), host("b", tmp_path)], max_parallel_hosts=1)
    core.stages.on("a", Stage.SNAPSHOT, "hang")
    a, b = core.start("a"), core.start("b")
    await core.stages.reached("a", Stage.SNAPSHOT)
    await core.reload([host("a", tmp_path)])
    core.stages.release("a", Stage.SNAPSHOT)
    await asyncio.gather(a.task, b.task)
    assert b.result is Status.SKIPPED and b.plan is None and b.started is None
    assert b.error == "the host was removed from the config before the run started"
    assert core.stages.of("b") == [] and ("b", "running", None) not in core.changes
    assert core.limits[Lane.SNAPSHOT].in_use == 0


@pytest.mark.parametrize("failing, stages, result", [
    (Stage.PRE, [Stage.PRE, Stage.POST], Status.FAILED),
    (Stage.SNAPSHOT, [Stage.PRE, Stage.SNAPSHOT, Stage.POST], Status.FAILED),
    (Stage.PRUNE, [Stage.PRE, Stage.SNAPSHOT, Stage.PRUNE, Stage.POST], Status.FAILED),
    (Stage.POST, [Stage.PRE, Stage.SNAPSHOT, Stage.PRUNE, Stage.POST], Status.WARNING),  # the backup is fine
])
async def test_after_a_failed_stage_only_the_post_hook_runs_and_it_learns_the_result(tmp_path, failing, stages,
                                                                                    result):
    core = Core(tmp_path, [host("a", tmp_path, pre="true", post="true")])
    message = f"{failing}: rsync exited with code 12 (error in rsync protocol data stream): /srv/secret-name"
    core.stages.on("a", failing, HookFailed(message) if failing in (Stage.PRE, Stage.POST) else SnapshotFailed(message))
    run = core.start("a")
    await run.task
    assert core.stages.of("a") == stages
    assert run.result is result
    if failing is not Stage.POST:
        assert core.stages.results_seen[("a", Stage.POST)] is Status.FAILED
    # Every role sees the category; the file name is only in the detail (admins).
    assert run.error == f"{failing}: rsync exited with code 12 (error in rsync protocol data stream)"
    assert run.detail == message and "secret-name" not in run.error


async def test_a_post_hook_failing_after_a_failed_run_leaves_it_failed_with_both_errors(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path, post="true")])
    core.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot: /x"))
    core.stages.on("a", Stage.POST, HookFailed("post hook exited with code 3"))
    run = core.start("a")
    await run.task
    assert run.result is Status.FAILED
    assert run.error == "snapshot: cannot complete the snapshot; post hook exited with code 3"
    assert run.detail == "snapshot: cannot complete the snapshot: /x; post hook exited with code 3"


async def test_a_failed_snapshot_phase_does_not_start_the_heavy_phase(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path)])
    core.stages.on("a", Stage.SNAPSHOT, SnapshotFailed("snapshot: cannot complete the snapshot"))
    run = core.start("a", Kind.ALL)
    await run.task
    assert core.stages.of("a") == [Stage.SNAPSHOT] and run.result is Status.FAILED
    assert run.lanes == (Lane.HEAVY,) and core.limits[Lane.HEAVY].in_use == 0


async def test_kind_all_frees_the_snapshot_lane_for_the_next_snapshot_while_its_heavy_work_waits(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path), host("b", tmp_path)], max_parallel_heavy=1)
    core.stages.on("b", Stage.ARCHIVE, "hang")
    busy = core.start("b", Kind.ARCHIVE)  # holds the only heavy slot
    await core.stages.reached("b", Stage.ARCHIVE)
    run = core.start("a", Kind.ALL)
    await until(lambda: core.limits[Lane.HEAVY].waiting == 1, "a's heavy phase waiting for its slot")
    assert core.stages.of("a") == [Stage.SNAPSHOT, Stage.PRUNE]
    assert core.registry.busy_run("a", Lane.SNAPSHOT) is None and core.registry.busy_run("a", Lane.HEAVY) is run
    assert core.limits[Lane.SNAPSHOT].in_use == 0
    core.stages.release("b", Stage.ARCHIVE)
    await asyncio.gather(busy.task, run.task)
    assert core.stages.of("a") == [Stage.SNAPSHOT, Stage.PRUNE, Stage.ARCHIVE, Stage.MONTHLY]


async def test_a_bug_in_a_stage_reaches_the_caller_and_gives_the_slot_back(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path, post="true"), host("b", tmp_path)], max_parallel_hosts=1)
    core.stages.on("a", Stage.SNAPSHOT, KeyError("a bug"))
    a, b = core.start("a"), core.start("b")
    with pytest.raises(KeyError):
        await a.task
    await b.task
    assert core.stages.of("a") == [Stage.SNAPSHOT]  # not a stage failure: nothing else runs
    assert core.stages.of("b") == [Stage.SNAPSHOT, Stage.PRUNE] and a.finished is not None


async def test_a_cancelled_run_gives_its_slot_to_the_next_after_cleaning_up(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path, post="true"), host("b", tmp_path)], max_parallel_hosts=1)
    core.stages.on("a", Stage.SNAPSHOT, "hang")
    a, b = core.start("a"), core.start("b")
    await core.stages.reached("a", Stage.SNAPSHOT)
    a.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a.task
    assert core.stages.cleaned == [("a", Stage.SNAPSHOT)] and core.stages.of("a") == [Stage.SNAPSHOT]
    await b.task
    assert core.stages.of("b") == [Stage.SNAPSHOT, Stage.PRUNE] and a.finished <= b.started
