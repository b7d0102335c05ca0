"""The supervisor's pure bookkeeping: restart with back-off, health, recovery."""

import asyncio

from bkd.infra import supervise


async def test_a_loop_that_fails_is_restarted_reported_and_recovers(monkeypatch):
    monkeypatch.setattr(supervise, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(supervise, "RECOVERED_AFTER", 0.05)
    failures, recoveries, runs = [], [], []

    async def failed(name, incident, error):
        failures.append((name, incident, str(error)))

    async def recovered(name):
        recoveries.append(name)

    async def loop():
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ValueError(f"bug {len(runs)}")
        await asyncio.sleep(10)

    supervisor = supervise.Supervisor(failed, recovered)
    task = asyncio.create_task(supervisor.supervise("demo", loop))
    await asyncio.sleep(0.3)
    assert [(n, e) for n, _, e in failures] == [("demo", "bug 1"), ("demo", "bug 2")]
    assert len({incident for _, incident, _ in failures}) == 2
    assert recoveries == ["demo"] and supervisor.healthy()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_five_failures_within_the_window_make_the_daemon_unhealthy(monkeypatch):
    monkeypatch.setattr(supervise, "FIRST_DELAY", 0.001)
    monkeypatch.setattr(supervise, "MAX_DELAY", 0.001)

    async def ignore(*args):
        pass

    async def broken():
        raise RuntimeError("always")

    supervisor = supervise.Supervisor(ignore, ignore)
    task = asyncio.create_task(supervisor.supervise("broken", broken))
    while len(supervisor.failures.get("broken", ())) < 4:
        await asyncio.sleep(0.001)
    assert supervisor.healthy()
    while supervisor.healthy():
        await asyncio.sleep(0.001)
    assert len(supervisor.failures["broken"]) == supervise.FAILURES
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_loop_woken_and_cancelled_in_the_same_instant_ends():
    """Issue 18, item 11: at shutdown the daemon's last work wakes a loop and
    the loop is cancelled before it runs again; the cancellation must win (it
    did not with asyncio.wait_for on Python 3.11, and the daemon never exited)."""
    wake = asyncio.Event()
    passes = []

    async def loop():
        while True:
            wake.clear()
            passes.append(len(passes))
            await supervise.woken(wake, 3600)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    wake.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled() and passes == [0]


async def test_woken_says_whether_the_event_came_or_the_time_ran_out():
    wake = asyncio.Event()
    assert await supervise.woken(wake, 0.01) is False
    wake.set()
    assert await supervise.woken(wake, 10) is True
    assert await supervise.woken(wake, None) is True


def test_no_daemon_code_waits_with_asyncio_wait_for():
    """The daemon runs on Python 3.11 (Debian 12), whose wait_for can lose a
    cancellation; supervise.woken and asyncio.timeout do not."""
    from pathlib import Path
    package = Path(supervise.__file__).parent
    users = [str(p.relative_to(package)) for p in package.rglob("*.py") if "asyncio.wait_for(" in p.read_text()]
    assert users == []
