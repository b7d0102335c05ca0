from datetime import datetime, timedelta, timezone

import pytest

from bkd.schedule.due import next_run

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
