"""Under systemd bkd logs to the journal's native socket. Issue 18, item 8: an
event too large for one datagram (615 KB) fell back to a raw line on
stderr, with the host's control bytes and a `<0>`-style priority prefix.
Large entries now go the way journald documents (a sealed memfd), and
what is written to stderr is escaped and bounded."""

import os
import subprocess

from conftest import BIN, make_tree, wait_until
from journal import FakeJournal

PATTERN = 4000  # rsync takes an exclude pattern of up to 4,095 bytes


def test_a_1_mb_event_reaches_the_journal_whole_in_a_sealed_memfd_and_nothing_raw_reaches_stderr(
        tmp_path, short_tmp, daemon_factory):
    journal = FakeJournal(short_tmp / "journal.sock")
    # `exec argv=[...]` (debug) carries rsync's command line: 1 MB of excludes, one with a terminal
    # escape and what looks like a priority prefix.
    excludes = [f"{i}-" + "x" * PATTERN for i in range(260)] + ["<0>\x1b]0;pwned\x07"]
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}],
                            rsync={"exclude": excludes})
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen([str(BIN / "bkd"), "--config", str(daemon.config_path), "--log-level", "debug",
                                        "serve"], stdout=log, stderr=log,
                                       env={**os.environ, **journal.env(daemon.log_path)})
    try:
        wait_until(daemon._listening, 30, what="bkd to listen")
        assert daemon.run_snapshot()["status"] == "ok"
        wait_until(lambda: any(e.get("BKD_EVENT") == b"run.done" for e in journal.entries), 30,
                   what="the run's end in the journal")
    finally:
        daemon.stop()
        journal.close()
    execs = [e for e in journal.entries if e.get("BKD_EVENT") == b"exec" and b"pwned" in e["MESSAGE"]]
    assert execs and all(e in journal.sealed for e in execs)  # too large for a datagram: a memfd, whole
    assert all(len(e["MESSAGE"]) > 260 * PATTERN and b"x1b]0;pwned" in e["MESSAGE"] for e in execs)
    assert b"\x1b" not in b"".join(value for e in journal.entries for value in e.values())  # escaped for readers
    assert any(e.get("BKD_EVENT") == b"snapshot.complete" and e not in journal.sealed for e in journal.entries)
    stderr = daemon.log_path.read_bytes()
    assert b"\x1b" not in stderr and b"event=exec" not in stderr, stderr[:300]
