"""snapshots.list over a real directory and a real store: only complete
snapshots are listed, in snapshot order (a tenth snapshot of one second comes
after the ninth, though "-10" < "-9" as text), each with its retention tier,
and pages tile the list."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from bkd.infra import clock
from bkd.views.catalog import list_snapshots
from bkd.config.models import Retention
from bkd.infra.errors import InvalidArgument
from bkd.tree.layout import HostDir, SnapshotName
from bkd.state.store import Store


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "bkd.sqlite")
    yield store
    await store.close()


def make_host(root) -> tuple[HostDir, list[str]]:
    """Hourly snapshots, eleven in one second, one dated in the future, and
    things in hourly/ that are not complete snapshots."""
    host_dir = HostDir(root / "web1")
    now = clock.now().replace(microsecond=0)
    second = SnapshotName(now - timedelta(hours=1))
    names = [str(SnapshotName(now - timedelta(hours=h))) for h in range(30, 1, -1)]
    names += [str(SnapshotName(second.time, seq)) for seq in range(1, 12)]
    future = str(SnapshotName(now + timedelta(days=3)))
    for name in [*names, future, "junk", ".partial-2026-01-01_000000", "2026-13-01_000000"]:
        (host_dir.hourly / name).mkdir(parents=True)
    host_dir.meta.mkdir()
    for index, name in enumerate(names):
        (host_dir.meta_file(name)).write_text(json.dumps({"name": name, "files": index}))
    (host_dir.latest).symlink_to(f"hourly/{names[-1]}")
    return host_dir, [*names, future]


async def test_only_complete_snapshots_in_snapshot_order_with_their_tiers(tmp_path, store):
    host_dir, names = make_host(tmp_path)
    listed = (await list_snapshots(store, host_dir, Retention(), None, None))["snapshots"]
    assert [s["name"] for s in listed] == names
    assert [s["files"] for s in listed[:-1]] == list(range(len(names) - 1))  # from meta/ on the first call
    assert {s["tier"] for s in listed[:-2]} == {"hourly"}
    assert (listed[-2]["tier"], listed[-1]["tier"]) == ("latest", "future")
    assert listed[-1]["time"] == clock.iso(SnapshotName.parse(names[-1]).time)


async def test_pages_tile_the_list_across_sequence_numbers(tmp_path, store):
    host_dir, names = make_host(tmp_path)
    pages, before = [], None
    while True:
        page = await list_snapshots(store, host_dir, Retention(), 4, before)
        assert page["total"] == len(names)
        pages.insert(0, [s["name"] for s in page["snapshots"]])
        before = page["next_before"]
        if before is None:
            break
    assert [name for page in pages for name in page] == names
    with pytest.raises(InvalidArgument, match="not a snapshot name"):
        await list_snapshots(store, host_dir, Retention(), 4, "yesterday")


async def test_a_host_without_snapshots_lists_none(tmp_path, store):
    page = await list_snapshots(store, HostDir(tmp_path / "empty"), Retention(), 50, None)
    assert page == {"snapshots": [], "total": 0, "next_before": None}
