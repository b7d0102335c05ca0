"""A compromised source host (issue 18, "what it must show"): its stderr holds
terminal escapes, NUL, bytes that are not UTF-8, ssh's own words and a line
of 100 MiB; its file names are escapes too. Against it: every bkctl
command's human output, the TUI, the report (text and page), mail, webhook,
ping and the journal show no raw control character and stay bounded; roles
below admin never see the host's output; its fake "Permission denied" is no
`auth` alert; and the run is still correct and fast. --json keeps the exact
values.

One daemon (module scope) is driven through the whole story, then each test
checks one kind of output."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import BIN, RUN_ID, Daemon, wait_until
from hostile import MARKER, NAMES, HostileSsh, make_source
from journal import FakeJournal
from receivers import HttpReceiver, SmtpReceiver, self_signed_certificate
from unix_users import unix_users

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="users, groups and sockets of others need root (CI runs "
                                                          "as root)")

NOTE = "maintenance \x1b]0;note-title\x07 \u009b2J \x00end"  # an operator's note: as hostile as a host
REFUSED_HOST = "\u009b31mweb\x1b]52;c;eA==\x07"  # a viewer's refused call, in the audit log


def raw_controls(text: str) -> list[str]:
    """What a terminal would act on (or a reader not see): any character that is
    not printable, but the line ends."""
    return sorted({repr(c) for c in text if not c.isprintable() and c != "\n"})


def shown(result: subprocess.CompletedProcess | bytes, what: str) -> str:
    """Human output, decoded as a terminal would; asserted free of raw controls."""
    data = result if isinstance(result, bytes) else result.stdout + result.stderr
    text = data.decode("utf-8", "surrogateescape")
    assert not raw_controls(text), f"{what}: raw control characters {raw_controls(text)[:6]}:\n{text[:2000]}"
    return text


def vm_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    sockets = Path(f"/tmp/bkd-h-{RUN_ID}-{os.urandom(2).hex()}")
    sockets.mkdir()
    ssh = HostileSsh(root / "fakebin")
    evil_src, broken_src = make_source(root / "evil-src"), make_source(root / "broken-src")
    webhook, pings = HttpReceiver(), HttpReceiver()
    cert, key = self_signed_certificate(root)
    smtp = SmtpReceiver(cert, key, "bkd", "pw")
    (root / "password").write_text("pw\n")
    journal = FakeJournal(sockets / "journal.sock")
    with unix_users() as users:
        sock_group, viewers, operators = (users.group(s) for s in "svo")
        viewer = users.user("V", [sock_group, viewers])
        operator = users.user("O", [sock_group, operators])
        workdir = root / "d"
        workdir.mkdir()
        config = {
            "backup_root": str(workdir / "backup"), "state_dir": str(workdir / "state"),
            "socket": str(sockets / "bkd.sock"), "schedule": {"enabled": False},
            "alerts": {"failures_before_alert": 1, "retry_after": "1s"},
            "access": {"viewers": [viewers], "operators": [operators]},
            "host": [{"name": "evil", "source": f"evil:{evil_src}/",
                      "pre": "printf '\\033]0;hook-title\\007 hook says \\233\\n'"},
                     {"name": "broken", "source": f"broken:{broken_src}/", "ping_url": pings.url("/ping/broken")}],
            "notify": [{"name": "chat", "type": "webhook", "url": webhook.url()},
                       {"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                        "security": "starttls", "username": "bkd", "password_file": str(root / "password"),
                        "from": "bkd@backup1", "to": ["ops@example.org"]}],
        }
        daemon = Daemon(workdir, sockets / "bkd.sock", config)
        env = {**ssh.env(os.environ["PATH"]), "SSL_CERT_FILE": str(cert), **journal.env(daemon.log_path)}
        watch = None
        try:
            daemon.start(env=env)
            sockets.chmod(0o711)
            os.chown(daemon.socket, -1, int(subprocess.check_output(["getent", "group", sock_group]).split(b":")[2]))
            watch = subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), "watch"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            wait_until(lambda: daemon.call("status")["subscribers"] == 1, 20, what="root's watch")

            # The first runs: evil's transfer carries a 100 MiB stderr line; broken fails, printing ssh's words.
            ssh.fail("broken")
            ssh.big_line_next()
            peak = vm_peak(daemon.proc.pid)
            started = time.monotonic()
            first = daemon.run_snapshot()
            took = time.monotonic() - started
            grew = vm_peak(daemon.proc.pid) - peak
            assert ssh.big_line_printed()
            second = daemon.run_snapshot("evil")  # incremental, over a shared connection
            wait_until(lambda: any(a["host"] == "broken" for a in daemon.call("alerts.list")["alerts"]), 20,
                       what="broken's alert")

            # Users: a viewer's refused call, what a viewer and an operator see of the hosts.
            refused = users.calls(viewer, daemon.socket, [("job.start", {"hosts": [REFUSED_HOST]})])[0]
            hosts_test = bkctl_at(daemon, "hosts", "test", "broken")  # root, while broken fails
            as_viewer = users.calls(viewer, daemon.socket, [("hosts.list", {}), ("jobs.list", {}),
                                                            ("job.get", {"job_id": first["job_id"]})])
            as_operator = users.calls(operator, daemon.socket, [("hosts.test", {"hosts": ["broken", "evil"]})])
            as_admin = daemon.call("hosts.test", hosts=["broken", "evil"])
            alert = next(a for a in daemon.call("alerts.list")["alerts"] if a["host"] == "broken")
            acked = users.calls(operator, daemon.socket, [("alerts.ack", {"ids": [alert["id"]], "note": NOTE}),
                                                          ("alerts.silence", {"kind": "stale", "for": "1h",
                                                                              "note": NOTE})])
            assert all("result" in answer for answer in acked), acked

            # Damage in a file of evil's latest snapshot, for verify to name.
            latest = os.path.join(os.fsencode(workdir / "backup" / "evil" / "latest"), NAMES[0])
            with open(latest, "ab") as f:
                f.write(b"changed behind bkd's back")

            # broken comes back: its alert resolves, and the mail and webhook say so (with the note).
            ssh.fail()
            assert daemon.run_snapshot("broken")["status"] == "ok"
            wait_until(lambda: any(n["event"] == "resolved" for n in webhook.notifications()), 30,
                       what="the resolved webhook")
            wait_until(lambda: len(smtp.messages) >= 2, 30, what="the mails")
            yield SimpleNamespace(daemon=daemon, first=first, second=second, took=took, grew=grew,
                                  refused=refused, hosts_test=hosts_test, as_viewer=as_viewer, as_operator=as_operator, as_admin=as_admin,
                                  webhook=webhook, pings=pings, smtp=smtp, journal=journal, watch=watch,
                                  root=root, evil_src=evil_src, workdir=workdir)
        finally:
            if watch is not None:
                watch.terminate()
                watch.wait(10)
            if daemon.proc and daemon.proc.poll() is None:
                daemon.stop()
            journal.close()
            smtp.stop()
            webhook.stop()
            pings.stop()
            shutil.rmtree(sockets, ignore_errors=True)


def bkctl_at(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkctl"), "--socket", str(daemon.socket), *args], capture_output=True,
                          timeout=120)


def bkctl(story, *args: str) -> subprocess.CompletedProcess:
    return bkctl_at(story.daemon, *args)


def test_the_run_is_correct_and_fast_and_the_host_s_output_bounded(story):
    runs = {run["host"]: run for run in story.first["hosts"]}
    assert runs["evil"]["status"] == "ok" and story.second["status"] == "ok"
    assert story.took < 60, story.took  # the 100 MiB line is read in linear time
    assert story.grew < 48 * 1024 * 1024, story.grew  # and never held whole
    snapshot = os.fsencode(story.workdir / "backup" / "evil" / "latest")
    assert sorted(os.listdir(snapshot)) == sorted(NAMES)  # every name, exactly
    broken = runs["broken"]
    assert broken["status"] == "failed" and MARKER in broken["detail"]  # the host's words, for admins
    assert broken["error"] in ("snapshot: rsync exited with code 255 (unexplained error)",  # ssh never failed
                               "snapshot: rsync exited with code 12 (error in rsync protocol data stream)")
    assert len(broken["detail"]) < 20_000
    kinds = {a["host"]: a["kind"] for a in story.daemon.call("alerts.list", all=True)["alerts"]}
    assert kinds["broken"] == "run_failed"  # "Permission denied (publickey)" on its stderr is no auth alert
    listing = bkctl(story, "--json", "jobs", "--limit", "100")
    assert listing.returncode == 0 and len(listing.stdout) < 50_000
    assert (story.workdir / "state" / "bkd.sqlite").stat().st_size < 4 * 1024 * 1024


def test_roles_below_admin_see_no_command_output(story):
    viewer = json.dumps(story.as_viewer)
    operator = json.dumps(story.as_operator)
    assert MARKER not in viewer and MARKER not in operator
    hosts = {h["name"]: h for h in story.as_viewer[0]["result"]["hosts"]}
    assert hosts["broken"]["identity"].startswith("cannot tell whether broken is this machine (rsync exited with "
                                                  "code 255 (")
    assert "identity_detail" not in hosts["broken"]
    tested = story.as_operator[0]["result"]["results"]
    assert tested["broken"]["ok"] is False and "detail" not in tested["broken"]
    assert "rsync exited with code " in tested["broken"]["error"] and "SSH" not in tested["broken"]["error"]
    admin = story.as_admin["results"]["broken"]
    assert MARKER in admin["detail"] and "SSH" not in admin["error"]  # rsync exits 12 or 255, by a race


@pytest.mark.parametrize("args", [
    ["status"], ["jobs"], ["job", "1"], ["job", "2"], ["job", "3"], ["hosts"], ["hosts", "test", "evil", "broken"],
    ["alerts"], ["alerts", "--all"], ["audit"], ["audit", "--verify"], ["snapshots", "evil"], ["ls", "evil"],
    ["verify", "evil"], ["report"], ["check"], ["schedule"], ["notify"], ["metrics"], ["job", "999"],
])
def test_every_command_s_human_output_shows_control_characters_escaped(story, args):
    result = bkctl(story, *args)
    text = shown(result, " ".join(args))
    assert len(text) < 200_000


def test_what_people_read_says_what_the_host_and_the_users_wrote_escaped_and_json_keeps_it_exact(story):
    tested = shown(story.hosts_test, "hosts test broken")
    assert "broken: failed" in tested and MARKER in tested and "\\x1b]0;pwned-title\\x07" in tested
    job = shown(bkctl(story, "job", "1"), "job 1")
    assert "\\x1b]52;c;ZXZpbA==\\x07" in job and MARKER in job and "\\u009b31m" in job and "\\x9b" in job
    alerts = shown(bkctl(story, "alerts"), "alerts")
    assert "maintenance \\x1b]0;note-title\\x07 \\u009b2J \\x00end" in alerts  # the silence's note
    audit = shown(bkctl(story, "audit"), "audit")
    assert "job.start" in audit and "\\\\u009b31mweb" in audit  # the viewer's refused call
    ls = shown(bkctl(story, "ls", "evil"), "ls")
    assert "\\x1b]52;c;ZXZpbA==\\x07clip" in ls and "bad-\\xff-utf8" in ls and "new\\nline" in ls
    verify = shown(bkctl(story, "verify", "evil"), "verify")
    assert "\\x1b]52;c;ZXZpbA==\\x07clip" in verify
    dry = shown(bkctl(story, "restore", "evil", "latest", "/", "--to", str(story.root / "dry"), "--dry-run"),
                "restore --dry-run")
    assert dry.count("would write") >= len(NAMES)
    exact = json.loads(bkctl(story, "--json", "job", "1").stdout)["job"]["hosts"]
    assert any("\x1b]52;c;ZXZpbA==\x07" in (run.get("detail") or "") for run in exact)  # --json: exact
    names = {os.fsencode(e["name"]) for e in json.loads(bkctl(story, "--json", "ls", "evil").stdout)["entries"]}
    assert names == set(NAMES)


def test_watch_the_report_page_and_the_journal(story):
    story.watch.terminate()
    out, _ = story.watch.communicate(timeout=30)
    watched = shown(out, "watch")
    assert "\\x1b]0;hook-title\\x07 hook says \\x9b" in watched and MARKER in watched  # the log topic: root sees the host's words
    page = story.root / "report.html"
    shown(bkctl(story, "report", "--html", str(page)), "report --html")
    html = page.read_text()
    assert not raw_controls(html.replace("\n", "")) and "audit log: entry" in html
    values = [value for entry in story.journal.entries for value in entry.values()]
    assert story.journal.entries and not [v for v in values if b"\x1b" in v or b"\xc2\x9b" in v or b"\x00" in v]
    assert max(map(len, values)) < 256 * 1024  # the 100 MiB line reached no entry whole
    assert b"\x1b" not in story.daemon.log_path.read_bytes()


def test_mail_webhook_and_ping_show_it_escaped_and_carry_the_audit_head(story):
    for message in story.smtp.messages:
        parsed = email.message_from_bytes(message["data"], policy=email.policy.default)
        assert not raw_controls(parsed["Subject"])
        for part in parsed.walk():
            if not part.is_multipart():
                content = part.get_content().replace("\r\n", "\n")  # a mail's own line ends
                shown(content.encode(), f"mail {parsed['Subject']} {part.get_content_type()}")
    resolved = [email.message_from_bytes(m["data"], policy=email.policy.default) for m in story.smtp.messages]
    plain = next(m for m in resolved if "resolved" in m["Subject"]).get_body(("plain",)).get_content()
    assert "maintenance \\x1b]0;note-title\\x07" in plain and "audit log: entry" in plain
    hooks = story.webhook.notifications()
    assert hooks and all(not raw_controls(n["text"]) and n["audit_head"]["id"] >= 1 for n in hooks)
    note = next(n for n in hooks if n["event"] == "resolved")["alert"]["note"]
    assert note == NOTE  # the webhook's alert keeps exact values, for programs
    failed = [r for r in story.pings.requests if r.path == "/ping/broken/fail"]
    assert failed and MARKER in shown(failed[0].body, "the fail ping's log tail")


def test_top_draws_it_escaped(story):
    if not shutil.which("tmux"):
        pytest.fail("tmux is not installed: run the README's test command (make test)")
    server = f"bkd-test-{RUN_ID}-{os.urandom(3).hex()}"

    def tmux(*args):
        return subprocess.run(["tmux", "-L", server, *args], capture_output=True, text=True, timeout=10)

    try:
        tmux("new-session", "-d", "-x", "160", "-y", "50", f"{BIN / 'bkctl'} --socket {story.daemon.socket} top")
        wait_until(lambda: "broken" in tmux("capture-pane", "-p").stdout, 20, what="the TUI's hosts")
        tmux("send-keys", "j")  # broken's detail pane
        wait_until(lambda: "recent runs" in tmux("capture-pane", "-p").stdout, 20, what="the detail pane")
        screen = tmux("capture-pane", "-p", "-e").stdout  # with the escapes tmux keeps for colours
        assert "pwned-title" not in tmux("display-message", "-p", "#{pane_title}").stdout
        assert "note-title" not in tmux("display-message", "-p", "#{pane_title}").stdout
        assert "\x07" not in screen and "\x1b]" not in screen and "\x9b" not in screen
    finally:
        tmux("kill-server")
