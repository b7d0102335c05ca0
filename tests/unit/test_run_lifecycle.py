"""A run's lifecycle (runs/lifecycle.py) as the worker tells it: the
progress throttle. (Its conclusion, whatever the store does, and the
listeners that follow it: test_jobs.py.) Real Registry, Limits, Lifecycle,
Worker and Runtime; fake stages."""

import asyncio
import time

from runcore import Core, host, until

from bkd.runs import lifecycle as lifecycle_module
from bkd.runs.plan import Stage


async def test_progress_is_published_at_most_twice_a_second_newest_value_kept_none_after_the_stage(
        tmp_path, monkeypatch):
    assert lifecycle_module.PROGRESS_EVERY == 0.5  # the contract: at most two events a second per run
    every = 0.05  # the same throttle, ten times faster, so that the test takes a fraction of a second
    monkeypatch.setattr(lifecycle_module, "PROGRESS_EVERY", every)
    core = Core(tmp_path, [host("a", tmp_path)])
    progress = lambda: core.events.of("progress")  # noqa: E731
    stamps = []  # when the lifecycle published each, by its own clock (ours may be late under load)

    def publish(topic, **data):
        if topic == "progress":
            stamps.append(core.registry.jobs[data["job_id"]].runs[data["host"]].progress_published)
        core.events(topic, **data)

    core.lifecycle.publish = publish

    async def snapshot(run):
        core.progress(run, {"percent": 1})  # the first goes out at once
        for percent in range(2, 10):  # these come within its window: only the newest goes out, when it ends
            core.progress(run, {"percent": percent})
        await until(lambda: len(progress()) == 2, "the newest value at the end of the window")
        for percent in range(10, 19):  # a steady stream for a few windows
            core.progress(run, {"percent": percent})
            await asyncio.sleep(every / 4)
        await until(lambda: progress()[-1]["progress"] == {"percent": 18}
                    and time.monotonic() - run.progress_published > every, "the stream's last value")
        core.progress(run, {"percent": 19})  # the window is over: out at once
        core.progress(run, {"percent": 20})  # in the same instant: waits for the window to end ...
        # ... and the stage ends first: it is dropped, not sent late

    core.stages.on("a", Stage.SNAPSHOT, snapshot)
    run = core.start("a", dry_run=True)  # one stage: nothing after it resets the progress
    await run.task
    sent = [event["progress"]["percent"] for event in progress()]
    assert sent[:2] == [1, 9] and sent[-1] == 19 and 20 not in sent
    assert all(event["stage"] == "snapshot" and event["host"] == "a" for event in progress())
    # The loop's timers may fire up to its clock resolution early.
    assert len(stamps) == len(sent) and all(later - earlier >= every - 0.001
                                            for earlier, later in zip(stamps, stamps[1:]))
    await asyncio.sleep(3 * every)  # nothing may follow: a timer still set would fire before this sleep ends
    assert len(progress()) == len(sent)
