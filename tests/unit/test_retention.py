"""Tiered retention: a worked table, two simulated years, and a naive model under hypothesis."""

from collections import Counter
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from bkd.config.models import Retention
from bkd.tree.layout import HostDir, SnapshotName
from bkd.pipeline.prune import host_plan, move_to_trash
from bkd.infra.clock import months_before
from bkd.pipeline.retention import plan

UTC = timezone.utc
POLICY = Retention(hourly_hours=720, daily_days=180, monthly_months=24)


def name(time: datetime, seq: int = 1) -> str:
    return str(SnapshotName(time, seq))


def test_each_decision_says_why():
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    policy = Retention(hourly_hours=24, daily_days=7, monthly_months=3)
    names = [
        name(now - timedelta(hours=1)),                   # newest
        name(now - timedelta(hours=5)),                   # hourly
        name(datetime(2026, 5, 29, 1, tzinfo=UTC)),       # earliest of 29 May
        name(datetime(2026, 5, 29, 7, tzinfo=UTC)),       # later that day
        name(datetime(2026, 4, 3, tzinfo=UTC)),           # earliest of April
        name(datetime(2026, 4, 20, tzinfo=UTC)),          # later in April
        name(datetime(2025, 12, 1, tzinfo=UTC)),          # beyond 3 months
        name(now + timedelta(days=2)),                    # clock stepped back
        "not-a-snapshot",
    ]
    decisions = {d.snapshot: (d.action, d.tier) for d in plan(names, now, policy)}
    assert decisions == {
        names[0]: ("keep", "latest"),
        names[1]: ("keep", "hourly"),
        names[2]: ("keep", "daily"),
        names[3]: ("delete", "daily"),
        names[4]: ("keep", "monthly"),
        names[5]: ("delete", "monthly"),
        names[6]: ("delete", "expired"),
        names[7]: ("keep", "future"),
        "not-a-snapshot": ("keep", "unknown"),
    }
    reasons = {d.snapshot: d.reason for d in plan(names, now, policy)}
    assert reasons[names[3]] == f"not the earliest of 2026-05-29 ({names[2]} is kept)"
    assert reasons[names[6]] == "older than 3 months"


def test_the_newest_and_latest_are_kept_however_old():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    old = [name(datetime(2020, 1, 1, tzinfo=UTC)), name(datetime(2020, 1, 1, 5, tzinfo=UTC))]
    tiny = Retention(hourly_hours=0, daily_days=0, monthly_months=0)
    assert [d.action for d in plan(old, now, tiny)] == ["delete", "keep"]
    assert [d.action for d in plan(old, now, tiny, latest=old[0])] == ["keep", "keep"]


def test_two_simulated_years_of_hourly_snapshots_end_with_the_counts_the_policy_implies():
    """One snapshot an hour for two years, pruned as it goes, in memory: the
    prune step is `plan` over what hourly/ holds with the newest as latest
    (host_plan on disk; its renames are the next test's). A prune every 157
    hours (a prime) falls at every hour of the day and on every weekday, so
    each tier's window is crossed at every phase, not only at midnight."""
    start = datetime(2024, 6, 1, tzinfo=UTC)
    end = datetime(2026, 6, 1, tzinfo=UTC)
    made, present, trashed = [], [], []
    now, hours = start, 0
    while now <= end:
        made.append(name(now))
        present.append(made[-1])
        if hours % 157 == 0 or now == end:
            doomed = {d.snapshot for d in plan(present, now, POLICY, latest=present[-1]) if d.action == "delete"}
            trashed += [n for n in present if n in doomed]
            present = [n for n in present if n not in doomed]
        now += timedelta(hours=1)
        hours += 1

    final = plan(present, end, POLICY, latest=present[-1])
    tiers = Counter(d.tier for d in final if d.action == "keep")
    # latest: 2026-06-01 00:00. hourly: the 719 hours before it (720h window, strict).
    # daily: 00:00 of 2025-12-04 … 2026-05-02 = 28 + 31 + 28 + 31 + 30 + 2 = 150 days
    #   (the window opens 2025-12-03 00:00, exclusive; 2026-05-02 00:00 is exactly 720h old).
    # monthly: the 1st of 2024-07 … 2025-12 = 18 months (2024-06-01 is exactly 24 months old).
    assert tiers == {"latest": 1, "hourly": 719, "daily": 150, "monthly": 18}
    assert len(present) == 888 and len(made) == 888 + len(trashed)
    assert min(trashed) == "2024-06-01_000000"  # the very first one, exactly 24 months old at the end
    # Pruning as it went cost nothing that one prune at the end would have kept.
    assert present == [d.snapshot for d in plan(made, end, POLICY) if d.action == "keep"]


