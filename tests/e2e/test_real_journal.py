"""The audit chain's witness against a real journald (issue 18, item 10): a
journald of the test's own, in a private mount namespace (its /run and
/var/log/journal are tmpfs there), receives the daemon's entries over the
native protocol; the daemon's `journalctl` reads them back and catches a
log truncated behind a rewritten head record."""

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, make_tree, wait_until

JOURNALD = Path("/lib/systemd/systemd-journald")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root (CI runs as root)")


@pytest.fixture
def namespace():
    """A journald of its own in a private mount namespace; yields its pid (for nsenter)."""
    if not JOURNALD.exists():
        pytest.fail(f"{JOURNALD} is missing: install systemd")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                               "mount -t tmpfs bkd-test-run /run && mkdir -p /var/log/journal && "
                               "mount -t tmpfs bkd-test-journal /var/log/journal && "
                               f"exec {JOURNALD}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    inside = ["nsenter", "-t", str(holder.pid), "-m", "--"]
    try:
        wait_until(lambda: holder.poll() is not None or subprocess.run(
            [*inside, "test", "-S", "/run/systemd/journal/socket"]).returncode == 0, 20, what="journald")
        assert holder.poll() is None, holder.stderr.read()
        yield inside
    finally:
        holder.terminate()
        holder.wait(10)


def start_inside(daemon, inside: list[str]) -> None:
    """`bkd serve` in the namespace, its stderr a file the journal stream names: it logs natively."""
    daemon.log_path.touch()
    st = os.stat(daemon.log_path)
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen([*inside, str(BIN / "bkd"), "--config", str(daemon.config_path), "serve"],
                                       stdout=log, stderr=log,
                                       env={**{k: v for k, v in os.environ.items() if k != "BKD_JOURNAL_SOCKET"},
                                            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    wait_until(daemon._listening, 30, what="bkd to listen")


def test_a_truncated_log_behind_a_rewritten_head_is_caught_by_the_real_journal(tmp_path, daemon_factory, namespace):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}])
    start_inside(daemon, namespace)
    for _ in range(5):
        daemon.call("alerts.ack", all=True)
    head = daemon.workdir / "backup" / ".bkd-audit-head"
    whole = daemon.bkctl("audit", "--verify")
    assert whole.returncode == 0 and "journal: compared with 5 record(s) in the journal" in whole.stdout, whole.stdout
    daemon.stop()
    assert b"audit.entry" not in daemon.log_path.read_bytes()  # it went to the journal, not to stderr

    with sqlite3.connect(daemon.workdir / "state" / "bkd.sqlite") as db:
        db.execute("DELETE FROM audit WHERE id > 3")
        three = db.execute("SELECT hash FROM audit WHERE id = 3").fetchone()[0]
    head.write_text(json.dumps({"id": 3, "hash": three, "time": "x"}) + "\n")  # the head matches the rest
    start_inside(daemon, namespace)
    verdict = daemon.bkctl("audit", "--verify")
    daemon.stop()
    assert verdict.returncode == 1
    assert "the journal recorded audit 2 entries from 4 to 5, which the database does not hold" in verdict.stdout
