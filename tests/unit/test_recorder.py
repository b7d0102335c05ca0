"""Writing job records (bkd.recorder) to a real temporary SQLite: a write the
store refuses leaves the job dirty in memory and the store-sync loop writes
it once the store takes writes again; memory lets go of a job only once its
final record is stored."""

import asyncio

import pytest
from runcore import until
from structlog.testing import capture_logs

from bkctl.protocol import Kind, Status
from bkd.infra import clock
from bkd.runs import recorder as recorder_module
from bkd.runs.plan import Request, Trigger
from bkd.runs.recorder import Recorder
from bkd.runs.registry import Job, Registry
from bkd.state.store import Store


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "bkd.sqlite")
    yield store
    await store.close()


def claim(registry: Registry, *hosts: str) -> Job:
    return registry.claim(Kind.SNAPSHOT, Trigger.MANUAL, [Request(h, Kind.SNAPSHOT, Trigger.MANUAL) for h in hosts])


def conclude(job: Job, *hosts: str) -> None:
    """The runs of hosts (all when none are named) end ok; the job ends with its last."""
    for run in job.runs.values():
        if not hosts or run.host in hosts:
            run.status, run.finished = Status.OK, clock.now()
    if all(run.final for run in job.runs.values()):
        job.finished = clock.now()


async def refuse_writes(store: Store, refuse: bool) -> None:
    """As a full disk would: reads work, every write fails."""
    await store.db.execute(f"PRAGMA query_only={int(refuse)}")


async def test_a_refused_write_stays_dirty_and_the_store_sync_loop_writes_it_once_the_store_takes_writes(
        store, monkeypatch):
    monkeypatch.setattr(recorder_module, "RETRY_SECONDS", 0.01)
    registry = Registry(1)
    recorder = Recorder(store, registry, {})
    attempts = []
    save = store.jobs.save

    async def counted(record, streaks=None):
        attempts.append(record["status"])
        await save(record, streaks)

    monkeypatch.setattr(store.jobs, "save", counted)
    job = claim(registry, "a")
    conclude(job)
    await refuse_writes(store, True)
    sync = asyncio.create_task(recorder.run())
    try:
        with capture_logs() as logs:
            assert await recorder.save(job) is False
            assert recorder.dirty == {job.job_id}
            await until(lambda: len(attempts) >= 4, "the loop retrying")
            assert recorder.dirty == {job.job_id} and registry.jobs == {job.job_id: job}  # kept in memory
            assert await store.jobs.get(job.job_id) is None
            await refuse_writes(store, False)
            await until(lambda: not recorder.dirty, "the loop writing the job")
        assert (await store.jobs.get(job.job_id))["status"] == "ok"
        assert registry.jobs == {}  # its final record is stored: memory let go
        # One error for the outage, one line for the recovery: not one per retry.
        assert [e["event"] for e in logs if e["event"].startswith("store.")] == ["store.write_failed",
                                                                                "store.recovered"]
    finally:
        sync.cancel()


async def test_memory_lets_go_of_a_job_only_once_its_final_record_is_stored(store):
    registry = Registry(1)
    recorder = Recorder(store, registry, {})
    job = claim(registry, "a", "b")
    assert await recorder.save(job) is True and job.job_id in registry.jobs  # running
    conclude(job, "a")
    assert await recorder.save(job) is True and job.job_id in registry.jobs  # b still runs
    # A save that began while b ran and ends after the job did must not drop it.
    early = asyncio.create_task(recorder.save(job))
    await asyncio.sleep(0)  # it took its record and waits for the store
    conclude(job, "b")
    assert await early is True and job.job_id in registry.jobs
    assert (await store.jobs.get(job.job_id))["finished"] is None
    # The final record, refused, then stored at shutdown's last try.
    await refuse_writes(store, True)
    assert await recorder.save(job) is False and job.job_id in registry.jobs
    await recorder.flush()
    assert recorder.dirty == {job.job_id} and job.job_id in registry.jobs  # still refused
    await refuse_writes(store, False)
    await recorder.flush()
    assert recorder.dirty == set() and registry.jobs == {}
    assert (await store.jobs.get(job.job_id))["status"] == "ok"