def test_a_prune_renames_what_the_plan_deletes_into_the_trash_with_its_records(tmp_path):
    host = HostDir(tmp_path / "web1")
    now = datetime(2026, 6, 10, 12, tzinfo=UTC)
    policy = Retention(hourly_hours=24, daily_days=2, monthly_months=0)
    times = [datetime(2026, 6, 7, h, tzinfo=UTC) for h in (0, 6, 12)] + \
        [datetime(2026, 6, 9, h, tzinfo=UTC) for h in (0, 6)] + [datetime(2026, 6, 10, h, tzinfo=UTC) for h in (6, 11)]
    names = [name(t) for t in times]
    host.meta.mkdir(parents=True)
    for n in [*names, "lost+found", ".partial-2026-06-10_120000"]:
        (host.hourly / n).mkdir(parents=True)
    for n in names:
        host.meta_file(n).write_text("{}")
        host.manifest_file(n).write_text("")
    host.latest.symlink_to(f"hourly/{names[1]}")  # what latest points at is kept, however old

    decisions = host_plan(host, policy, now)
    assert {d.snapshot: d.action for d in decisions} == {
        names[0]: "delete", names[1]: "keep", names[2]: "delete", names[3]: "keep", names[4]: "delete",
        names[5]: "keep", names[6]: "keep", "lost+found": "keep"}  # staging directories are not listed
    doomed = [names[0], names[2], names[4]]
    (host.hourly / names[4]).rename(tmp_path / "gone")  # another prune got there first: skipped
    assert move_to_trash(host, decisions) == doomed[:2]
    assert sorted(p.name for p in host.trash.iterdir()) == sorted(
        [*doomed[:2], *(f"{n}.json" for n in doomed[:2]), *(f"{n}.manifest" for n in doomed[:2])])
    kept = [names[1], names[3], names[5], names[6]]
    assert sorted(host.hourly_names()) == sorted([*kept, "lost+found"])
    assert sorted(p.name for p in host.meta.iterdir()) == sorted(
        [f"{n}.{ext}" for n in [*kept, names[4]] for ext in ("json", "manifest")])
    assert move_to_trash(host, host_plan(host, policy, now)) == []  # nothing left to delete


# ---- the naive model ---------------------------------------------------------

def naive_actions(names, now, policy, latest=None):
    """Each name judged on its own against the whole list: slow and obvious."""
    snaps = {n: SnapshotName.parse(n) for n in names}
    past = {n: s for n, s in snaps.items() if s and s.time <= now}
    newest = max(past, key=lambda n: past[n]) if past else None
    actions = {}
    for n, s in snaps.items():
        if s is None or s.time > now or n in (newest, latest):
            actions[n] = "keep"
            continue
        same_day = [m for m, t in past.items() if t.time.date() == s.time.date()]
        same_month = [m for m, t in past.items() if (t.time.year, t.time.month) == (s.time.year, s.time.month)]
        earliest_of_day = min(same_day, key=lambda m: past[m]) == n
        earliest_of_month = min(same_month, key=lambda m: past[m]) == n
        if now - s.time < timedelta(hours=policy.hourly_hours):
            actions[n] = "keep"
        elif now - s.time < timedelta(days=policy.daily_days) and earliest_of_day:
            actions[n] = "keep"
        elif s.time > months_before(now, policy.monthly_months) and earliest_of_month:
            actions[n] = "keep"
        else:
            actions[n] = "delete"
    return actions


NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
times = st.integers(min_value=-3 * 365 * 86400, max_value=3 * 86400).map(lambda s: NOW + timedelta(seconds=s))
snapshot_names = st.tuples(times, st.integers(1, 3)).map(lambda t: name(t[0].replace(microsecond=0), t[1]))
junk = st.sampled_from(["latest", "junk", "2026-01-01", "2026-02-30_000000", ".hidden", "2026-01-01_000000-1"])
policies = st.builds(Retention, hourly_hours=st.integers(0, 2000), daily_days=st.integers(0, 400),
                     monthly_months=st.integers(0, 40))


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.one_of(snapshot_names, junk), unique=True, max_size=60), policy=policies,
       data=st.data())
def test_plan_agrees_with_the_naive_model(names, policy, data):
    latest = data.draw(st.sampled_from(names)) if names and data.draw(st.booleans()) else None
    decisions = plan(names, NOW, policy, latest=latest)
    assert sorted(d.snapshot for d in decisions) == sorted(names)
    assert {d.snapshot: d.action for d in decisions} == naive_actions(names, NOW, policy, latest)
    deleted = {d.snapshot for d in decisions if d.action == "delete"}
    assert all(SnapshotName.parse(n) and SnapshotName.parse(n).time <= NOW for n in deleted)
    past = [n for n in names if SnapshotName.parse(n) and SnapshotName.parse(n).time <= NOW]
    if past:
        assert max(past, key=SnapshotName.parse) not in deleted


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.one_of(snapshot_names, junk), unique=True, max_size=60), policy=policies,
       data=st.data())
def test_a_held_host_keeps_everything_with_the_tier_and_the_reason_it_would_have_been_deleted_for(names, policy, data):
    latest = data.draw(st.sampled_from(names)) if names and data.draw(st.booleans()) else None
    free = {d.snapshot: d for d in plan(names, NOW, policy, latest=latest)}
    held = plan(names, NOW, policy, latest=latest, held=True)
    assert [d.snapshot for d in held] == list(free)
    for decision in held:
        before = free[decision.snapshot]
        assert decision.action == "keep" and decision.tier == before.tier
        assert decision.held == (before.action == "delete")
        if decision.held:
            assert decision.reason.startswith("held after an anomaly") and before.reason in decision.reason
            assert decision.as_dict()["held"] is True
        else:
            assert decision == before and "held" not in decision.as_dict()


def test_a_hold_recorded_under_meta_stops_every_deletion_even_by_a_plan_made_before_it(tmp_path):
    from bkd.tree import holds
    host = HostDir(tmp_path / "web1")
    now = datetime(2026, 6, 10, 12, tzinfo=UTC)
    names = [name(datetime(2026, 6, day, tzinfo=UTC)) for day in (1, 2, 3)]
    host.meta.mkdir(parents=True)
    for n in names:
        (host.hourly / n).mkdir(parents=True)
        for record in (host.meta_file(n), host.manifest_file(n), host.changes_file(n)):
            record.write_text("")
    policy = Retention(hourly_hours=0, daily_days=0, monthly_months=0)
    before = host_plan(host, policy, now)
    assert [d.action for d in before] == ["delete", "delete", "keep"]
    holds.add(host, {"snapshot": names[2], "signals": [], "examples": {}}, True, "2026-06-10T12:00:00Z")
    assert [(d.action, d.held) for d in host_plan(host, policy, now)] == [("keep", True), ("keep", True),
                                                                          ("keep", False)]
    assert move_to_trash(host, before) == []  # the hold came after the plan: nothing moves all the same
    assert host.hourly_names() and sorted(host.hourly_names()) == names
    holds.release(host)
    assert move_to_trash(host, host_plan(host, policy, now)) == names[:2]
    # A snapshot's change record goes to the trash with it.
    assert sorted(p.name for p in host.trash.iterdir() if p.name.endswith(".changes")) == [
        f"{n}.changes" for n in names[:2]]
