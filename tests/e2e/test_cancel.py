"""Cancel stops the whole process tree and removes the partial output."""

import os
import textwrap

from conftest import make_tree, slow_source, wait_until


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_cancel_kills_a_stubborn_tool_and_its_grandchild_and_removes_the_partial(tmp_path, daemon_factory):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids = tmp_path / "pids"
    fake = bin_dir / "rsync"
    # Answers --version like a good rsync; otherwise writes into the destination
    # (the last argument), forks a grandchild, and ignores SIGTERM.
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        if [ "$1" = --version ]; then echo 'rsync  version 3.5.0  protocol version 32'; exit 0; fi
        dest="${{@: -1}}"
        mkdir -p "$dest" && echo partial > "$dest/half-written"
        trap '' TERM
        bash -c 'trap "" TERM; echo $$ >> {pids}; while :; do sleep 1; done' &
        echo $$ >> {pids}
        while :; do sleep 1; done
        """))
    fake.chmod(0o755)
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}])
    daemon.start(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 20, what="the fake tool")
    hourly = daemon.workdir / "backup/web1/hourly"
    assert [p.name.startswith(".partial-") for p in hourly.iterdir()] == [True]

    result = daemon.bkctl("cancel", "web1")
    assert result.returncode == 0 and "cancelled: web1" in result.stdout
    recorded = [int(p) for p in pids.read_text().split()]
    assert not any(_alive(pid) for pid in recorded)
    assert list(hourly.iterdir()) == []
    job = daemon.call("job.get", job_id=job_id)["job"]
    assert job["status"] == "cancelled" and job["hosts"][0]["status"] == "cancelled"
    assert daemon.bkctl("job", str(job_id)).returncode == 1


def test_cancel_by_job_id_and_usage(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 4))}],
                            rsync={"bwlimit": "300"}).start()
    job_id = daemon.call("job.start")["job_id"]
    wait_until(lambda: daemon.call("status")["hosts"]["web1"]["state"] == "running", 10, what="the run")
    result = daemon.bkctl("--json", "cancel", "--job", str(job_id))
    assert result.returncode == 0 and '"cancelled": ["web1"]' in result.stdout
    assert daemon.wait_job(job_id)["status"] == "cancelled"
    assert daemon.bkctl("cancel").returncode == 2
    idle = daemon.bkctl("cancel", "web1")
    assert idle.returncode == 0 and "nothing was running" in idle.stdout
    assert daemon.bkctl("cancel", "--job", "999").returncode == 1
