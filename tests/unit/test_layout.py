"""Snapshot names and the host directory layout."""

from datetime import datetime, timezone

from bkd.tree.layout import HostDir, SnapshotName

T = datetime(2026, 3, 1, 12, 30, 5, tzinfo=timezone.utc)


def test_names_round_trip_and_order_by_time_then_sequence():
    assert str(SnapshotName(T)) == "2026-03-01_123005"
    assert SnapshotName.parse("2026-03-01_123005-2") == SnapshotName(T, 2)
    names = ["2026-03-01_123005-10", "2026-03-01_123005", "2026-03-01_123005-2", "2026-02-28_235959"]
    assert [str(n) for n in sorted(map(SnapshotName.parse, names))] == [
        "2026-02-28_235959", "2026-03-01_123005", "2026-03-01_123005-2", "2026-03-01_123005-10"]


def test_unrecognised_names_are_not_snapshots():
    for name in ["latest", ".partial-2026-03-01_123005", "2026-03-01_123005-1", "2026-03-01_123005-02",
                 "2026-13-01_123005", "2026-03-01_123005.old", "2026-03-01", "x2026-03-01_123005"]:
        assert SnapshotName.parse(name) is None, name


def test_a_second_snapshot_in_the_same_second_gets_a_suffix(tmp_path):
    host = HostDir(tmp_path / "web1")
    host.hourly.mkdir(parents=True)
    (host.hourly / "2026-03-01_123005").mkdir()
    (host.hourly / "2026-03-01_123005-2").mkdir()
    assert str(host.free_name(T)) == "2026-03-01_123005-3"


def test_a_name_a_prune_freed_is_not_taken_by_a_newer_snapshot_of_that_second(tmp_path):
    """T and T-2 were taken in one second, a prune took T: the next snapshot
    of that second must sort after T-2 (as T it sorted before the older one)."""
    host = HostDir(tmp_path / "web1")
    host.hourly.mkdir(parents=True)
    (host.hourly / "2026-03-01_123005-2").mkdir()
    assert str(host.free_name(T)) == "2026-03-01_123005-3"
    assert host.free_name(T) > SnapshotName.parse("2026-03-01_123005-2")


def test_listing_ignores_junk_and_partials_and_latest_falls_back_to_the_newest(tmp_path):
    host = HostDir(tmp_path / "web1")
    host.hourly.mkdir(parents=True)
    for name in ["2026-03-01_123005", "2026-03-02_000000", ".partial-2026-03-03_000000-ab", "junk"]:
        (host.hourly / name).mkdir()
    (host.hourly / "2026-03-04_000000").write_text("a file, not a snapshot")
    assert [str(n) for n in host.snapshots()] == ["2026-03-01_123005", "2026-03-02_000000"]
    assert [p.name for p in host.partials()] == [".partial-2026-03-03_000000-ab"]
    assert str(host.latest_snapshot()) == "2026-03-02_000000"
    host.latest.symlink_to("hourly/2026-03-01_123005")
    assert str(host.latest_snapshot()) == "2026-03-01_123005"
