"""Host parameters name hosts, never paths (SPEC §5: "no host parameter can
reach a path outside the backup root's host directories"), and paths read
back from a manifest stay inside the snapshot (SPEC §7).

Issue 11, defect 1: a viewer learnt whether a root-only directory exists
from `snapshots.list` with host = "../../../../root/secret-dir", an operator
got the SHA-256 of /etc/shadow from `verify` on a planted tree, and
snapshot rows for such names were written to SQLite."""

import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkctl.client import Client, RemoteError
from bkctl.protocol import ErrorCode
from bkd.config.models import valid_host_name
from bkd.rpc.methods import Api, method_table
from conftest import make_tree, wait_until

SNAPSHOT = "2026-01-01_000000"
SHADOW = Path("/etc/shadow")
REFUSED = {ErrorCode.INVALID_PARAMS, ErrorCode.NOT_FOUND}


def plant_tree(root: Path, manifest_path: bytes) -> None:
    """A host directory as bkd would write it, with one manifest line pointing at manifest_path."""
    (root / "hourly" / SNAPSHOT).mkdir(parents=True)
    (root / "meta").mkdir()
    (root / "latest").symlink_to(f"hourly/{SNAPSHOT}")
    (root / "meta" / f"{SNAPSHOT}.manifest").write_bytes(b"0" * 64 + b" 1 " + manifest_path + b"\n")


def call_code(daemon, method: str, **params) -> int:
    with pytest.raises(RemoteError) as refused:
        daemon.call(method, **params)
    return refused.value.code


def host_names_in_database(daemon) -> set[str]:
    with sqlite3.connect(daemon.workdir / "state" / "bkd.sqlite") as db:
        rows = db.execute("SELECT host FROM snapshots UNION SELECT host FROM verified UNION SELECT host FROM "
                          "episodes UNION SELECT host FROM job_hosts UNION SELECT host FROM host_state").fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def daemon(tmp_path, daemon_factory):
    return daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}],
                          verify={"sample_percent": 100.0}).start()


def test_a_path_as_host_does_not_tell_whether_a_directory_exists(tmp_path, daemon):
    secret = tmp_path / "secret-dir"
    secret.mkdir(mode=0o700)
    backup_root = daemon.workdir / "backup"
    existing = os.path.relpath(secret, backup_root)  # ../../secret-dir
    missing = os.path.relpath(tmp_path / "no-such-dir", backup_root)
    answers = {call_code(daemon, "snapshots.list", host=host) for host in (existing, missing)}
    assert answers == {ErrorCode.INVALID_PARAMS}  # the same answer whether it exists or not
    with pytest.raises(RemoteError, match=r"^invalid params: host: .*use only letters, digits"):
        daemon.call("snapshots.list", host=existing)
    assert host_names_in_database(daemon) <= {"web1"}


def test_verify_of_a_planted_tree_under_a_path_host_reads_nothing(tmp_path, daemon):
    evil = tmp_path / "evil"
    plant_tree(evil, b"../" * 12 + os.fsencode(SHADOW).lstrip(b"/"))
    host = os.path.relpath(evil, daemon.workdir / "backup")
    for params in ({"sample": True}, {}, {"all": True}):
        assert call_code(daemon, "verify", host=host, **params) == ErrorCode.INVALID_PARAMS
    assert call_code(daemon, "snapshots.list", host=host) == ErrorCode.INVALID_PARAMS
    assert daemon.call("alerts.list", all=True)["alerts"] == []  # no integrity alert under a path's name
    assert host_names_in_database(daemon) <= {"web1"}


def test_a_manifest_line_outside_the_snapshot_is_refused_not_hashed(tmp_path, daemon):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not bkd's to read\n")
    daemon.run_snapshot()
    host_dir = daemon.workdir / "backup" / "web1"
    (name,) = [p.name for p in (host_dir / "hourly").iterdir()]
    manifest = host_dir / "meta" / f"{name}.manifest"
    escape = b"../" * 40 + os.fsencode(outside).lstrip(b"/")
    with manifest.open("ab") as f:
        f.write(b"0" * 64 + b" 1 " + escape + b"\n")
    secrets = {hashlib.sha256(outside.read_bytes()).hexdigest()}
    if SHADOW.exists() and os.access(SHADOW, os.R_OK):
        with manifest.open("ab") as f:
            f.write(b"0" * 64 + b" 1 " + b"../" * 40 + b"etc/shadow\n")
        secrets.add(hashlib.sha256(SHADOW.read_bytes()).hexdigest())
    for params in ({"sample": True}, {"all": True}):
        try:
            answer = repr(daemon.call("verify", host="web1", **params))
        except RemoteError as e:
            answer = repr((e.code, e.message, e.data))
        assert not any(digest in answer for digest in secrets), answer
        assert "refusing the path" in answer


# ---- every host-taking method, fed hostile names --------------------------------------

