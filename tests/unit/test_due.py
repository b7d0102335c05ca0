"""When work is due (schedule/due.py): pure functions of times."""

from datetime import datetime, timedelta, timezone

import pytest

from bkd.schedule.due import monthly_due_at, next_run
from bkd.tree.layout import SnapshotName

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize("last_snapshot,last_attempt,expected", [
    (None, None, NOW),                                         # never ran: now
    (NOW - timedelta(minutes=20), None, NOW + timedelta(minutes=40)),
    (NOW - timedelta(hours=5), None, NOW),                     # overdue: now, once
    (NOW - timedelta(hours=5), NOW - timedelta(minutes=10), NOW + timedelta(minutes=50)),  # failing: once an hour
    (NOW + timedelta(hours=3), None, NOW),                      # future-dated snapshot: ignored
])
def test_next_run(last_snapshot, last_attempt, expected):
    assert next_run(last_snapshot, last_attempt, HOUR, NOW) == expected


def test_a_monthly_copy_is_due_on_its_day_and_at_once_for_a_host_without_one():
    """(From the dead archive.monthly_due: the schedule's own rule, monthly_due_at, is what runs.)"""
    now, latest = datetime(2026, 7, 15, 12, tzinfo=timezone.utc), SnapshotName(datetime(2026, 7, 15, tzinfo=timezone.utc))
    assert monthly_due_at(latest, (), 20, None, HOUR, now) == now  # none at all: at once
    copies = ("2024-01", "2025-08", "2026-06")
    assert monthly_due_at(latest, copies, 20, None, HOUR, now) == datetime(2026, 7, 20, tzinfo=timezone.utc)
    assert monthly_due_at(latest, copies, 15, None, HOUR, now) == now  # its day has come
    february = datetime(2026, 2, 28, 12, tzinfo=timezone.utc)
    assert monthly_due_at(latest, ("2026-01",), 31, None, HOUR, february) == february  # clamped to its end
    assert monthly_due_at(None, (), 20, None, HOUR, now) is None  # nothing to copy yet
