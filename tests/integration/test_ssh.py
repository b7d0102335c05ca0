"""Pulling over real SSH from sshd instances on loopback."""

import os
import socket
import threading
import time

from conftest import free_port, make_tree


def _ssh_daemon(daemon_factory, fleet, hosts, **ssh_options):
    options = ["ConnectTimeout=3", "ServerAliveInterval=2", "ServerAliveCountMax=2"]
    return daemon_factory(hosts, ssh=fleet.ssh_settings(options=options, **ssh_options)).start()


def test_pull_over_ssh_from_a_loopback_host(tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "remote-home", files=20)
    (source / "with space.txt").write_text("spaces survive\n")
    ssh_fleet.add_host("web1")
    daemon = _ssh_daemon(daemon_factory, ssh_fleet, [{"name": "web1", "source": f"web1:{source}/"}])

    job = daemon.run_snapshot("web1")
    assert job["status"] == "ok", job
    latest = daemon.workdir / "backup" / "web1" / "latest"
    assert (latest / "with space.txt").read_text() == "spaces survive\n"
    assert (latest / "dir3" / "file19.txt").read_text() == (source / "dir3" / "file19.txt").read_text()
    assert job["hosts"][0]["stats"]["files"] == 21


def test_an_unreachable_host_fails_in_seconds_and_keeps_the_previous_snapshot(tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "remote-home", files=5)
    ssh_fleet.add_host("web1")
    daemon = _ssh_daemon(daemon_factory, ssh_fleet, [{"name": "web1", "source": f"web1:{source}/"}])
    good = daemon.run_snapshot("web1")["hosts"][0]["snapshot"]
    before = {p.name: p.stat().st_ino for p in (daemon.workdir / "backup/web1/latest").iterdir()}

    ssh_fleet.kill("web1")
    started = time.monotonic()
    result = daemon.bkctl("run", "web1", "--wait")
    took = time.monotonic() - started
    assert result.returncode == 1
    assert "the SSH connection failed" in result.stdout and "Connection refused" in result.stdout
    assert took < 15

    host_dir = daemon.workdir / "backup" / "web1"
    assert [p.name for p in (host_dir / "hourly").iterdir()] == [good]
    assert os.readlink(host_dir / "latest") == f"hourly/{good}"
    assert {p.name: p.stat().st_ino for p in (host_dir / "latest").iterdir()} == before


def test_a_host_that_accepts_but_never_answers_fails_within_the_connect_timeout(daemon_factory, ssh_fleet):
    address = "127.0.0.7"
    port = free_port(address)
    listener = socket.create_server((address, port))
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    ssh_fleet.alias("hung", address, port)
    daemon = _ssh_daemon(daemon_factory, ssh_fleet, [{"name": "hung", "source": "hung:/srv/"}])
    try:
        started = time.monotonic()
        job = daemon.run_snapshot("hung")
        took = time.monotonic() - started
    finally:
        listener.close()
    assert job["status"] == "failed"
    assert job["hosts"][0]["error"].endswith("(the SSH connection failed)")  # for every role
    assert "timed out" in job["hosts"][0]["detail"]  # the full message: admins (root here)
    assert took < 15


def test_a_changed_host_key_fails_loudly_and_is_never_accepted(tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "remote-home", files=3)
    address, port = ssh_fleet.add_host("web1")
    # Pretend the host was known under a different key: what a MITM or a reinstall looks like.
    other = ssh_fleet.root / "other_key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    ssh_fleet.known_hosts.write_text(f"[{address}]:{port} {kind} {key}\n")
    known_before = ssh_fleet.known_hosts.read_text()
    daemon = _ssh_daemon(daemon_factory, ssh_fleet, [{"name": "web1", "source": f"web1:{source}/"}])

    job = daemon.run_snapshot("web1")
    assert job["status"] == "failed"
    assert job["hosts"][0]["error"].endswith("(the SSH connection failed)")  # 255, or 12 when rsync notices first
    assert "Host key verification failed" in job["hosts"][0]["detail"]
    assert ssh_fleet.known_hosts.read_text() == known_before
    assert not (daemon.workdir / "backup" / "web1" / "latest").exists()
