"""Tiered retention as a pure function: (directory names, now, policy) → a
decision with a tier and a reason for each. No I/O; never renames."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..config.models import Retention
from ..infra.clock import months_before
from ..tree.layout import SnapshotName


@dataclass(frozen=True)
class Decision:
    snapshot: str
    action: str  # keep | delete
    tier: str  # latest | hourly | daily | monthly | future | expired | unknown
    reason: str
    held: bool = False  # a delete the host's hold turned into a keep

    def as_dict(self) -> dict:
        record = {"snapshot": self.snapshot, "action": self.action, "tier": self.tier, "reason": self.reason}
        return {**record, "held": True} if self.held else record


HELD = "held after an anomaly: nothing of this host is deleted until an admin runs `bkctl hosts release`"


def plan(names: list[str], now: datetime, policy: Retention, latest: str | None = None,
         pinned: set[str] = frozenset(), held: bool = False) -> list[Decision]:
    """Decide every name in one oldest-first pass. Names that are not snapshot
    names are kept untouched; snapshots dated after now are kept (and should be
    alerted on) without counting against anything; the newest snapshot that is
    not in the future, and whatever `latest` points at, are always kept; so is
    a pinned snapshot (running work reads it) until that work ends. A held
    host (an anomaly, SPEC §7) keeps every one: each delete becomes "keep (held)"."""
    parsed = {name: SnapshotName.parse(name) for name in names}
    decisions: dict[str, Decision] = {}
    for name, snap in parsed.items():
        if snap is None:
            decisions[name] = Decision(name, "keep", "unknown", "not a snapshot name; never touched")
        elif snap.time > now:
            decisions[name] = Decision(name, "keep", "future", "dated in the future (clock step?); kept")

    past = sorted((snap, name) for name, snap in parsed.items() if name not in decisions)
    hourly_cutoff = now - timedelta(hours=policy.hourly_hours)
    daily_cutoff = now - timedelta(days=policy.daily_days)
    monthly_cutoff = months_before(now, policy.monthly_months)
    newest = past[-1][1] if past else None
    first_of_day: dict[object, str] = {}
    first_of_month: dict[object, str] = {}
    for snap, name in past:  # oldest first: the first seen of a day or month is its earliest
        day, month = snap.time.date(), (snap.time.year, snap.time.month)
        first_of_day.setdefault(day, name)
        first_of_month.setdefault(month, name)
        if name == newest or name == latest:
            decisions[name] = Decision(name, "keep", "latest", "the newest snapshot is always kept")
        elif snap.time > hourly_cutoff:
            decisions[name] = Decision(name, "keep", "hourly", f"younger than {policy.hourly_hours}h")
        elif snap.time > daily_cutoff and first_of_day[day] == name:
            decisions[name] = Decision(name, "keep", "daily",
                                       f"earliest of {day} (daily for {policy.daily_days} days)")
        elif snap.time > monthly_cutoff and first_of_month[month] == name:
            decisions[name] = Decision(name, "keep", "monthly",
                                       f"earliest of {month[0]}-{month[1]:02d} "
                                       f"(monthly for {policy.monthly_months} months)")
        elif snap.time > daily_cutoff:
            decisions[name] = Decision(name, "delete", "daily",
                                       f"not the earliest of {day} ({first_of_day[day]} is kept)")
        elif snap.time > monthly_cutoff:
            decisions[name] = Decision(name, "delete", "monthly",
                                       f"not the earliest of {month[0]}-{month[1]:02d} "
                                       f"({first_of_month[month]} is kept)")
        else:
            decisions[name] = Decision(name, "delete", "expired",
                                       f"older than {policy.monthly_months} months")
    for name in pinned:
        decision = decisions.get(name)
        if decision and decision.action == "delete":
            decisions[name] = Decision(name, "keep", decision.tier,
                                       "in use by running work (archive, monthly copy or restore); "
                                       "a later prune deletes it")
    if held:
        for name, decision in decisions.items():
            if decision.action == "delete":
                decisions[name] = Decision(name, "keep", decision.tier, f"{HELD} (else: {decision.reason})", True)
    # Snapshots oldest first, then other names by name (each parsed once, above).
    order = lambda name: (0, parsed[name], "") if parsed[name] else (1, None, name)  # noqa: E731
    return [decisions[name] for name in sorted(names, key=order)]
