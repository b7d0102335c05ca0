"""Every test file's name is unique across the tiers: with pytest's default
import mode, two files of one name (tests/unit/test_x.py, tests/e2e/test_x.py)
make it refuse the whole run at collection, which a run of one tier alone
never shows."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parents[1]


def test_no_two_test_files_share_a_name():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
