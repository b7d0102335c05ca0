"""Real Unix users and groups for tests of roles (SO_PEERCRED sees a real
uid and the kernel's supplementary groups), with names unique to the test
run; each is removed again, and only what was made here."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

# Run as another user: send each request on a connection of its own, print the answers.
CALLER = r"""
import json, socket, sys
path, calls = sys.argv[1], json.loads(sys.argv[2])
answers = []
for index, (method, params) in enumerate(calls):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(120)
        sock.connect(path)
        sock.sendall((json.dumps({"jsonrpc": "2.0", "id": index, "method": method, "params": params}) + "\n").encode())
        answers.append(json.loads(sock.makefile("rb").readline()))
print(json.dumps(answers))
"""


_runs = itertools.count()  # names unique to the run and to each use within it


class Users:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.groups: list[str] = []
        self.users: list[str] = []

    def group(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        self.groups.append(name)
        return name

    def user(self, suffix: str, groups: list[str]) -> str:
        name = f"{self.prefix}{suffix}"
        argv = ["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", name]
        subprocess.run(argv + (["-G", ",".join(groups)] if groups else []), check=True, capture_output=True)
        self.users.append(name)
        return name

    def run(self, user: str | None, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """argv as user (with its supplementary groups), or as this process when user is None."""
        prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return subprocess.run(prefix + argv, capture_output=True, text=True, timeout=300, **kwargs)

    def calls(self, user: str | None, socket_path: Path, calls: list[tuple[str, dict]]) -> list[dict]:
        """Each (method, params) as user over socket_path: the JSON-RPC answers."""
        result = self.run(user, [sys.executable, "-c", CALLER, str(socket_path), json.dumps(calls)])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def remove(self) -> None:
        """Remove what was made; a user that cannot be removed (a process of
        it still runs) is an error of the test, not something to leave behind quietly."""
        problems = []
        for name in reversed(self.users):
            removed = subprocess.run(["userdel", name], capture_output=True, text=True)
            if removed.returncode:
                problems.append(f"userdel {name}: {removed.stderr.strip()}")
            subprocess.run(["groupdel", name], capture_output=True)  # its own group, if userdel left it
        for name in reversed(self.groups):
            subprocess.run(["groupdel", name], capture_output=True)
        assert not problems, problems


@contextmanager
def unix_users():
    if os.geteuid() != 0:
        raise AssertionError("making users needs root; CI runs as root")
    users = Users(f"bkt{os.getpid() % 100000}{next(_runs)}")
    try:
        yield users
    finally:
        users.remove()
