"""SIGTERM just as a run concludes (issue 18, item 11): the daemon stops, for
every listener that reacts to a concluded run. Before, a fresh daemon whose
only host failed at once, signalled within milliseconds of `run.done`,
logged `daemon.stopping`, then `alert.opened`, and never exited: the loop
woken by that alert was cancelled in the same instant, and Python 3.11's
asyncio.wait_for swallowed the cancellation."""

import signal
import time

import pytest

from conftest import make_tree
from receivers import HttpReceiver

REPEATS = 4  # it hung 8 times in 8 before; a few tries per listener catch it


@pytest.fixture(scope="module")
def receiver():
    server = HttpReceiver()
    yield server
    server.stop()


LISTENERS = {
    "alerts": lambda receiver, tmp: {},
    "notifications": lambda receiver, tmp: {"notify": [{"name": "hook", "type": "webhook",
                                                         "url": receiver.url()}]},
    "pings": lambda receiver, tmp: {"ping": receiver.url("/ping")},
    "metrics": lambda receiver, tmp: {"metrics": {"textfile": str(tmp / "bkd.prom")}},
}


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("outcome", ["failed", "ok"])
def test_sigterm_right_after_a_run_concludes_stops_the_daemon(tmp_path, daemon_factory, receiver, listener,
                                                              outcome):
    for attempt in range(REPEATS):
        extra = LISTENERS[listener](receiver, tmp_path)
        source = make_tree(tmp_path / f"src{attempt}", 3) if outcome == "ok" else tmp_path / "missing"
        host = {"name": "web1", "source": str(source)}
        if "ping" in extra:
            host["ping_url"] = extra.pop("ping")
        daemon = daemon_factory([host], name=f"d{attempt}", **extra).start()
        if outcome == "ok":  # an open run_failed for the good run to resolve (a `resolved` notification)
            daemon.config["host"][0]["source"] = str(tmp_path / "missing")
            daemon.write_config()
            daemon.call("config.reload")
            assert daemon.run_snapshot()["status"] == "failed"
            daemon.config["host"][0]["source"] = str(source)
            daemon.write_config()
            daemon.call("config.reload")
            marker = daemon.log().count('"event": "run.done"')
        else:
            marker = 0
        daemon.call("job.start")
        wait_for_run_done(daemon, marker + 1)
        assert daemon.stop(signal.SIGTERM, timeout=20) == 0  # fails the test, with the log, if it hangs
        assert '"event": "daemon.stopped"' in daemon.log()


def wait_for_run_done(daemon, count: int, timeout: float = 30) -> None:
    """Until the log holds count `run.done` lines, polled as fast as they are written."""
    needle = b'"event": "run.done"'
    deadline = time.monotonic() + timeout
    with daemon.log_path.open("rb") as log:
        seen = b""
        while time.monotonic() < deadline:
            seen += log.read()
            if seen.count(needle) >= count:
                return
            time.sleep(0.0005)
    raise AssertionError(f"fewer than {count} run.done lines in the log: {daemon.log()[-3000:]}")
