"""Notifications reach real receivers on loopback: a webhook receiver that
checks the signature, fails, stalls and goes down while the daemon restarts;
an SMTP server with STARTTLS and login; healthchecks-style pings and the
daemon's heartbeat."""

import email
import email.policy
import json
import shutil
import time

from conftest import make_tree, wait_until
from receivers import HttpReceiver, SmtpReceiver, self_signed_certificate

SECRET = b"webhook-s3cret-value"
TOKEN = "tok3n-in-the-url"


def test_every_webhook_notification_arrives_exactly_once_after_dedup_in_order_per_alert(tmp_path, daemon_factory):
    receiver = HttpReceiver(secret=SECRET, fail_next=2, stall_next=1)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    sources = {name: tmp_path / f"src-{name}" for name in ("web1", "db1")}
    daemon = daemon_factory(
        [{"name": name, "source": str(path)} for name, path in sources.items()],
        server_name="backup1", alerts={"retry_after": "1s", "remind_every": "1h"},
        notify=[{"name": "chat", "type": "webhook", "url": receiver.url(f"/hook?token={TOKEN}"),
                 "secret_file": str(tmp_path / "secret")}]).start()
    receiver.url = lambda path="/hook": f"http://127.0.0.1:{receiver.port}{path}"
    assert daemon.run_snapshot()["status"] == "failed"  # both sources are missing: two run_failed episodes
    wait_until(lambda: len(daemon.bkctl_json("alerts")["alerts"]) == 2, 10, what="two run_failed alerts")
    ids = {a["host"]: a["id"] for a in daemon.bkctl_json("alerts")["alerts"]}
    assert sorted(ids) == ["db1", "web1"], daemon.bkctl_json("alerts")
    # The receiver answers 500 twice, then stalls past the daemon's timeout once, then takes them.
    wait_until(lambda: len({r.json()["idempotency_key"] for r in receiver.accepted()}) == 2, 45,
               what="both openings, after the failures")

    receiver.stop()  # down while the recoveries are queued and while the daemon restarts
    for path in sources.values():
        make_tree(path, 3)
    assert daemon.run_snapshot()["status"] == "ok"
    wait_until(lambda: "notify.retry" in daemon.log().split("run.done")[-1], 10, what="a failed attempt")
    daemon.stop()
    daemon.start()
    time.sleep(1)
    receiver.start()
    wait_until(lambda: len({r.json()["idempotency_key"] for r in receiver.accepted()}) == 4, 40,
               what="both recoveries after the restart")

    assert receiver.bad_signatures == 0 and len(receiver.requests) >= 4 + 2 + 1
    delivered = {}
    for request in receiver.requests:
        body = request.json()
        assert request.headers["Idempotency-Key"] == body["idempotency_key"]
        assert request.headers["Content-Type"] == "application/json"
        assert (body["server"], body["version"]) == ("backup1", daemon.call("daemon.info")["version"])
        delivered.setdefault(body["idempotency_key"], body)
    events = sorted((b["alert"]["host"], b["event"]) for b in delivered.values())
    assert events == [("db1", "opened"), ("db1", "resolved"), ("web1", "opened"), ("web1", "resolved")]
    for host, alert_id in ids.items():
        mine = [r for r in receiver.requests if r.json()["alert"]["id"] == alert_id]
        opened_ok = next(r.time for r in mine if r.json()["event"] == "opened" and r.answer == 200)
        assert all(r.time > opened_ok for r in mine if r.json()["event"] == "resolved"), "a recovery came first"
        resolved = next(b for b in delivered.values() if b["alert"]["id"] == alert_id and b["event"] == "resolved")
        assert resolved["alert"]["state"] == "resolved" and resolved["alert"]["count"] == 1
        assert resolved["text"] == f"[bkd backup1] {host}: resolved: run failed"

    (sink,) = daemon.bkctl_json("notify")["sinks"]
    assert (sink["name"], sink["type"], sink["ok"], sink["queued"], sink["delivered"]) == ("chat", "webhook", True,
                                                                                          0, 4)
    assert sink["last_delivery"] and sink["last_error"]  # the last failure is still shown
    # The URL's token and the secret are in no log line, no alert and no sink state.
    for text in (daemon.log(), json.dumps(daemon.call("alerts.list", all=True)), json.dumps(sink),
                 daemon.bkctl("notify").stdout):
        assert TOKEN not in text and SECRET.decode() not in text
    assert "http://127.0.0.1" in daemon.log() and "...redacted..." in daemon.log()
    metrics = daemon.call("metrics")["text"]
    assert 'bkd_notifications_delivered_total{sink="chat"} 4' in metrics
    assert 'bkd_outbox_depth{sink="chat"} 0' in metrics
    receiver.stop()


