"""The pure parts of a second copy: what is pulled, what a primary's listing
says (it is hostile), how far behind the copies are, which generations of a
primary's state database are kept, and how a replica's config reads."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from bkd.config.models import Config, Retention
from bkd.pipeline import manifest
from bkd.pipeline.outcomes import public_warning
from bkd.replica import generations
from bkd.replica.pull import read_listing, wanted
from bkd.replica.upstreams import read_top
from bkd.runs.plan import Stage, stages_for
from bkd.state.audit import GENESIS, audit_hash
from bkd.tree.upstream import Upstream
from bkctl.protocol import Kind

NOW = datetime(2026, 6, 15, 12, 0, 0, tzinfo=timezone.utc)
KEEP_ALL = Retention(hourly_hours=876000, daily_days=0, monthly_months=0)


def name(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%d_%H%M%S")


# ---- what is pulled ----------------------------------------------------------------

def test_the_first_pull_brings_every_snapshot_the_replica_keeps_oldest_first():
    primary = [name(h) for h in (5, 4, 3, 2, 1)]
    assert wanted(list(reversed(primary)), [], NOW, KEEP_ALL) == primary


def test_the_first_pull_brings_only_what_the_replicas_own_retention_keeps():
    # Hourly snapshots over three days; the replica keeps one a day (and the newest).
    primary = [name(h) for h in range(71, -1, -1)]
    daily = Retention(hourly_hours=0, daily_days=30, monthly_months=0)
    pulled = wanted(primary, [], NOW, daily)
    days = {n[:10] for n in primary}
    assert len(pulled) == len(days) + 1 and pulled[-1] == name(0)
    assert pulled == sorted(pulled) and all(n in primary for n in pulled)


def test_only_snapshots_newer_than_the_newest_copy_are_pulled_so_a_pruned_one_never_comes_back():
    primary = [name(h) for h in (6, 5, 4, 3, 2, 1)]
    local = [name(6), name(3)]  # name(5) and name(4) were pruned here
    assert wanted(primary, local, NOW, KEEP_ALL) == [name(2), name(1)]


def test_nothing_is_pulled_when_the_copy_is_current_and_names_that_are_no_snapshots_are_ignored():
    primary = [name(2), name(1), ".partial-x", "garbage", "2026-13-45_999999"]
    assert wanted(primary, [name(2), name(1)], NOW, KEEP_ALL) == []


def test_a_primary_snapshot_dated_in_the_future_is_not_pulled_and_does_not_hide_later_ones():
    future = (NOW + timedelta(days=1)).strftime("%Y-%m-%d_%H%M%S")
    assert wanted([name(2), future], [], NOW, KEEP_ALL) == [name(2)]
    # A copy dated in the future (a clock step here) does not stop newer real ones from coming.
    assert wanted([name(2), name(1)], [future, name(3)], NOW, KEEP_ALL) == [name(2), name(1)]


def test_a_second_in_which_the_primary_took_two_snapshots():
    base = name(1)
    assert wanted([base, f"{base}-2"], [base], NOW, KEEP_ALL) == [f"{base}-2"]


# ---- the primary's listings are hostile ------------------------------------------------

def line(kind: str, name: str, size: str = "4,096") -> str:
    return f"{kind}rwx------ {size:>14} 2026/06/15 12:00:00 {name}"


def test_a_hosts_listing_takes_complete_snapshot_directories_and_manifests_of_that_host_only():
    lines = [
        line("d", "."), line("d", "web1"), line("d", "web1/hourly"), line("d", "web1/meta"),
        line("d", f"web1/hourly/{name(2)}"), line("d", f"web1/hourly/{name(1)}"),
        line("d", "web1/hourly/.partial-2026-06-15_110000-abcdef"),
        line("-", f"web1/hourly/{name(3)}"),  # a file, not a snapshot
        line("l", f"web1/hourly/{name(4)}"),  # a symlink planted there
        line("d", f"web1/hourly/{name(5)}/etc"),  # inside a snapshot (the filters never let it through)
        line("d", f"web2/hourly/{name(6)}"),  # another host
        line("d", f"web1/hourly/x {name(7)}"),  # a name that ends like one
        line("-", f"web1/meta/{name(2)}.manifest", "1,234"),
        line("-", "web1/meta/.files-x"), line("-", "web1/meta/damage.json"),
        f"web1/hourly/{name(8)}",  # not a listing line at all
        "drwx------ 4,096 yesterday " + name(9),
    ]
    listing = read_listing(lines, "web1")
    assert listing.found
    assert listing.snapshots == [name(2), name(1)]
    assert listing.manifests == {name(2): 1234}


def test_a_listing_without_the_hosts_directory_says_the_primary_has_no_such_host():
    listing = read_listing([line("d", "."), line("d", "web2")], "web1")
    assert (listing.found, listing.snapshots) == (False, [])


def test_the_top_listing_takes_host_directories_and_the_state_copy():
    top = read_top([line("d", "."), line("d", "web1"), line("d", "p1.db"), line("d", ".bkd-state"),
                    line("d", ".bkd-upstreams"), line("-", ".bkd-audit-head"), line("-", "web3"),
                    line("d", "web1/hourly"), line("d", "bad name"), line("d", "x" * 65),
                    line("-", ".bkd-state/bkd.sqlite", "81,920")])
    assert (top.hosts, top.state) == (["p1.db", "web1"], True)
    assert read_top([line("d", "web1")]).state is False


# ---- how far behind -------------------------------------------------------------------

def test_the_lag_counts_from_the_last_pull_that_left_nothing_to_pull_else_from_when_the_host_was_added():
    added = NOW - timedelta(hours=5)
    assert Upstream(caught_up=NOW - timedelta(minutes=10)).lag(added, NOW) == timedelta(minutes=10)
    assert Upstream().lag(added, NOW) == timedelta(hours=5)
    assert Upstream().lag(None, NOW) is None
    assert Upstream(caught_up=NOW + timedelta(minutes=1)).lag(added, NOW) == timedelta(0)


# ---- the copy against the primary's manifest ---------------------------------------------

def test_manifest_differences_are_reported_as_verify_reports_them():
    expected = manifest.sorted_lines({b"a": ("1" * 64, 1), b"b": ("2" * 64, 2), b"c": ("3" * 64, 3)})
    actual = manifest.sorted_lines({b"a": ("1" * 64, 1), b"b": ("f" * 64, 2), b"d\xff": ("4" * 64, 4)})
    assert manifest.differences(expected, expected) == []
    assert manifest.differences(actual, expected) == [
        {"path": "b", "problem": "changed", "expected": "2" * 64, "actual": "f" * 64},
        {"path": "c", "problem": "missing"},
        {"path": "d\udcff", "problem": "extra"}]


def test_what_every_role_reads_of_a_pull_that_did_not_match():
    detail = "3 file(s) of snapshot 2026-06-15_110000 do not match the primary's manifest: secret/passwords (changed)"
    assert public_warning(detail) == "3 file(s) of snapshot 2026-06-15_110000 do not match the primary's manifest"
    assert "web1" in public_warning("the primary has no host web1 (any more): nothing to pull; the copies here are kept")


# ---- the generations of the primary's state database ----------------------------------------

def state_db(path, entries: list[tuple[str, str]]) -> None:
    """A state database whose audit log holds entries (method, outcome), chained as bkd chains them."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, time, uid, user, pid, method, params, outcome, "
               "prev_hash, hash)")
    prev = GENESIS
    for index, (method, outcome) in enumerate(entries, 1):
        record = {"time": f"2026-06-15T12:00:{index:02d}Z", "uid": 0, "user": "root", "pid": 1, "method": method,
                  "params": "{}", "outcome": outcome}
        digest = audit_hash(prev, record)
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (index, *record.values(), prev, digest))
        prev = digest
    db.commit()
    db.close()


