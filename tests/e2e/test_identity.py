"""A caller's identity is taken once, from the socket, when it connects
(issue 18, item 1). Before, the daemon read /proc/<pid>/status at every
request for the pid that had connected: a viewer whose connecting process
had exited (a child keeping the socket) was given the groups of whichever
process took that pid next, and an admin's process made it an admin.

The reuse is reproduced in a private pid namespace, where writing
/proc/sys/kernel/ns_last_pid chooses the next pid: the daemon, the viewer
and the admin's process all run inside it."""

import json
import os
import subprocess
import sys

import pytest

from conftest import BIN, make_tree
from unix_users import unix_users

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pid namespaces and other users need root (CI runs as root)")

# Run as the viewer: connect, be answered once, then fork; the parent prints
# its pid and exits, the child keeps the socket and, on a line on stdin,
# sends each request and prints the answers.
VIEWER = r"""
import json, os, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(60)
sock.connect(sys.argv[1])
lines = sock.makefile("rb")
sock.sendall(b'{"jsonrpc":"2.0","id":0,"method":"daemon.info"}\n')
first = json.loads(lines.readline())
if os.fork():
    print(json.dumps({"pid": os.getpid(), "first": first}), flush=True)
    os._exit(0)
sys.stdin.readline()
answers = []
for index, method in enumerate(json.loads(sys.argv[2]), 1):
    sock.sendall(json.dumps({"jsonrpc": "2.0", "id": index, "method": method}).encode() + b"\n")
    answers.append(json.loads(lines.readline()))
print(json.dumps(answers), flush=True)
"""

# Run as root inside the pid namespace (as its pid 1): the whole scenario.
SCENARIO = r"""
import grp, json, os, socket, subprocess, sys, time
bkd, config, path, log, viewer, admin, viewer_group, admin_group, methods, viewer_script = sys.argv[1:]

def call(method, params=None):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(path)
        request = {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params else {})}
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())

daemon = subprocess.Popen([bkd, "--config", config, "serve"], stdout=open(log, "ab"), stderr=subprocess.STDOUT)
deadline = time.monotonic() + 30
while True:
    try:
        call("daemon.info")
        break
    except OSError:
        if time.monotonic() > deadline or daemon.poll() is not None:
            sys.exit("bkd did not start")
        time.sleep(0.05)
os.chown(path, -1, grp.getgrnam(viewer_group).gr_gid)

as_user = lambda user: ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
holder = subprocess.Popen(as_user(viewer) + [sys.executable, "-c", viewer_script, path, methods],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
hello = json.loads(holder.stdout.readline())
pid = hello["pid"]
assert holder.wait() == 0  # the connecting process is gone and reaped: its pid is free

# The next process of the admin takes that pid.
for attempt in range(50):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    taker = subprocess.Popen(as_user(admin) + ["sleep", "300"])
    if taker.pid == pid:
        break
    taker.kill()
    taker.wait()
    time.sleep(0.05)
else:
    sys.exit(f"pid {pid} could not be taken again")
admin_gid = grp.getgrnam(admin_group).gr_gid
deadline = time.monotonic() + 10
while True:  # once setpriv has changed the groups of that pid
    status = open(f"/proc/{pid}/status").read()
    groups = [int(g) for line in status.splitlines() if line.startswith("Groups:") for g in line.split()[1:]]
    if admin_gid in groups:
        break
    assert time.monotonic() < deadline, status
    time.sleep(0.01)

holder.stdin.write("go\n")
holder.stdin.flush()
answers = json.loads(holder.stdout.readline())
audit = call("audit.list", {"limit": 10})["result"]["entries"]
taker.kill()
daemon.terminate()
daemon.wait(30)
print(json.dumps({"pid": pid, "first": hello["first"], "answers": answers, "audit": audit}))
"""


def test_a_viewer_keeps_its_role_when_an_admin_process_takes_its_pid(tmp_path, daemon_factory, short_tmp):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}])
    short_tmp.chmod(0o711)  # the viewer reaches the socket in it
    with unix_users() as users:
        viewers, admins = users.group("v"), users.group("a")
        viewer, admin = users.user("V", [viewers]), users.user("A", [admins])
        daemon.config["access"] = {"viewers": [viewers], "admins": [admins]}
        daemon.write_config()
        methods = ["audit.list", "config.reload"]  # admin only; config.reload is audited
        result = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", SCENARIO, str(BIN / "bkd"),
             str(daemon.config_path), str(daemon.socket), str(daemon.log_path), viewer, admin, viewers, admins,
             json.dumps(methods), VIEWER],
            capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr + daemon.log()[-3000:]
        outcome = json.loads(result.stdout)
        viewer_uid = int(subprocess.check_output(["id", "-u", viewer]))

    assert "result" in outcome["first"]  # the viewer was served before its process exited
    for method, answer in zip(methods, outcome["answers"], strict=True):
        assert answer.get("error", {}).get("code") == -32003, (method, answer)
        assert answer["error"]["message"] == (f"permission denied: {method} needs the admin role; "
                                              f"{viewer} (uid {viewer_uid}) has the viewer role")
    (reload,) = [entry for entry in outcome["audit"] if entry["method"] == "config.reload"]
    assert (reload["uid"], reload["user"], reload["pid"]) == (viewer_uid, viewer, outcome["pid"])
    assert reload["outcome"].startswith("error -32003: permission denied")


def test_a_caller_with_many_groups_gets_the_role_of_its_last_one(tmp_path, daemon_factory, short_tmp):
    """SO_PEERGROUPS needs a bigger buffer for many groups (ERANGE, then again)."""
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}])
    short_tmp.chmod(0o711)
    with unix_users() as users:
        operators = users.group("o")
        daemon.config["access"] = {"operators": [operators]}
        daemon.write_config()
        daemon.start()
        operator_gid = int(subprocess.check_output(["getent", "group", operators]).split(b":")[2])
        socket_gid = daemon.socket.stat().st_gid
        groups = [socket_gid, *range(71000, 71300), operator_gid]  # 302 groups, the one that counts last
        result = subprocess.run(
            ["setpriv", "--reuid=4243", "--regid=4243", f"--groups={','.join(map(str, groups))}", "--",
             str(BIN / "bkctl"), "--socket", str(daemon.socket), "--json", "alerts", "ack", "--all"],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # an operator method
    assert json.loads(result.stdout) == {"acked": []}
