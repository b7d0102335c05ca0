"""The daily report reaches real receivers on loopback: a mail through an SMTP
server with STARTTLS and login (multipart text and HTML, charts as HTML/CSS
without SVG, no remote address, every host), and a signed webhook with the
digest as JSON; once a day, also across a restart."""

import email
import email.policy
import re
import time

from conftest import make_tree, wait_until
from receivers import HttpReceiver, SmtpReceiver, self_signed_certificate

SECRET = b"report-s3cret"


def test_the_daily_report_arrives_by_mail_and_webhook_once_a_day(tmp_path, daemon_factory):
    cert, key = self_signed_certificate(tmp_path)
    smtp = SmtpReceiver(cert, key, "bkd", "pass-word")
    hook = HttpReceiver(secret=SECRET)
    (tmp_path / "password").write_text("pass-word\n")
    (tmp_path / "secret").write_bytes(SECRET)
    hosts = [{"name": "web1", "source": str(make_tree(tmp_path / "web1", 5))},
             {"name": "web2", "source": str(make_tree(tmp_path / "web2", 2))},
             {"name": "db1", "source": str(tmp_path / "missing")}]
    # The sinks take only integrity alerts: kinds filter alerts, not the report.
    sinks = [{"name": "ops-mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
              "security": "starttls", "username": "bkd", "password_file": str(tmp_path / "password"),
              "from": "bkd@backup1.example.org", "to": ["ops@example.org"], "kinds": ["integrity"]},
             {"name": "chat", "type": "webhook", "url": hook.url(), "secret_file": str(tmp_path / "secret"),
              "kinds": ["integrity"]}]
    daemon = daemon_factory(hosts, server_name="backup1", notify=sinks,
                            report={"enabled": False, "notify": ["ops-mail", "chat"]})
    daemon.start(env={"SSL_CERT_FILE": str(cert), "TZ": "America/Los_Angeles"})
    daemon.run_snapshot()
    assert not smtp.messages and not hook.requests

    # Enabled at a time of day that has passed: today's report goes out now (and a reload wakes the loop).
    daemon.config["report"] = {"enabled": True, "at": "00:00", "timezone": "Europe/Berlin",
                               "notify": ["ops-mail", "chat"]}
    daemon.write_config()
    assert daemon.bkctl("reload").returncode == 0
    wait_until(lambda: smtp.messages and hook.notifications(), 30, what="the report by mail and webhook")

    (received,) = smtp.messages
    assert received["tls"] and received["login"]
    message = email.message_from_bytes(received["data"], policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "[bkd backup1] report: 3 hosts, 1 failing or stale, 1 alert"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert sorted(parts) == ["text/html", "text/plain"]
    raw = received["data"].decode()
    assert "<svg" not in raw.lower() and "<script" not in raw.lower()
    assert not re.search(r"(?i)\b(?:https?|ftp):|\bsrc=|\bhref=|url\(|@import", parts["text/html"])
    for name in ("web1", "web2", "db1"):
        assert name in parts["text/plain"] and f"<td>{name}</td>" in parts["text/html"]
    # The header in the report's own zone (Berlin), not the daemon's local one (Los Angeles).
    generated = re.match(r"bkd report for backup1 at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (CES?T) ", parts["text/plain"])
    assert generated and f"{generated[1]} {generated[2]}" in parts["text/html"], parts["text/plain"][:200]
    assert parts["text/html"].count("background:#3b7dd8") >= 3 * 2  # bars of web1's and web2's charts

    (body,) = hook.notifications()
    assert hook.bad_signatures == 0 and body["event"] == "report" and body["server"] == "backup1"
    assert body["text"] == message["Subject"]
    assert [h["name"] for h in body["report"]["hosts"]] == ["web1", "web2", "db1"]
    assert body["report"]["timezone"] == "Europe/Berlin" and len(body["report"]["hosts"][0]["trend"]) == 30
    assert hook.requests[0].headers["Idempotency-Key"] == body["idempotency_key"]
    today = body["report"]["hosts"][0]["trend"][-1]["day"]  # the day in Berlin
    assert re.fullmatch(rf"bkd-[0-9a-f]{{8}}-report-{today}-chat", body["idempotency_key"])
    assert message["Message-ID"] == f"<{body['idempotency_key'][:-len('chat')]}ops-mail@backup1>"
    assert set(body["report"]) == set(daemon.bkctl_json("report"))  # what bkctl report --json prints
    sinks_state = {s["name"]: s for s in daemon.call("notify.status")["sinks"]}
    assert sinks_state["chat"]["delivered"] == 1 and sinks_state["ops-mail"]["delivered"] == 1

    # Once a day: a restart on the same day sends nothing more.
    daemon.stop()
    daemon.start(env={"SSL_CERT_FILE": str(cert)})
    time.sleep(3)
    assert len(smtp.messages) == 1 and len(hook.requests) == 1
    assert '"report.queued"' not in daemon.log().split("daemon.ready")[-1]
    smtp.stop()
    hook.stop()
