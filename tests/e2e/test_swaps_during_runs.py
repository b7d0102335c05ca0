"""A user flips a directory of their home between a real directory and a
symlink to a root-only directory while bkd takes snapshot after snapshot
(issue 17 item 5): no snapshot holds the outside file, and each one is a
state the source really had."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from changers import swapped_home, tree_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a second user and a root-only directory need root")

CHANGERS = Path(__file__).with_name("changers.py")
USER = 4321
RUNS = 30

def test_a_directory_flipping_to_a_symlink_during_runs_never_brings_outside_files_in(short_tmp, daemon_factory):
    short_tmp.chmod(0o755)  # the user reaches their home; the secret stays root's
    home, stash = short_tmp / "home", short_tmp / "stash"
    as_directory, as_symlink = swapped_home(home, stash, short_tmp / "secret", USER)

    daemon = daemon_factory([{"name": "web1", "source": str(home)}], archive={"enabled": False},
                            monthly={"enabled": False}).start()
    hourly = daemon.workdir / "backup" / "web1" / "hourly"
    stop = short_tmp / "stop"
    flipper = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                                sys.executable, CHANGERS, "swap", home, stash, stop],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    statuses: dict[str, int] = {}
    try:
        for _ in range(RUNS):
            job = daemon.run_snapshot("web1")
            host = job["hosts"][0]
            statuses[host["status"]] = statuses.get(host["status"], 0) + 1
            if host["status"] == "failed":
                # rsync 3.5 refuses a symlink owned by another user in a path it
                # resolves (exit 23): the run fails and leaves nothing behind.
                assert "exited with code 23" in host["error"], host
                continue
            assert host["status"] in ("ok", "warning"), host
            taken = tree_state(hourly / host["snapshot"])
            assert taken in (as_directory, as_symlink), (host["snapshot"], taken)
    finally:
        stop.touch()
        out, err = flipper.communicate(timeout=30)
    assert flipper.returncode == 0 and int(out) > RUNS, err
    assert statuses.get("ok", 0) + statuses.get("warning", 0) >= 5, statuses
    for path in hourly.rglob("*"):
        assert not (path.is_file() and not path.is_symlink() and b"SECRET" in path.read_bytes()), path
    print(f"{RUNS} runs: {statuses}")