def test_a_generation_that_extends_the_one_before(tmp_path):
    state_db(tmp_path / "old", [("job.start", "ok")])
    state_db(tmp_path / "new", [("job.start", "ok"), ("job.cancel", "ok")])
    old = generations.read_chain(tmp_path / "old", None, None)
    new = generations.read_chain(tmp_path / "new", old, "2026-06-15_110000")
    assert (old.entries, old.ok, new.entries, new.head_id, new.ok) == (1, True, 2, 2, True)
    assert new.extends == "2026-06-15_110000"


@pytest.mark.parametrize("rewritten", [
    [],  # wiped: an empty history
    [("job.start", "refused")],  # rewritten from the start: entry 1 differs
])
def test_a_wiped_or_rewritten_history_does_not_extend_the_one_before(tmp_path, rewritten):
    state_db(tmp_path / "old", [("job.start", "ok")])
    state_db(tmp_path / "new", rewritten + [("job.cancel", "ok")] * (not rewritten))
    old = generations.read_chain(tmp_path / "old", None, None)
    new = generations.read_chain(tmp_path / "new", old, "G1")
    assert not new.ok and new.breaks == "G1"
    assert new.message().startswith("its audit entry 1 ") and "does not extend generation G1" in new.message()


def test_a_broken_chain_or_a_file_that_is_no_state_database_is_a_problem(tmp_path):
    state_db(tmp_path / "db", [("job.start", "ok"), ("job.cancel", "ok")])
    with sqlite3.connect(tmp_path / "db") as db:
        db.execute("UPDATE audit SET outcome='forged' WHERE id=1")
    assert generations.read_chain(tmp_path / "db", None, None).problem == "its audit chain breaks at entry 1"
    (tmp_path / "junk").write_bytes(b"not sqlite" * 100)
    assert "not a" in generations.read_chain(tmp_path / "junk", None, None).problem


