"""`bkctl run --wait` and `bkctl restore` as a person watches them: on a
terminal (tmux), one line per host updated in place while it runs and its
last line when it ends; in a pipe, one plain line per event. A restore ends
with what it restored."""

from __future__ import annotations

import json
import os
import re

from conftest import BIN, make_tree, slow_source, wait_until


def on_terminal(tmux, tmp_path, command: list[str]) -> tuple[list[str], str]:
    """Run command in a 160x50 terminal: the lines on its screen once it has
    exited, and the raw output the terminal received."""
    raw = tmp_path / f"raw-{os.urandom(3).hex()}.log"
    script = tmp_path / f"cmd-{os.urandom(3).hex()}.sh"
    script.write_text("#!/bin/sh\nsleep 0.3\n" + " ".join(f"'{a}'" for a in command) + '\necho "EXIT=$?"\nsleep 600\n')
    script.chmod(0o755)
    assert tmux("new-session", "-d", "-x", "160", "-y", "50", "-e", "TERM=xterm-256color", str(script)).returncode == 0
    tmux("pipe-pane", "-o", f"cat >> {raw}")  # every byte the terminal gets (the script waits for this)

    def screen() -> list[str]:
        return [line.rstrip() for line in tmux("capture-pane", "-p", "-J").stdout.splitlines() if line.strip()]

    wait_until(lambda: any(line.startswith("EXIT=") for line in screen()), 60, what="the command to end")
    return screen(), raw.read_bytes().decode(errors="replace")  # read_text would make each \r a \n


def fleet(tmp_path, daemon_factory):
    return daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "web1", 3))},
                           {"name": "web2", "source": str(slow_source(tmp_path / "web2", 2))}],
                          rsync={"bwlimit": "1000"}).start()


def test_run_wait_on_a_terminal_keeps_one_line_per_host(tmp_path, daemon_factory, tmux):
    daemon = fleet(tmp_path, daemon_factory)
    lines, raw = on_terminal(tmux, tmp_path, [str(BIN / "bkctl"), "--socket", str(daemon.socket), "run", "--wait"])
    job_id = daemon.call("jobs.list")["jobs"][0]["job_id"]
    assert lines[0] == f"job {job_id} started"
    ends = {line.split(":")[0]: line for line in lines[1:-2]}
    assert len(lines) == 5 and set(ends) == {"web1", "web2"}, lines  # one line per host, nothing else left
    assert all(re.fullmatch(rf"{h}: ok snapshot \d{{4}}-\d\d-\d\d_\d{{6}}, 2 files, 2 changed", ends[h]) for h in ends)
    assert lines[-2:] == [f"job {job_id}: ok", "EXIT=0"]
    # It was updated in place: progress came (several updates of a host), each over the line before.
    assert len(re.findall(r"web1: snapshot \(transfer\) \d+%", raw)) >= 2, raw
    assert "\r\x1b[K" in raw and "\x1b[1A" in raw  # the line above (the other host's) rewritten too
    daemon.stop()


def test_run_wait_in_a_pipe_prints_plain_lines(tmp_path, daemon_factory):
    daemon = fleet(tmp_path, daemon_factory)
    result = daemon.bkctl("run", "--wait")
    assert result.returncode == 0 and "\r" not in result.stdout and "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert len([line for line in lines if re.match(r"web1: snapshot \(transfer\) \d+%", line)]) >= 2, lines
    assert lines[-1].endswith(": ok") and lines[-1].startswith("job ")
    daemon.stop()


def test_a_restore_ends_with_what_it_restored_on_a_terminal_and_in_a_pipe(tmp_path, daemon_factory, tmux):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 9))}],
                            rsync={"bwlimit": "1000"}).start()
    snapshot = daemon.run_snapshot()["hosts"][0]["snapshot"]
    dest = tmp_path / "dest"
    lines, raw = on_terminal(tmux, tmp_path, [str(BIN / "bkctl"), "--socket", str(daemon.socket), "restore", "web1",
                                              "latest", "/dir1", "--to", str(dest)])
    job = daemon.call("jobs.list")["jobs"][0]
    stats = daemon.call("job.get", job_id=job["job_id"])["job"]["hosts"][0]["stats"]
    written = sum(1 for _ in (dest / "dir1").iterdir()) + 1  # dir1 itself and its files
    assert stats["entries_written"] == written
    size = f"{stats['transferred_bytes']} B"
    assert lines[-2:] == [f"restored {written} entries ({size}) of web1 {snapshot}:/dir1 to {dest}/dir1", "EXIT=0"]
    assert "ok snapshot" not in raw and f"job {job['job_id']}: ok" not in raw

    again = daemon.bkctl("restore", "web1", "latest", "/dir1", "--to", str(dest), "--overwrite")
    assert again.returncode == 0 and "\r" not in again.stdout
    assert again.stdout.splitlines()[-1] == (f"restored 0 entries (0 B) of web1 {snapshot}:/dir1 to {dest}/dir1; "
                                             f"{written} already up to date")
    dry = daemon.bkctl("restore", "web1", "latest", "/dir2", "--to", str(tmp_path / "elsewhere"), "--dry-run")
    assert dry.returncode == 0 and not (tmp_path / "elsewhere" / "dir2").exists()
    assert dry.stdout.splitlines()[-1].startswith(f"would restore {written} entries (")
    assert dry.stdout.splitlines()[-1].endswith(f"of web1 {snapshot}:/dir2 to {tmp_path}/elsewhere/dir2")
    assert "would write dir2/" in dry.stdout
    as_json = daemon.bkctl("--json", "restore", "web1", "latest", "/dir3", "--to", str(tmp_path / "j"))
    assert json.loads(as_json.stdout.splitlines()[-1])["job"]["kind"] == "restore"  # the record, as before
    daemon.stop()
