"""The README's first command: `make run` sets up the demo and bkd snapshots
it at once; the commands the README shows next work against it."""

import json
import os
import signal
import subprocess
from pathlib import Path

from conftest import BIN, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_snapshots_the_demo_at_once_and_the_readme_commands_work(short_tmp):
    demo = short_tmp / "demo"  # the socket lives in it: keep the path short
    make = subprocess.Popen(["make", "--no-print-directory", "run", f"DEMO={demo}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    socket = demo / "bkd.sock"

    def bkctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "bkctl"), "--socket", str(socket), *args], capture_output=True, text=True,
                              timeout=120)

    def first_snapshot() -> bool:
        if make.poll() is not None:
            raise AssertionError(f"make run ended: {make.stdout.read().decode(errors='replace')}")
        if not socket.exists():
            return False
        status = bkctl("--json", "status")
        return status.returncode == 0 and bool(json.loads(status.stdout)["hosts"]["demo"]["last_snapshot"])

    try:
        wait_until(first_snapshot, 120, 0.2, what="the demo's first snapshot")
        listed = bkctl("snapshots", "demo")
        assert listed.returncode == 0 and "latest" in listed.stdout
        (demo / "source" / "README.txt").write_text("changed\n")
        second = bkctl("run", "--wait")
        assert second.returncode == 0, second.stdout + second.stderr
        assert len(list((demo / "backup" / "demo" / "hourly").iterdir())) == 2
        assert (demo / "backup" / "demo" / "latest" / "README.txt").read_text() == "changed\n"
    finally:
        os.killpg(make.pid, signal.SIGTERM)  # Ctrl-C's equivalent for make and bkd
        make.wait(30)