def test_generations_are_pruned_by_their_tiers_but_never_around_a_break():
    old = [(NOW - timedelta(days=d)).strftime("%Y-%m-%d_%H%M%S") for d in (1000, 900, 800, 100)]
    recent = [name(h) for h in (3, 2, 1)]
    names = old + recent
    broken = generations.Chain("x", breaks=old[1])
    doomed = generations.doomed(names, {old[2]: broken}, NOW)
    assert doomed == [old[0]]  # older than the monthly tier; so are old[1] and old[2], but
    # both sides of the break are evidence, kept
    assert not set(recent) & set(doomed)


# ---- a replica's config --------------------------------------------------------------------

def replica_config(**replica) -> Config:
    return Config.model_validate({"backup_root": "/srv/bkd", "replica": [
        {"name": "p1", "source": "bkd-primary:/srv/bkd/", **replica}]})


def test_replicated_hosts_are_hosts_named_after_their_replica_with_its_every_and_retention():
    config = replica_config(hosts=["web*"], every="6h", retention={"daily_days": 7})
    live = config.with_replicated({"p1": ["web1", "db1", "web2"], "gone": ["x"]})
    assert [h.name for h in live.host] == ["p1.web1", "p1.web2"]
    settings = live.hosts["p1.web1"]
    assert settings.host.source == "bkd-primary:/srv/bkd/web1/"
    assert settings.schedule.snapshot_every == timedelta(hours=6)
    assert (settings.retention.daily_days, settings.retention.hourly_hours) == (7, 720)
    assert settings.excludes == []  # a snapshot is copied as it is
    replica, upstream = live.upstream_of("p1.web1")
    assert (replica.name, upstream, replica.lag_limit) == ("p1", "web1", timedelta(hours=12))
    assert live.upstream_of("web1") is None and live.upstream_of("p2.web1") is None


def test_a_primarys_host_whose_name_here_would_be_too_long_is_not_replicated():
    config = replica_config()
    assert config.with_replicated({"p1": ["h" * 62]}).host == []
    assert [h.name for h in config.with_replicated({"p1": ["h" * 61]}).host] == ["p1." + "h" * 61]


@pytest.mark.parametrize("replica,problem", [
    ({"name": "p.1"}, "no dots"),
    ({"name": "p" * 33}, "at most 32 characters"),
    ({"source": "/srv/bkd/"}, "over SSH"),
    ({"source": "rsync://x/bkd"}, "rsync daemon URLs"),
    ({"hosts": []}, "at least 1 item"),
    ({"hosts": ["a/b"]}, "shell glob"),
])
def test_a_bad_replica_table_says_what_is_wrong(replica, problem):
    with pytest.raises(ValueError, match=problem):
        replica_config(**replica)


def test_a_local_host_named_like_a_replicated_one_and_a_duplicate_replica_are_errors():
    with pytest.raises(ValueError, match=r"host\[0\].name: 'p1.web1' is the name the primary's host 'web1' gets"):
        Config.model_validate({"backup_root": "/r", "host": [{"name": "p1.web1", "source": "/s"}],
                               "replica": [{"name": "p1", "source": "a:/r/"}]})
    with pytest.raises(ValueError, match="duplicate replica name 'p1'"):
        Config.model_validate({"backup_root": "/r", "replica": [{"name": "p1", "source": "a:/r/"},
                                                                {"name": "p1", "source": "b:/r/"}]})
    # Other dotted names are fine, and a sink may name a replicated host before it exists.
    Config.model_validate({"backup_root": "/r", "host": [{"name": "p2.web1", "source": "/s"}],
                           "replica": [{"name": "p1", "source": "a:/r/"}],
                           "notify": [{"name": "m", "type": "email", "to": ["a@b.c"], "hosts": ["p1.web1"]}]})


def test_a_replicated_hosts_snapshot_stage_is_a_pull():
    assert stages_for(Kind.SNAPSHOT, False, False, False, replicated=True)[0].stages == (Stage.REPLICATE,
                                                                                         Stage.PRUNE)
    assert stages_for(Kind.SNAPSHOT, True, False, False, replicated=True)[0].stages == (Stage.REPLICATE,)
    assert [p.stages for p in stages_for(Kind.ALL, False, False, False, replicated=True)] == [
        (Stage.REPLICATE, Stage.PRUNE), (Stage.ARCHIVE, Stage.MONTHLY)]
