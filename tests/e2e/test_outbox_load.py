"""The outbox under load: 2,000 notifications queued for a receiver that
takes 2 s to answer each. Deliveries stay within the concurrency bound, the
daemon's memory stays flat and scheduled snapshots keep their schedule."""

import asyncio
import time

from bkd.infra import clock
from bkd.alerts.notify.outbox import MAX_PER_SINK
from bkd.state.store import DATABASE_NAME, Store
from conftest import make_tree
from receivers import HttpReceiver

QUEUED = 2000
WINDOW = 30.0  # seconds observed
EVERY = 2  # seconds between scheduled snapshots


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_2000_queued_notifications_for_a_slow_receiver_leave_memory_flat_and_snapshots_on_time(
        tmp_path, daemon_factory):
    slow = HttpReceiver(delay=2.0)
    hosts = [{"name": f"h{i}", "source": str(make_tree(tmp_path / f"src{i}", 20)),
              "schedule": {"enabled": True, "snapshot_every": f"{EVERY}s", "stale_factor": 1000}} for i in range(2)]
    daemon = daemon_factory(hosts, archive={"enabled": False}, monthly={"enabled": False},
                            notify=[{"name": "slow", "type": "webhook", "url": slow.url()}])
    daemon.start()
    daemon.stop()

    async def fill():
        store = await Store.open(daemon.workdir / "state" / DATABASE_NAME)
        now = time.time()
        alert = {"id": None, "kind": "run_failed", "host": "h0", "subject": None, "state": "open", "count": 1,
                 "message": "queued by the load test", "first_seen": clock.iso(clock.now()),
                 "last_seen": clock.iso(clock.now())}
        await store.outbox.enqueue([{"key": f"load-{i}", "sink": "slow", "event": "opened", "episode_id": 100000 + i,
                                     "alert": {**alert, "id": 100000 + i}, "created": clock.iso(clock.now()),
                                     "created_s": now, "next_attempt": now} for i in range(QUEUED)])
        await store.close()

    asyncio.run(fill())
    daemon.start()
    started = time.monotonic()
    rss = []
    while time.monotonic() - started < WINDOW:
        rss.append(_rss_kib(daemon.proc.pid))
        time.sleep(1)
    delivered = len(slow.accepted())
    sink = daemon.bkctl_json("notify")["sinks"][0]

    assert slow.max_in_flight <= MAX_PER_SINK
    assert delivered >= 0.6 * WINDOW / 2.0 * MAX_PER_SINK  # the bound is also used
    assert sink["queued"] >= QUEUED - delivered - MAX_PER_SINK and sink["queued"] <= QUEUED - delivered + MAX_PER_SINK
    settled = rss[5:]
    assert max(settled) - min(settled) < 20 * 1024, f"RSS in KiB: {rss}"

    worst = 0.0
    for host in ("h0", "h1"):
        jobs = [j for j in daemon.call("jobs.list", host=host, limit=1000)["jobs"]
                if j["trigger"] == "schedule" and j["status"] != "interrupted"]  # the first start was cut short
        starts = sorted(clock_seconds(j["started"]) for j in jobs)
        window = [t for t in starts if t >= starts[-1] - (WINDOW - 5)]
        gaps = [b - a for a, b in zip(window, window[1:])]
        assert all(j["status"] == "ok" for j in jobs)
        assert len(window) >= (WINDOW - 5) / (EVERY + 1) and max(gaps) < EVERY + 2, gaps
        worst = max(worst, max(gaps))
    print(f"\nload: delivered {delivered} in {WINDOW:.0f}s at most {slow.max_in_flight} at once; "
          f"RSS {min(settled) // 1024}-{max(settled) // 1024} MiB; queue {sink['queued']}; "
          f"snapshots every {EVERY}s started at most {worst:.2f}s apart")
    slow.stop()


def clock_seconds(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
