"""Shared fixtures: real daemons as subprocesses, real sshd hosts on loopback."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomli_w

from bkctl.client import Client

BIN = Path(sys.executable).parent
RUN_ID = f"{os.getpid()}"


def make_tree(root: Path, files: int = 40) -> Path:
    for index in range(files):
        directory = root / f"dir{index % 4}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"file{index}.txt").write_text(f"content of file {index}\n" * (index + 1))
    return root


def slow_source(root: Path, megabytes: int = 8) -> Path:
    """A source that takes a while with a low bwlimit: one big random file."""
    root.mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(megabytes * 1024 * 1024))
    (root / "small.txt").write_text("small\n")
    return root


def exchange(path, payload: bytes, timeout: float = 30) -> list[dict]:
    """Send payload (any number of request lines, in one write) on one
    connection; return every answer line until the daemon closes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return [json.loads(line) for line in sock.makefile("rb")]


def requests_line(*calls: tuple) -> bytes:
    """(id, method, params) → request lines for exchange()."""
    return b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode() + b"\n"
                    for i, m, p in calls)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Daemon:
    """`bkd serve` on a config of its own, driven through `bkctl` and the socket."""

    def __init__(self, workdir: Path, socket_path: Path, config: dict):
        self.workdir = workdir
        self.socket = socket_path
        self.config = config
        self.config_path = workdir / "bkd.toml"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(tomli_w.dumps(self.config))

    def start(self, env: dict | None = None, wait: bool = True, wrap: tuple[str, ...] = ()) -> Daemon:
        """wrap: a command that execs the daemon's command line given after it (same pid)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*wrap, str(BIN / "bkd"), "--config", str(self.config_path), "serve"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
        )
        log.close()
        if wait:
            wait_until(self._listening, 30, what=f"bkd to listen (log: {self.log()})")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"bkd exited with {self.proc.returncode}: {self.log()}")
        try:
            Client(str(self.socket), timeout=5).close()
            return True
        except Exception:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def bkctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "bkctl"), "--socket", str(self.socket), *args],
                              capture_output=True, text=True, timeout=timeout)

    def bkctl_json(self, *args: str) -> dict:
        result = self.bkctl("--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def call(self, method: str, **params) -> dict:
        with Client(str(self.socket)) as client:
            return client.call(method, params or None)

    def wait_job(self, job_id: int, timeout: float = 120) -> dict:
        def finished():
            job = self.call("job.get", job_id=job_id)["job"]
            return job if job["finished"] else None
        return wait_until(finished, timeout, 0.1, what=f"job {job_id}")

    def run_snapshot(self, *hosts: str) -> dict:
        job_id = self.call("job.start", **({"hosts": list(hosts)} if hosts else {}))["job_id"]
        return self.wait_job(job_id)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
                self.proc.wait(10)
                raise AssertionError(f"bkd did not stop within {timeout}s of {signal.Signals(sig).name}; "
                                     f"its log ends:\n{self.log()[-20000:]}") from None
        return self.proc.returncode if self.proc else 0


@pytest.fixture
def tmux():
    """tmux(*args) runs tmux on a server of this test's own; the server is killed after."""
    if not shutil.which("tmux"):
        pytest.fail("tmux is not installed: run the README's test command (make test)")
    server = f"bkd-test-{RUN_ID}-{os.urandom(3).hex()}"

    def run(*args):
        return subprocess.run(["tmux", "-L", server, *args], capture_output=True, text=True, timeout=10)

    yield run
    run("kill-server")


