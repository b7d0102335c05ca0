"""The line a restore ends with (cli._restored): what it wrote, of which
snapshot and path, to where — and what it left alone in DEST."""

from __future__ import annotations

from argparse import Namespace

import pytest

from bkctl.cli import _restored


def job(**stats) -> dict:
    return {"job_id": 7, "status": "ok", "hosts": [{"host": "web1", "snapshot": "2026-12-07_131509",
                                                     "stats": {"entries": 1234, **stats}}]}


def args(path: str = "/etc", **extra) -> Namespace:
    return Namespace(**{"host": "web1", "snapshot": "latest", "path": path, "dry_run": False, "overwrite": False,
                        **extra})


@pytest.mark.parametrize("stats, given, dest, line", [
    ({"entries_written": 1234, "transferred_bytes": 59_454_259}, args(), "/tmp/x",
     "restored 1,234 entries (56.7 MiB) of web1 2026-12-07_131509:/etc to /tmp/x/etc"),
    ({"entries": 1, "entries_written": 1, "transferred_bytes": 12}, args("/etc/hosts"), "/tmp/x/",
     "restored 1 entry (12 B) of web1 2026-12-07_131509:/etc/hosts to /tmp/x/etc/hosts"),
    ({"entries_written": 1234, "transferred_bytes": 0}, args("/"), "web1:/srv",
     "restored 1,234 entries (0 B) of web1 2026-12-07_131509:/ to web1:/srv"),
    ({"entries_written": 1200, "transferred_bytes": 1024}, args(), "/tmp/x",
     "restored 1,200 entries (1.0 KiB) of web1 2026-12-07_131509:/etc to /tmp/x/etc; "
     "34 already there, kept (--overwrite replaces them)"),
    ({"entries_written": 4, "transferred_bytes": 10}, args(overwrite=True), "/tmp/x",
     "restored 4 entries (10 B) of web1 2026-12-07_131509:/etc to /tmp/x/etc; 1,230 already up to date"),
])
def test_a_restore_says_what_it_restored(stats, given, dest, line):
    assert _restored(job(**stats), given, dest) == line


def test_a_dry_run_says_what_it_would_restore():
    assert _restored(job(entries_to_write=1234, transferred_bytes=0), args(dry_run=True), "/tmp/x") == \
        "would restore 1,234 entries (0 B) of web1 2026-12-07_131509:/etc to /tmp/x/etc"


def test_names_in_the_line_are_escaped():
    line = _restored(job(entries_written=1, transferred_bytes=1), args("/a\x1b]0;x\x07"), "/tmp/\x9b")
    assert "\x1b" not in line and "\\x1b]0;x\\x07" in line and "\\u009b" in line
