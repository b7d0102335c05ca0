"""bkctl's bash completion offers the host names of the daemon that the
command line being completed would reach (its --socket, else $BKD_SOCKET),
asked with `bkctl --json hosts`; nothing, quietly, when it cannot."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

import clidocs
from bkctl import protocol
from conftest import BIN

BKCTL = str(BIN / "bkctl")


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    return clidocs.write(tmp_path_factory.mktemp("generated")) / "completions" / "bkctl"


def offered(script: Path, *words: str, env: dict | None = None) -> list[str]:
    """The completion of the last word, with bkctl as the command line names it (a path here)."""
    bash = 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _bkctl; printf "%s\\n" "${COMPREPLY[@]}"'
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", bash, "bash", str(script), BKCTL, *words],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert (result.returncode, result.stderr) == (0, "")
    return [word for word in result.stdout.splitlines() if word]


@pytest.fixture
def daemon(daemon_factory, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    hosts = [{"name": name, "source": str(source)} for name in ("web1", "web2", "db.main")]
    return daemon_factory(hosts).start()


def test_completion_offers_the_daemons_host_names(script, daemon):
    socket_env = {"BKD_SOCKET": str(daemon.socket)}
    assert offered(script, "run", "", env=socket_env) == ["web1", "web2", "db.main"]
    assert offered(script, "run", "web1", "w", env=socket_env) == ["web1", "web2"]  # HOST...
    assert offered(script, "snapshots", "d", env=socket_env) == ["db.main"]
    assert offered(script, "jobs", "--host", "", env=socket_env) == ["web1", "web2", "db.main"]
    assert offered(script, "hosts", "test", "web", env=socket_env) == ["web1", "web2"]
    assert offered(script, "alerts", "ack", "d", env=socket_env) == ["db.main"]  # ID|HOST
    # The daemon the command line names, not the one of the environment.
    elsewhere = {"BKD_SOCKET": "/nonexistent/bkd.sock"}
    assert offered(script, "--socket", str(daemon.socket), "verify", "", env=elsewhere) == ["web1", "web2", "db.main"]
    assert offered(script, "verify", "--socket", str(daemon.socket), "we", env=elsewhere) == ["web1", "web2"]
    # After the HOST of `verify HOST [SNAPSHOT]`, no more host names.
    assert offered(script, "verify", "web1", "", env=socket_env) == []


def test_completion_is_quietly_empty_when_the_daemon_is_gone(script, daemon):
    daemon.stop()
    assert offered(script, "run", "", env={"BKD_SOCKET": str(daemon.socket)}) == []


class FakeDaemon:
    """A socket that answers daemon.info like bkd and hosts.list with the names given."""

    def __init__(self, path: Path, names: list):
        self.names = names
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    request = json.loads(line)
                    result = ({"version": "0", "protocol": protocol.PROTOCOL_VERSION, "pid": 1}
                              if request["method"] == "daemon.info" else {"hosts": [{"name": n} for n in self.names]})
                    stream.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode() + b"\n")
                    stream.flush()

    def close(self):
        self.server.close()


def test_host_names_that_break_the_host_rule_are_never_offered_or_run(script, short_tmp):
    """Whatever a socket answers, only names bkd could have configured reach bash."""
    marker = short_tmp / "ran"
    names = ["ok1", f"$(touch {marker})", f"`touch {marker}`", "two words", "a;b", "*", "x\nok2", 7, None, "ok3"]
    fake = FakeDaemon(short_tmp / "fake.sock", names)
    try:
        assert offered(script, "run", "", env={"BKD_SOCKET": str(short_tmp / "fake.sock")}) == ["ok1", "ok3"]
    finally:
        fake.close()
    assert not marker.exists()
