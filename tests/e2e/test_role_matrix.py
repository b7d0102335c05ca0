"""Every RPC method × root, admin, operator, viewer and an outsider — real
Unix users and groups made for the run — is allowed or refused (-32003) as
the method table says; and nothing a viewer can read (results, events)
carries a file name, a hook's command line or its output (SPEC §5).

The state is planted first so that there is something to leak: a file with
a recognisable name, a snapshot whose rsync error quotes it, a failing pre
hook with a recognisable command and output, an integrity mismatch on that
file, and an admin's dry-run restore that lists it. Issue 11, defects 2
and 4."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from bkd.rpc.access import RANKS
from bkd.rpc.methods import Api, method_table
from conftest import BIN, make_tree, wait_until
from unix_users import unix_users

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making users and mounts needs root (CI runs as root)")

RUN = os.getpid()
SECRET = f"zz-secret-{RUN}.txt"  # a file name
HOOK_COMMAND = f"hookcmd-{RUN}"  # in the hook's command line only
HOOK_OUTPUT = f"hookout-{RUN}"  # in the hook's output only (the command prints it in two pieces)
MARKERS = (SECRET, HOOK_COMMAND, HOOK_OUTPUT)


def matrix_params(tmp) -> dict[str, dict]:
    """Params that make each method's call valid; the table must name every method."""
    return {
        "daemon.info": {}, "status": {}, "schedule.list": {}, "metrics": {}, "hosts.list": {},
        "replicas.list": {},
        "job.start": {"hosts": ["web1"]},
        "job.cancel": {"hosts": ["web1"]},
        "job.get": {"job_id": 1},
        "jobs.list": {},
        "snapshots.list": {"host": "web1"},
        "snapshots.browse": {"host": "web1", "path": "/dir0"},
        "find": {"host": "web1", "pattern": f"*{SECRET}*"},
        "du": {"snapshots": True},
        "prune": {"dry_run": True},
        "restore": {"host": "web1", "snapshot": "latest", "path": "/dir0", "dest": str(tmp / "nowhere"),
                    "dry_run": True},  # without a receiver: -32602 for those allowed (bkctl receives)
        "restore.stream": {"token": "0" * 32},
        "verify": {"host": "web1"},
        "alerts.list": {"all": True},
        "alerts.ack": {"all": True},
        "alerts.silence": {"host": "web1", "for": "1h"},
        "alerts.unsilence": {"host": "web1"},
        "notify.status": {},
        "notify.test": {},
        "report": {},
        "audit.list": {"verify": True},
        "hosts.test": {"hosts": ["web1"]},
        "holds.list": {},
        "hosts.release": {"host": "web2"},  # none held: -32002 for admins (web1's hold stays for the viewer)
        "config.reload": {},
        "events.subscribe": {},
    }


def test_the_matrix_names_every_method(tmp_path):
    assert set(matrix_params(tmp_path)) == set(method_table(Api()))


