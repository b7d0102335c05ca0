"""The registry (busy is decided and registered in one step), the resizable
limit, and what a run and a job show."""

import asyncio
import json

import pytest

from bkctl.protocol import Kind, Status
from bkd.infra.errors import Busy, ShuttingDown
from bkd.runs.plan import Lane, Request, Trigger
from bkd.runs.registry import Limit, Registry, job_status


def requests(kind, *hosts, snapshot=None):
    return [Request(h, kind, Trigger.MANUAL, snapshot=snapshot) for h in hosts]


def test_a_second_claim_of_the_same_lane_is_refused_or_coalesced():
    registry = Registry(next_job_id=10)
    first = registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a", "b"))
    assert first.job_id == 10 and registry.busy_run("a", Lane.SNAPSHOT) is first.runs["a"]
    with pytest.raises(Busy) as refused:
        registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "b", "c"))
    assert refused.value.data == {"hosts": ["b"], "job_ids": [10]}
    # A scheduled claim leaves the busy host out.
    scheduled = registry.claim(Kind.SNAPSHOT, Trigger.SCHEDULE,
                               [Request(h, Kind.SNAPSHOT, Trigger.SCHEDULE) for h in ("b", "c")])
    assert list(scheduled.runs) == ["c"] and scheduled.job_id == 11
    assert registry.claim(Kind.SNAPSHOT, Trigger.SCHEDULE, [Request("a", Kind.SNAPSHOT, Trigger.SCHEDULE)]) is None


def test_lanes_are_independent_and_kind_all_holds_both_until_it_frees_the_snapshot_lane():
    registry = Registry(1)
    heavy = registry.claim(Kind.ARCHIVE, Trigger.MANUAL, requests(Kind.ARCHIVE, "a", snapshot="2026-01-01_000000"))
    registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a"))  # beside the archive
    with pytest.raises(Busy):
        registry.claim(Kind.MONTHLY, Trigger.MANUAL, requests(Kind.MONTHLY, "a"))
    assert registry.pinned("a") == {"2026-01-01_000000"}
    registry.release_all(heavy.runs["a"])
    both = registry.claim(Kind.ALL, Trigger.MANUAL, requests(Kind.ALL, "b"))
    run = both.runs["b"]
    with pytest.raises(Busy):
        registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "b"))
    registry.release(run, Lane.SNAPSHOT)  # its snapshot is done
    registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "b"))
    with pytest.raises(Busy):
        registry.claim(Kind.ARCHIVE, Trigger.MANUAL, requests(Kind.ARCHIVE, "b"))


def test_nothing_is_claimed_while_stopping():
    registry = Registry(1)
    registry.stopping = True
    with pytest.raises(ShuttingDown):
        registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a"))


async def test_a_lowered_limit_lets_nothing_start_until_fewer_than_it_run():
    limit = Limit(2)
    await limit.acquire()
    await limit.acquire()
    order = []

    async def waiter(name):
        await limit.acquire()
        order.append(name)

    tasks = [asyncio.create_task(waiter(n)) for n in ("x", "y")]
    await asyncio.sleep(0)
    limit.resize(1)  # two hold it; the new limit is one
    limit.release()
    await asyncio.sleep(0)
    assert order == [] and limit.in_use == 1  # one still running: at the limit, nothing starts
    limit.release()
    await asyncio.sleep(0)
    assert order == ["x"] and limit.in_use == 1  # FIFO
    limit.resize(3)
    await asyncio.sleep(0)
    assert order == ["x", "y"] and limit.in_use == 2
    await asyncio.gather(*tasks)


async def test_a_waiter_cancelled_just_before_a_release_ends_cancelled():
    """Cancelled, then passed over by a release in the same instant: the
    queued run ends interrupted, not failed with a ValueError (which counted
    as a failure and raised a run_failed alert)."""
    limit = Limit(1)
    await limit.acquire()
    task = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    task.cancel()  # cancelled first ...
    limit.release()  # ... then the release pops its (cancelled) waiter
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limit.in_use == 0 and limit.waiting == 0


async def test_a_cancelled_waiter_gives_back_a_slot_it_was_just_granted():
    limit = Limit(1)
    await limit.acquire()
    task = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    limit.release()  # grants the slot to the waiter ...
    task.cancel()  # ... which is cancelled in the same instant
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limit.in_use == 0


@pytest.mark.parametrize("statuses, expected", [
    ([Status.OK, Status.RUNNING, Status.FAILED], Status.RUNNING),  # unfinished work first
    ([Status.OK, Status.QUEUED], Status.QUEUED),
    ([Status.OK, Status.FAILED, Status.INTERRUPTED], Status.INTERRUPTED),
    ([Status.CANCELLED, Status.FAILED, Status.WARNING], Status.FAILED),
    ([Status.OK, Status.CANCELLED, Status.SKIPPED], Status.CANCELLED),
    ([Status.OK, Status.WARNING, Status.SKIPPED], Status.WARNING),
    ([Status.OK, Status.SKIPPED], Status.OK),
    ([Status.SKIPPED], Status.SKIPPED),
])
def test_a_jobs_status_is_the_worst_of_its_runs(statuses, expected):
    assert job_status(statuses) == expected


def test_what_every_role_sees_of_a_run_leaves_out_its_detail_and_listing():
    registry = Registry(1)
    job = registry.claim(Kind.RESTORE, Trigger.MANUAL, requests(Kind.RESTORE, "a"))
    run = job.runs["a"]
    run.status, run.error = Status.FAILED, "restore: rsync exited with code 23 (partial transfer due to error)"
    run.detail, run.listing = "restore: rsync exited with code 23: /home/alice/secret.txt", ["home/alice/secret.txt"]
    public = json.dumps(job.record(detail=False))
    assert "secret" not in public and "rsync exited with code 23" in public
    assert "detail" not in job.record(detail=False)["hosts"][0]
    admin = job.record()["hosts"][0]
    assert (admin["detail"], admin["listing"]) == (run.detail, run.listing)


def test_memory_keeps_a_job_until_every_run_has_ended_and_finds_unfinished_runs_by_host_or_job():
    registry = Registry(5)
    job = registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a", "b"))
    other = registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "c"))
    assert {r.host for r in registry.find(job_id=5)} == {"a", "b"}
    assert {r.host for r in registry.find(hosts=["b", "c"])} == {"b", "c"}
    job.runs["a"].status = Status.OK
    assert [r.host for r in registry.find(job_id=5)] == ["b"] and len(registry.runs()) == 2
    registry.forget(5)
    assert 5 in registry.jobs  # b still runs
    job.runs["b"].status = Status.CANCELLED
    registry.forget(5)
    assert list(registry.jobs) == [other.job_id]


def test_a_run_that_no_longer_holds_a_lane_cannot_free_it_for_the_run_that_does():
    registry = Registry(1)
    first = registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a")).runs["a"]
    registry.release_all(first)
    second = registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a")).runs["a"]
    registry.release(first, Lane.SNAPSHOT)  # late, from the first run's cleanup
    assert registry.busy_run("a", Lane.SNAPSHOT) is second


def test_a_refused_claim_uses_no_job_id():
    registry = Registry(7)
    registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a"))
    with pytest.raises(Busy):
        registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "a"))
    assert registry.claim(Kind.SNAPSHOT, Trigger.SCHEDULE, [Request("a", Kind.SNAPSHOT, Trigger.SCHEDULE)]) is None
    assert registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, requests(Kind.SNAPSHOT, "b")).job_id == 8