MARK = "zqx"  # every generated name that could reach the file system carries it
# Params that make each host-taking method otherwise valid; a method added later must be added here.
HOST_CALLS = {
    "job.start": lambda h, tmp: {"hosts": [h]},
    "job.cancel": lambda h, tmp: {"hosts": [h]},
    "jobs.list": lambda h, tmp: {"host": h},
    "snapshots.list": lambda h, tmp: {"host": h},
    "snapshots.browse": lambda h, tmp: {"host": h},
    "find": lambda h, tmp: {"host": h, "path": "/dir0"},
    "du": lambda h, tmp: {"hosts": [h]},
    "restore": lambda h, tmp: {"host": h, "snapshot": "latest", "path": "/", "dest": str(tmp / "restored"),
                               "dry_run": True},
    "verify": lambda h, tmp: {"host": h, "sample": True},
    "alerts.ack": lambda h, tmp: {"host": h},
    "alerts.silence": lambda h, tmp: {"host": h, "for": "1h"},
    "alerts.unsilence": lambda h, tmp: {"host": h},
    "report": lambda h, tmp: {"hosts": [h]},
    "prune": lambda h, tmp: {"hosts": [h], "dry_run": True},
    "hosts.test": lambda h, tmp: {"hosts": [h]},
    "hosts.release": lambda h, tmp: {"host": h, "note": "hostile"},
}


def test_the_table_of_host_taking_methods_is_complete():
    taking = {name for name, method in method_table(Api()).items()
              if {"host", "hosts"} & set(method.params.model_fields)}
    assert taking == set(HOST_CALLS)


def hostile_names(sentinel: Path):
    pieces = st.sampled_from(["..", "/", "../", ".", "\0", MARK, f"{MARK}/..", "\udcff", "\udc80", "é", " ",
                              "\n", "*", "~", ":", os.fspath(sentinel), sentinel.name, "web1"])
    joined = st.lists(pieces | st.text(max_size=6), min_size=1, max_size=8).map("".join)
    long = st.integers(65, 400).map(lambda n: (MARK + "x" * n)[:n])
    return (joined | long).map(lambda n: n if MARK in n else MARK + n).filter(lambda n: not valid_host_name(n))


def strace_paths(trace: str, cwd: Path) -> list[str]:
    """Every path a traced file syscall named, resolved against its dirfd (strace -y)."""
    paths = []
    call = re.compile(r'^\d+\s+\w+\((?:(\w+)(?:<([^>]*)>)?, )?"((?:[^"\\]|\\.)*)"')
    for line in trace.splitlines():
        match = call.match(line)
        if not match:
            continue
        dirfd, dirpath, raw = match.groups()
        path = raw.encode().decode("unicode_escape", "replace")
        base = dirpath if dirpath else os.fspath(cwd)
        paths.append(os.path.normpath(os.path.join(base, path)))
    return paths


def test_hostile_host_names_get_invalid_params_and_open_nothing_outside_the_backup_root(tmp_path, daemon):
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed: run the README's test command (make test)")
    daemon.run_snapshot()
    backup_root = daemon.workdir / "backup"
    sentinel = daemon.workdir / f"{MARK}-secret"
    plant_tree(sentinel, b"../../../../etc/shadow")
    trace = tmp_path / "strace.out"
    strace = subprocess.Popen(["strace", "-f", "-y", "-qq", "-s", "4096", "-e", "trace=%file", "-o", str(trace),
                               "-p", str(daemon.proc.pid)])
    try:
        probe = f"{MARK}probe"
        # A valid, unknown name reaches the file system (the is-it-a-removed-host check): proof strace sees it.
        wait_until(lambda: call_code(daemon, "snapshots.list", host=probe) == ErrorCode.NOT_FOUND
                   and trace.exists() and probe in trace.read_text(errors="replace"), 20, 0.2,
                   what="strace to attach")
        codes = set()
        with Client(str(daemon.socket)) as client:
            @settings(max_examples=120, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
            @given(hostile_names(sentinel))
            def every_method_refuses(name):
                for method, params in HOST_CALLS.items():
                    with pytest.raises(RemoteError) as refused:
                        client.call(method, params(name, tmp_path))
                    assert refused.value.code in REFUSED, (method, name, refused.value.message)
                    codes.add(refused.value.code)

            every_method_refuses()
        assert ErrorCode.INVALID_PARAMS in codes
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(10)
    traced = strace_paths(trace.read_text(errors="replace"), Path.cwd())
    assert any(probe in p for p in traced)
    assert all(p.startswith(os.fspath(backup_root) + os.sep) for p in traced if probe in p)
    for path in traced:  # no generated name reached a file syscall, inside the backup root or out
        assert MARK not in path or probe in path, path
    assert host_names_in_database(daemon) <= {"web1"}
    assert daemon.call("status")["hosts"].keys() == {"web1"}
