"""docs/design.md's "SPEC §7, rule by rule" names, for each rule, the tests
that fail if it breaks: each of them must exist, under the name given."""

import re
from pathlib import Path

TESTS = Path(__file__).parent.parent
SECTION = "## SPEC §7, rule by rule"


def test_every_test_the_section_names_exists():
    text = (TESTS.parent / "docs" / "design.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`([\w/]+\.py)::(\w+)`", section)
    assert len(named) > 50
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^(async )?def {name}\(", (TESTS / path).read_text(), re.MULTILINE)]
    assert missing == []
