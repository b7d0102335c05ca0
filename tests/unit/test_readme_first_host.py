"""README's "Add your first host": every message of its troubleshooting table
is one bkd prints (its words, as they stand in the code), and the lines it
shows are the ones `bkd host add` builds."""

from __future__ import annotations

import re
from pathlib import Path

from bkd.enrol import authorized_line, forced_command, request, sudoers_lines

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def section() -> str:
    return README.read_text().split("\n## Add your first host\n", 1)[1].split("\n## ", 1)[0]


def troubleshooting() -> list[tuple[str, str, str]]:
    table = section().split("\n### When a first setup fails\n", 1)[1]
    return re.findall(r"^\| `([^`]+)` \| (.+?) \| (.+?) \|$", table, re.M)


def test_every_message_of_the_troubleshooting_table_is_one_bkd_prints():
    rows = troubleshooting()
    assert len(rows) >= 15
    code = "".join(path.read_text() for path in sorted((ROOT / "daemon/bkd").rglob("*.py")))
    assert [message for message, _, _ in rows if message not in code] == []
    assert all(why and fix for _, why, fix in rows)


def test_the_lines_the_readme_shows_are_the_ones_host_add_builds():
    text = section()
    key = "ssh-ed25519 AAAAC3Nza… bkd@backup1"
    assert authorized_line(request("web1", "web1.example.org", "/srv"), key, "192.0.2.10") in text
    sudo = request("db1", "bkd@db1.example.org", "/var/lib/postgresql", sudo=True)
    for line in sudoers_lines(sudo):
        assert f"\n{line}\n" in text
    assert f"`{forced_command(sudo)}`" in " ".join(text.split())  # as the prose wraps it
