"""A host's facts from its directory: re-reading an unchanged directory does
not list it again, and every change is seen, however soon after the last read
it comes; snapshots dated in the future become the latest once their time has
come, with nothing re-listed."""

import gc
import os
import time
from datetime import timedelta

import pytest

from bkd.infra import clock
from bkd.tree import facts as facts_module
from bkd.tree.layout import HostDir, SnapshotName
from bkd.tree.facts import read_facts


@pytest.fixture
def host_dir(tmp_path):
    host_dir = HostDir(tmp_path / "web1")
    host_dir.hourly.mkdir(parents=True)
    return host_dir


def snapshot(host_dir: HostDir, hours_ago: float) -> SnapshotName:
    name = SnapshotName((clock.now() - timedelta(hours=hours_ago)).replace(microsecond=0))
    (host_dir.hourly / str(name)).mkdir()
    return name


def age(path, seconds: float = 60) -> None:
    """As if the directory last changed a while ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def listings(monkeypatch):
    """How often each host's hourly/ is listed."""
    counts = []
    original = HostDir.snapshots
    monkeypatch.setattr(HostDir, "snapshots", lambda self: counts.append(self.root.name) or original(self))
    return counts


def test_an_unchanged_directory_is_not_listed_again(host_dir, listings):
    first = snapshot(host_dir, 3)
    age(host_dir.hourly)
    for _ in range(5):
        facts = read_facts(host_dir, clock.now())
        assert (facts.latest, facts.snapshots) == (first, 1)
    assert listings == ["web1"]


def test_a_change_right_after_a_read_is_seen(host_dir, listings):
    snapshot(host_dir, 3)
    assert read_facts(host_dir, clock.now()).snapshots == 1
    newer = snapshot(host_dir, 2)  # within the same mtime tick, quite possibly
    facts = read_facts(host_dir, clock.now())
    assert (facts.latest, facts.snapshots) == (newer, 2)


def test_a_change_to_an_aged_directory_is_seen(host_dir, listings):
    snapshot(host_dir, 3)
    age(host_dir.hourly)
    assert read_facts(host_dir, clock.now()).snapshots == 1
    newer = snapshot(host_dir, 2)
    assert read_facts(host_dir, clock.now()).latest == newer
    os.rmdir(host_dir.hourly / str(newer))
    assert read_facts(host_dir, clock.now()).snapshots == 1
    (host_dir.archives).mkdir()
    (host_dir.archives / f"web1_{newer}.tar.zst").write_bytes(b"")
    assert read_facts(host_dir, clock.now()).archives == 1
    assert len(listings) == 4


def test_future_snapshots_become_the_latest_when_their_time_comes_without_a_new_listing(host_dir, listings):
    past = snapshot(host_dir, 3)
    future = snapshot(host_dir, -2)
    age(host_dir.hourly)
    facts = read_facts(host_dir, clock.now())
    assert (facts.latest, facts.future) == (past, (str(future),))
    later = read_facts(host_dir, clock.now() + timedelta(hours=3))
    assert (later.latest, later.future, later.snapshots) == (future, (), 2)
    assert listings == ["web1"]


def test_cached_listings_are_left_alone_by_the_garbage_collector(host_dir):
    # A year of snapshots of 100 hosts kept as SnapshotName objects made each
    # full collection walk 87,000 of them: a 50 ms pause every few hundred calls.
    for hours in range(3, 60):
        snapshot(host_dir, hours)
    age(host_dir.hourly)
    read_facts(host_dir, clock.now())
    gc.collect()
    listing = facts_module._listings[host_dir.root]
    assert not gc.is_tracked(listing.names) and not gc.is_tracked(listing.times)
    assert len(listing.names) == 57


def test_an_unreadable_host_directory_is_an_error_not_an_exception(tmp_path):
    (tmp_path / "web1").write_text("not a directory")
    facts = read_facts(HostDir(tmp_path / "web1"), clock.now())
    assert facts.error and "web1" in facts.error


def teardown_function():
    facts_module._listings.clear()