@pytest.fixture
def small_tmpfs(tmp_path):
    """small_tmpfs(size) mounts a tmpfs of that size (e.g. "8m") for this test: a disk that fills."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"small-{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", f"bkd-test-{RUN_ID}", str(point)],
                       check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def bind_mount():
    """bind_mount(source, target) mounts source on target for this test (root); unmounted after."""
    mounted = []

    def mount(source: str, target) -> None:
        subprocess.run(["mount", "--bind", source, str(target)], check=True)
        mounted.append(target)

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def short_tmp():
    """A short directory for sockets (AF_UNIX paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bkd-t-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon_factory(tmp_path, short_tmp):
    started: list[Daemon] = []

    def make(hosts: list[dict], name: str = "d", **overrides) -> Daemon:
        workdir = tmp_path / name
        workdir.mkdir()
        config = {
            "backup_root": str(workdir / "backup"),
            "state_dir": str(workdir / "state"),
            "socket": str(short_tmp / f"{name}.sock"),
            "schedule": {"enabled": False},
            "host": hosts,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        daemon = Daemon(workdir, Path(config["socket"]), config)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


# ---- loopback sshd hosts ------------------------------------------------------

class SshFleet:
    """sshd instances on 127.0.0.N, each with its own host key; one client key,
    one known_hosts and one ssh_config (aliases → address and port) for bkd."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.client_key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        self.ssh_config = root / "ssh_config"
        self.authorized_keys = root / "authorized_keys"
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, tuple] = {}  # alias -> what add_host was given (replace_host_key)
        self.known_hosts.touch()
        self.ssh_config.write_text("")
        _keygen(self.client_key)
        shutil.copy(f"{self.client_key}.pub", self.authorized_keys)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir

    def ssh_settings(self, **options) -> dict:
        settings = {"config_file": str(self.ssh_config), "identity_file": str(self.client_key),
                    "known_hosts_file": str(self.known_hosts)}
        settings.update(options)
        return settings

    def alias(self, alias: str, address: str, port: int) -> None:
        with self.ssh_config.open("a") as f:
            f.write(f"Host {alias}\n  HostName {address}\n  Port {port}\n  User {_user()}\n\n")

    def add_host(self, alias: str, address: str | None = None, sshd_extra: str = "", port: int | None = None,
                 authorized_keys: Path | None = None) -> tuple[str, int]:
        """Start an sshd for alias (on address, default a random 127.0.0.N; on
        port, default a free one) and trust its key; sshd_extra: more
        sshd_config lines (e.g. a ForceCommand); authorized_keys: the file it
        reads keys from (default the fleet's, readable by root only)."""
        address = address or f"127.0.0.{random.randint(20, 250)}"
        literal = f"[{address}]" if ":" in address else address  # an IPv6 address
        file_name = alias.replace(":", "_")
        host_key = self.root / f"{file_name}_host_key"
        _keygen(host_key)
        wanted = port
        for _ in range(10):
            port = wanted or free_port(address)
            config = self.root / f"{file_name}_sshd_config"
            config.write_text(
                f"ListenAddress {literal}:{port}\nHostKey {host_key}\nPidFile none\n"
                f"AuthorizedKeysFile {authorized_keys or self.authorized_keys}\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel ERROR\n" + sshd_extra
            )
            proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_until(lambda: proc.poll() is not None or _port_open(address, port), 10,
                           what=f"sshd on {address}:{port}")
            except AssertionError:
                proc.kill()
                raise
            if proc.poll() is None:
                break
        else:
            raise AssertionError(f"sshd would not start: {proc.stderr.read()}")
        self.procs[alias] = proc
        self.started[alias] = (address, sshd_extra, port, authorized_keys)
        public = Path(f"{host_key}.pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"[{address}]:{port} {public[0]} {public[1]}\n")
        self.alias(alias, address, port)
        return address, port

    def replace_host_key(self, alias: str) -> None:
        """The host comes back on the same address and port with a new host key
        (a reinstall, or someone in between); the fleet's own known_hosts is not told."""
        address, sshd_extra, port, authorized_keys = self.started[alias]
        self.kill(alias)
        file_name = alias.replace(":", "_")
        for key in self.root.glob(f"{file_name}_host_key*"):
            key.unlink()
        known = self.known_hosts.read_text()
        self.add_host(alias, address, sshd_extra, port, authorized_keys)
        self.known_hosts.write_text(known)

    def restart(self, alias: str) -> None:
        """The host comes back after kill(): the same sshd, address, port and host key."""
        address, _extra, port, _keys = self.started[alias]
        config = self.root / f"{alias.replace(':', '_')}_sshd_config"
        proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: proc.poll() is not None or _port_open(address, port), 10, what=f"sshd on {address}:{port}")
        assert proc.poll() is None, proc.stderr.read()
        self.procs[alias] = proc

    def kill(self, alias: str) -> None:
        """The host goes down: sshd and every session it forked."""
        proc = self.procs.pop(alias)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        proc.kill()
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def close(self) -> None:
        for alias in list(self.procs):
            self.kill(alias)


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _port_open(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@pytest.fixture
def ssh_fleet(tmp_path):
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        pytest.fail("sshd is not installed: run the README's test command (make test)")
    fleet = SshFleet(tmp_path / "ssh")
    yield fleet
    fleet.close()


def between_compare_and_copy(monkeypatch, action) -> None:
    """Make an incremental snapshot call action(plan, private) after it has
    cleared its linked copy and before rsync copies the list: the source
    changing between bkd's two reads of it, deterministically."""
    from bkd.pipeline import snapshot

    clear = snapshot._Plan.clear

    def clear_then_act(plan, *args):
        private = clear(plan, *args)
        action(plan, private)
        return private

    monkeypatch.setattr(snapshot._Plan, "clear", clear_then_act)
