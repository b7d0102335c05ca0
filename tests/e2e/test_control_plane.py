"""The control plane as history grows: old job history is pruned without the
counters going down, snapshot listings page, and snapshots the database never
heard of are listed correctly on the first call."""

import json
import shutil
from datetime import datetime, timedelta

from conftest import make_tree, wait_until


def counters(daemon) -> dict:
    return {line.split(" ")[0]: int(line.split(" ")[1]) for line in daemon.call("metrics")["text"].splitlines()
            if line.startswith(("bkd_runs_total{", "bkd_failures_total{"))}


def test_history_older_than_keep_goes_and_the_counters_stay(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))},
                             {"name": "bad", "source": str(tmp_path / "missing")}],
                            history={"keep": "3s"}).start()
    for _ in range(3):
        daemon.run_snapshot()
    before = counters(daemon)
    assert before['bkd_runs_total{host="web1",kind="snapshot",status="ok"}'] == 3
    assert before['bkd_failures_total{host="bad"}'] == 3
    assert len(daemon.call("jobs.list")["jobs"]) == 3
    wait_until(lambda: daemon.call("jobs.list")["jobs"] == [], 15, what="the history to be pruned")
    assert counters(daemon) == before  # never down
    status = daemon.call("status")["hosts"]
    assert status["web1"]["last_result"] == "ok" and status["bad"]["last_result"] == "failed"
    assert "history.pruned" in daemon.log()


def _names(count: int) -> list[str]:
    start = datetime(2026, 1, 1)
    return [(start + timedelta(hours=i)).strftime("%Y-%m-%d_%H%M%S") for i in range(count)]


def test_snapshot_pages_tile_the_whole_list_and_unknown_snapshots_are_listed_from_meta(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}])
    daemon.start()
    template = daemon.run_snapshot()["hosts"][0]["snapshot"]
    daemon.stop()
    host = daemon.workdir / "backup/web1"
    meta = json.loads((host / "meta" / f"{template}.json").read_text())
    names = _names(237)
    for index, name in enumerate(names):  # snapshots the database never heard of, each with its meta/ record
        (host / "hourly" / name).mkdir()
        (host / "meta" / f"{name}.json").write_text(json.dumps({**meta, "name": name, "files": index}))
    daemon.start()

    everything = daemon.call("snapshots.list", host="web1")
    assert [s["name"] for s in everything["snapshots"]] == names + [template]
    assert [s["files"] for s in everything["snapshots"][:-1]] == list(range(237))  # right on the first call
    assert everything["next_before"] is None and everything["total"] == 238

    pages, before = [], None
    while True:
        params = {"host": "web1", "limit": 50} | ({"before": before} if before else {})
        page = daemon.call("snapshots.list", **params)
        assert [s["name"] for s in page["snapshots"]] == sorted(s["name"] for s in page["snapshots"])
        pages.insert(0, page["snapshots"])
        before = page["next_before"]
        if before is None:
            break
    tiled = [s["name"] for page in pages for s in page]
    assert tiled == names + [template]  # no gap, no repeat, oldest first
    assert [len(page) for page in pages] == [38, 50, 50, 50, 50]

    default = daemon.bkctl("snapshots", "web1")
    assert default.returncode == 0 and "the newest 50 of 238" in default.stdout
    assert len(daemon.bkctl_json("snapshots", "web1", "--all")["snapshots"]) == 238
    assert len(daemon.bkctl_json("snapshots", "web1", "--limit", "7")["snapshots"]) == 7
    bad = daemon.bkctl("snapshots", "web1", "--limit", "0")
    assert bad.returncode in (1, 2)
    shutil.rmtree(host / "hourly" / names[0])
    assert daemon.call("snapshots.list", host="web1")["total"] == 237  # the filesystem is the truth