def test_every_method_for_every_role_and_what_a_viewer_sees(tmp_path, short_tmp, daemon_factory, bind_mount):
    with unix_users() as users:
        sock_group, viewers, operators, admins, restorers = (users.group(s) for s in "svoar")
        who = {
            "admin": users.user("A", [sock_group, admins]),
            "operator": users.user("O", [sock_group, operators]),
            "viewer": users.user("V", [sock_group, viewers]),
            "outsider": users.user("X", [sock_group]),
            "restorer": users.user("R", [sock_group, admins, restorers]),
        }
        web1 = make_tree(tmp_path / "web1", 8)
        (web1 / "dir0" / SECRET).write_text("planted\n")
        web3 = make_tree(tmp_path / "web3", 2)
        (web3 / SECRET).touch()
        bind_mount("/proc/sys/vm/drop_caches", web3 / SECRET)  # unreadable even for root: rsync exits 23 naming it
        hook = f"printf '%s-%s\\n' hookout {RUN} >&2; exit 3 # {HOOK_COMMAND}"
        daemon = daemon_factory(
            [{"name": "web1", "source": str(web1), "anomaly": {"min_files": 1, "factor": 2.0}},
             {"name": "web2", "source": str(web1), "pre": hook},
             {"name": "web3", "source": str(web3)}],
            access={"viewers": [viewers], "operators": [operators], "admins": [admins],
                    "remote_restorers": [restorers]}).start()
        short_tmp.chmod(0o711)
        os.chown(daemon.socket, -1, int(subprocess.check_output(["getent", "group", sock_group]).split(b":")[2]))

        watch = subprocess.Popen(["setpriv", f"--reuid={who['viewer']}", f"--regid={who['viewer']}", "--init-groups",
                                  "--", str(BIN / "bkctl"), "--socket", str(daemon.socket), "--json", "watch"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: daemon.call("status")["subscribers"] == 1, 20, what="the viewer's watch")
            _plant(daemon)
            answers = {role: users.calls(user, daemon.socket, list(matrix_params(tmp_path).items()))
                       for role, user in [("root", None), *who.items()] if role != "restorer"}
            log_topic = users.calls(who["viewer"], daemon.socket, [("events.subscribe", {"topics": ["log"]})])
            remote = {"host": "web1", "snapshot": "latest", "path": "/dir0", "dest": "web1:/tmp/x", "dry_run": True}
            remote_restore = {role: users.calls(who[role], daemon.socket, [("restore", remote)])[0]
                              for role in ("admin", "restorer")}  # refused before bkd contacts the host
            viewer_job = users.calls(who["viewer"], daemon.socket, [("job.get", {"job_id": 5})])[0]
            admin_jobs = json.dumps([daemon.call("job.get", job_id=job["job_id"])  # details: job.get only
                                     for job in daemon.call("jobs.list", limit=50)["jobs"]])
        finally:
            daemon.stop()
            events, _ = watch.communicate(timeout=30)

        table = method_table(Api())
        roles = {"root": "admin", "admin": "admin", "operator": "operator", "viewer": "viewer", "outsider": None}
        for role, results in answers.items():
            for (method, _), answer in zip(matrix_params(tmp_path).items(), results):
                allowed = roles[role] is not None and RANKS[roles[role]] >= RANKS[table[method].role]
                refused = answer.get("error", {}).get("code") == -32003
                assert refused != allowed, (role, method, answer)
        assert log_topic[0]["error"]["code"] == -32003  # the log topic is for admins
        # A remote DEST is written with the daemon's SSH identity: root or remote_restorers only.
        assert remote_restore["admin"]["error"]["code"] == -32003
        assert "remote_restorers" in remote_restore["admin"]["error"]["message"]
        assert remote_restore["restorer"].get("error", {}).get("code") != -32003  # past the check (web1 is no SSH host)

        # Nothing a viewer can read names a file, a hook command or its output ...
        viewer_payloads = json.dumps(answers["viewer"]) + events + json.dumps(viewer_job)
        assert '"topic": "host"' in events and '"topic": "alert"' in events and '"topic": "job"' in events
        for marker in MARKERS:
            assert marker not in viewer_payloads, marker
        # ... though each of them is there for an admin to see (so the test planted what it meant to).
        admin_view = json.dumps(answers["root"])
        assert SECRET in admin_jobs and HOOK_OUTPUT in admin_jobs  # the restore's list, rsync's and the hook's words
        assert HOOK_COMMAND in daemon.log()
        assert "rsync exited with code 23" in admin_view and "pre hook exited with code 3" in admin_view
        holds = answers["root"][list(matrix_params(tmp_path)).index("holds.list")]["result"]["holds"]
        assert [h["host"] for h in holds] == ["web1"] and SECRET in json.dumps(holds)  # an anomaly's example names
        viewer_holds = answers["viewer"][list(matrix_params(tmp_path)).index("holds.list")]["result"]["holds"]
        assert [h["host"] for h in viewer_holds] == ["web1"] and "examples" not in viewer_holds[0]
        assert viewer_holds[0]["signals"][0]["signal"] == "became_random"
        viewer_status = answers["viewer"][list(matrix_params(tmp_path)).index("status")]["result"]
        assert viewer_status["hosts"]["web2"]["last_error"] == "pre hook exited with code 3"
        # (The meaning in brackets is rsync.describe_failure's; see test_ssh_failure_wording.py.)
        assert viewer_status["hosts"]["web3"]["last_error"].startswith("snapshot: rsync exited with code 23 (")
        assert viewer_job["result"]["job"]["kind"] == "restore" and "detail" not in viewer_job["result"]["job"]["hosts"][0]


def _plant(daemon) -> None:
    """As root: runs that fail with a hook and with rsync, an integrity
    mismatch on the planted file, and a dry-run restore that lists it."""
    job = daemon.run_snapshot()  # job 1: web1 ok, web2's pre hook fails, web3's rsync exits 23
    assert {h["host"]: h["status"] for h in job["hosts"]} == {"web1": "ok", "web2": "failed", "web3": "failed"}
    daemon.run_snapshot("web1")  # job 2
    daemon.run_snapshot("web2")  # job 3
    daemon.run_snapshot("web3")  # job 4
    latest = daemon.workdir / "backup" / "web1" / "latest"
    (latest / "dir0" / SECRET).write_text("changed behind bkd's back\n")
    assert daemon.call("verify", host="web1")["ok"] is False  # opens an integrity alert
    listed = daemon.bkctl("restore", "web1", "latest", "/dir0", "--to", str(daemon.workdir / "r"), "--dry-run")
    assert listed.returncode == 0 and SECRET in listed.stdout  # job 5
    # An anomaly whose examples name files (web1 judges at min_files 1, factor 2): three files of
    # ordinary content become random. Its alert, hold and listing say numbers to viewers.
    source = Path(daemon.config["host"][0]["source"])
    for index in range(3):
        (source / "dir0" / f"{SECRET}-{index}").write_text("ordinary words, nothing random\n" * 40)
    assert daemon.run_snapshot("web1")["status"] == "ok"  # job 6
    for index in range(3):
        (source / "dir0" / f"{SECRET}-{index}").write_bytes(os.urandom(1280))
    assert daemon.run_snapshot("web1")["hosts"][0]["stats"]["anomaly"]["suspect"]  # job 7