def test_a_refusing_webhook_is_a_permanent_failure_and_a_notify_alert_for_the_other_sinks(tmp_path, daemon_factory):
    good, refusing = HttpReceiver(), HttpReceiver()
    refusing_url = refusing.url("/gone")
    refusing.stop()

    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Gone(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(410)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", refusing.port), Gone)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    down = HttpReceiver()
    down.stop()
    daemon = daemon_factory([{"name": "web1", "source": str(tmp_path / "missing")}],
                            alerts={"retry_after": "1s"},
                            notify=[{"name": "chat", "type": "webhook", "url": good.url()},
                                    {"name": "old", "type": "webhook", "url": refusing_url},
                                    {"name": "down", "type": "webhook", "url": down.url()}]).start()
    daemon.run_snapshot()
    wait_until(lambda: any(n["alert"]["kind"] == "notify" for n in good.notifications()), 20,
               what="the notify alert at the other sink")
    alert = next(n["alert"] for n in good.notifications() if n["alert"]["kind"] == "notify")
    assert alert["subject"] == "old" and "HTTP 410" in alert["message"] and "dropped" in alert["message"]
    # A sink that cannot be reached: a notify alert once it has failed 5 times in a row.
    wait_until(lambda: any(n["alert"]["subject"] == "down" for n in good.notifications()), 30,
               what="the notify alert for the sink that is down")
    alert = next(n["alert"] for n in good.notifications() if n["alert"]["subject"] == "down")
    assert "has failed 5 times in a row (connection refused)" in alert["message"]
    metrics = daemon.call("metrics")["text"]
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
    assert int(values['bkd_notifications_failed_total{sink="old"}']) >= 1  # each one refused is given up
    assert int(values['bkd_notification_sink_failing{sink="old"}']) >= 1
    assert int(values['bkd_outbox_depth{sink="down"}']) >= 1 and values['bkd_outbox_depth{sink="chat"}'] == "0"
    sinks = {s["name"]: s for s in daemon.bkctl_json("notify")["sinks"]}
    assert sinks["old"]["ok"] is False and sinks["old"]["last_error"] == "HTTP 410"
    assert sinks["old"]["failed"] >= 1 and sinks["old"]["queued"] == 0
    assert "notify.given_up" in daemon.log()
    human = daemon.bkctl("notify").stdout
    assert "old" in human and "failing (" in human and "HTTP 410" in human
    server.shutdown()
    good.stop()


def test_email_goes_over_starttls_with_login_as_plain_text_and_html(tmp_path, daemon_factory):
    cert, key = self_signed_certificate(tmp_path)
    smtp = SmtpReceiver(cert, key, "bkd", "mail-pass-word")
    (tmp_path / "password").write_text("mail-pass-word\n")
    daemon = daemon_factory(
        [{"name": "web1", "source": str(tmp_path / "missing")}], server_name="backup1",
        alerts={"failures_before_alert": 3, "retry_after": "1s"},
        notify=[{"name": "ops-mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                 "security": "starttls", "username": "bkd", "password_file": str(tmp_path / "password"),
                 "from": "bkd@backup1.example.org", "to": ["ops@example.org", "oncall@example.org"]}])
    daemon.start(env={"SSL_CERT_FILE": str(cert)})
    for _ in range(3):
        daemon.run_snapshot()
    wait_until(lambda: smtp.messages, 20, what="the mail")
    (received,) = smtp.messages
    assert received["tls"] and received["login"] and smtp.logins == [("bkd", True)]
    assert received["from"] == "bkd@backup1.example.org"
    assert received["to"] == ["ops@example.org", "oncall@example.org"]
    message = email.message_from_bytes(received["data"], policy=email.policy.default)
    assert message["Subject"] == "[bkd backup1] web1: run failed (3×)"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    alert_id = daemon.bkctl_json("alerts")["alerts"][0]["id"]
    assert "snapshot run failed (3 in a row)" in plain and f"bkctl alerts ack {alert_id}" in plain
    assert "<table>" in html and "run failed (3×)" in html
    assert message["Message-ID"].startswith("<bkd-") and f"-{alert_id}-opened-ops-mail@backup1>" in message["Message-ID"]

    result = daemon.bkctl("notify", "test", "ops-mail")
    assert result.returncode == 0 and "ops-mail: delivered" in result.stdout
    assert email.message_from_bytes(smtp.messages[-1]["data"])["Subject"] == "[bkd backup1] test notification"
    (tmp_path / "password").write_text("wrong\n")
    refused = daemon.bkctl("--json", "notify", "test")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["results"]["ops-mail"] == {
        "ok": False, "error": "SMTP login refused (535)", "seconds": json.loads(refused.stdout)["results"]["ops-mail"]["seconds"]}
    assert "mail-pass-word" not in daemon.log() and "wrong" not in daemon.log()
    assert daemon.bkctl("notify", "test", "nosuch").returncode == 1
    smtp.stop()


def test_pings_start_then_success_or_fail_with_the_log_tail_for_the_right_hosts(tmp_path, daemon_factory):
    hc = HttpReceiver()
    daemon = daemon_factory(
        [{"name": "web1", "source": str(make_tree(tmp_path / "web1", 3)), "ping_url": hc.url("/ping/uuid-web1")},
         {"name": "db1", "source": str(tmp_path / "missing"), "ping_url": hc.url("/ping/uuid-db1")},
         {"name": "quiet", "source": str(make_tree(tmp_path / "quiet", 2))}]).start()
    daemon.run_snapshot()
    wait_until(lambda: len(hc.accepted()) == 4, 10, what="four pings")
    seen = [(r.method, r.path) for r in hc.accepted()]
    web1 = [s for s in seen if "web1" in s[1]]
    db1 = [s for s in seen if "db1" in s[1]]
    assert web1 == [("GET", "/ping/uuid-web1/start"), ("GET", "/ping/uuid-web1")]
    assert db1 == [("GET", "/ping/uuid-db1/start"), ("POST", "/ping/uuid-db1/fail")]
    fail = next(r for r in hc.accepted() if r.path.endswith("/fail"))
    assert b"db1 job" in fail.body and b"No such file or directory" in fail.body
    daemon.call("job.start", hosts=["web1"], dry_run=True)  # a dry run is no backup: no ping
    time.sleep(1)
    assert len(hc.requests) == 4
    hc.stop()


def test_heartbeat_pings_while_healthy_and_stop_after_sigterm(tmp_path, daemon_factory):
    hc = HttpReceiver()
    daemon = daemon_factory([], heartbeat={"url": hc.url("/hb/uuid"), "every": "1s"}).start()
    wait_until(lambda: len(hc.accepted()) >= 3, 10, what="heartbeats")
    assert {r.path for r in hc.accepted()} == {"/hb/uuid"}
    daemon.stop()
    count = len(hc.requests)
    time.sleep(2.5)
    assert len(hc.requests) == count
    hc.stop()


def test_heartbeat_stops_while_a_supervised_loop_keeps_failing(tmp_path, daemon_factory):
    hc = HttpReceiver()
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    daemon = daemon_factory([], heartbeat={"url": hc.url("/hb/uuid"), "every": "1s"},
                            metrics={"textfile": str(metrics_dir / "bkd.prom")}).start()
    wait_until(lambda: len(hc.accepted()) >= 2, 10, what="heartbeats")
    shutil.rmtree(metrics_dir)  # the metrics-textfile loop now fails at every write
    daemon.call("config.reload")  # a change: the textfile is written (and fails) again
    wait_until(lambda: "heartbeat.withheld" in daemon.log(), 40, what="the heartbeat to be withheld")
    count = len(hc.requests)
    time.sleep(2.5)
    assert len(hc.requests) == count
    assert daemon.call("status")["alerts"]["by_kind"] == {"internal": 1}
    hc.stop()


def test_a_ping_that_cannot_be_sent_in_time_is_dropped_not_sent_late():
    import asyncio

    from bkd.alerts.notify.ping import ping
    hc = HttpReceiver()
    url = hc.url("/late/uuid")
    hc.stop()  # down
    started = time.monotonic()
    error = asyncio.run(ping(url, b"", started + 1.5, delays=(0.0, 1.0, 3.0, 10.0)))
    took = time.monotonic() - started
    assert "dropped" in error and 1.4 < took < 3
    hc.start()
    time.sleep(3)
    assert hc.requests == []  # nothing arrives after its time
    assert asyncio.run(ping(hc.url("/late/uuid"), b"", time.monotonic() + 5)) is None
    assert [r.path for r in hc.requests] == ["/late/uuid"]
    hc.stop()
