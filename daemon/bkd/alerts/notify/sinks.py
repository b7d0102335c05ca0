"""What a notification looks like on each kind of sink, and delivering one.
What people read (a mail, a webhook's `text`) renders control characters
escaped (an operator's note, a host name in a subject); the webhook's `alert`
keeps exact values for programs.

A delivery ends in an Outcome: delivered, or failed with an error fit for
every role (a status code or a reason; never a URL, a file name, a secret
or a server's own text) and whether trying again could help."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime

import structlog

from bkctl import report as digest_view
from bkctl.fmt import safe, safe_tree

from ... import __version__
from ...config.models import EmailSink, WebhookSink, redact_url
from ...infra.threads import in_own_thread
from . import http

log = structlog.get_logger()

TIMEOUT = 10.0  # seconds for one delivery attempt: connecting, sending, the answer

WHAT = {
    "run_failed": "run failed", "stale": "no recent snapshot", "hung": "run hung",
    "auth": "SSH login refused", "integrity": "integrity check failed", "anomaly": "unusual changes",
    "disk": "backup disk", "clock": "snapshots dated in the future", "notify": "notifications failing",
    "internal": "internal error",
}


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None
    permanent: bool = False  # retrying cannot help (e.g. 4xx): a person must look


REPORT = "report"  # the daily digest: not about one alert


@dataclass(frozen=True)
class Notification:
    key: str  # the idempotency key
    event: str  # opened | reminder | resolved | test | report
    alert: dict  # the record alerts.list shows; for a report, the digest (the `report` RPC's result)
    server: str
    audit_head: dict | None = None  # the audit log's newest entry at delivery: a copy off the server


def server_name(configured: str) -> str:
    return configured or socket.gethostname()


def subject_line(n: Notification) -> str:
    """One line a person can triage from a phone: `[bkd backup1] web1: run failed (3×)`."""
    if n.event == "test":
        return f"[bkd {safe(n.server)}] test notification"
    if n.event == REPORT:
        return digest_view.summary(n.alert)
    alert = safe_tree(n.alert)
    what = WHAT.get(alert["kind"], alert["kind"])
    if alert.get("subject"):
        what += f": {alert['subject']}"
    if alert.get("count", 1) > 1:
        what += f" ({alert['count']}×)"
    line = f"[bkd {safe(n.server)}] {alert['host'] or 'bkd'}: "
    if n.event == "resolved":
        return line + f"resolved: {what}"
    return line + what + (", still open" if n.event == "reminder" else "")


def webhook_body(n: Notification) -> bytes:
    if n.event == REPORT:  # the digest as `bkctl report --json` prints it, under `report`
        return json.dumps({"event": n.event, "report": n.alert, "server": n.server, "version": __version__,
                           "idempotency_key": n.key, "text": subject_line(n)}, separators=(",", ":")).encode()
    return json.dumps({"event": n.event, "alert": n.alert, "server": n.server, "version": __version__,
                       "idempotency_key": n.key, "text": subject_line(n), "audit_head": n.audit_head},
                      separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _details(n: Notification) -> list[tuple[str, str]]:
    alert = safe_tree(n.alert)
    head = [("audit log", digest_view.audit_line(n.audit_head).removeprefix("audit log: "))] if n.audit_head else []
    if n.event == "test":
        return [("message", f"a test message from bkd on {safe(n.server)}: this sink works"), *head]
    rows = [("message", alert["message"]), ("host", alert["host"] or "-"), ("kind", alert["kind"]),
            ("state", alert["state"]), ("count", str(alert["count"])), ("since", alert["first_seen"]),
            ("last seen", alert["last_seen"])]
    if alert.get("resolved"):
        rows.append(("resolved", alert["resolved"]))
    if alert.get("acked_by"):
        rows.append(("acknowledged", f"by {alert['acked_by']} at {alert['acked_at']}"
                                     + (f": {alert['note']}" if alert.get("note") else "")))
    if n.event != "resolved" and alert.get("id") is not None:
        rows.append(("acknowledge", f"bkctl alerts ack {alert['id']}"))
    return rows + head


def mail_domain(server: str) -> str:
    """The server's name as the domain of a Message-ID: what RFC 5322 allows there (letters,
    digits, dots, hyphens), anything else a hyphen."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", server).strip(".-") or "bkd"


def email_message(sink: EmailSink, n: Notification) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject_line(n)
    message["From"] = sink.from_ or f"bkd@{mail_domain(n.server)}"
    message["To"] = ", ".join(sink.to)
    message["Date"] = format_datetime(datetime.now(timezone.utc))  # +0000: UTC, said so (-0000 means "unknown")
    # The idempotency key under the server's name: a retried delivery keeps its id, so receivers deduplicate.
    message["Message-ID"] = f"<{n.key}@{mail_domain(n.server)}>"
    if n.event == REPORT:
        message.set_content(digest_view.text(n.alert))
        message.add_alternative(digest_view.mail_html(n.alert), subtype="html")
        return message
    rows = _details(n)
    message.set_content("\n".join(f"{name}: {value}" for name, value in rows) + "\n")
    cells = "".join(f"<tr><th style=\"text-align:left;padding-right:1em\">{html.escape(name)}</th>"
                    f"<td>{html.escape(value)}</td></tr>" for name, value in rows)
    message.add_alternative(f"<html><body><h3>{html.escape(subject_line(n))}</h3>"
                            f"<table>{cells}</table></body></html>\n", subtype="html")
    return message


def read_secret(path: str, what: str) -> bytes:
    """A secret from its file (read at each use, so a rotated secret is taken
    at once), without its trailing newline. The error names neither the file
    nor the secret."""
    try:
        with open(path, "rb") as f:
            return f.read().rstrip(b"\r\n")
    except OSError as e:
        log.error("notify.secret_unreadable", file=path, error=e.strerror)
        raise _Undeliverable(f"cannot read the {what} file ({(e.strerror or 'error').lower()})") from None


class _Undeliverable(Exception):
    """Failed before anything was sent; may be fixed by the admin, so retried."""


async def deliver(sink: EmailSink | WebhookSink, n: Notification) -> Outcome:
    try:
        if isinstance(sink, WebhookSink):
            return await _webhook(sink, n)
        return await in_own_thread(_email, sink, n)  # smtplib blocks
    except _Undeliverable as e:
        return Outcome(False, str(e))


async def _webhook(sink: WebhookSink, n: Notification) -> Outcome:
    body = webhook_body(n)
    headers = {"Content-Type": "application/json", "Idempotency-Key": n.key}
    if sink.secret_file:
        headers["X-Bkd-Signature"] = signature(read_secret(sink.secret_file, "secret"), body)
    try:
        status = await http.request(sink.url, "POST", body, headers, TIMEOUT)
    except http.HttpError as e:
        return Outcome(False, str(e))
    if http.delivered(status):
        return Outcome(True)
    return Outcome(False, f"HTTP {status}", http.permanent(status))


def _email(sink: EmailSink, n: Notification) -> Outcome:
    """Blocking (smtplib): runs on a thread of its own."""
    password = read_secret(sink.password_file, "password") if sink.username else None
    context = ssl.create_default_context()
    try:
        if sink.security == "tls":
            smtp = smtplib.SMTP_SSL(sink.smtp_host, sink.smtp_port, timeout=TIMEOUT, context=context)
        else:
            smtp = smtplib.SMTP(sink.smtp_host, sink.smtp_port, timeout=TIMEOUT)
        with smtp:
            if sink.security == "starttls":
                smtp.starttls(context=context)
            if sink.username:
                smtp.login(sink.username, password.decode())
            smtp.send_message(email_message(sink, n))
    except smtplib.SMTPAuthenticationError as e:
        return Outcome(False, f"SMTP login refused ({e.smtp_code})", permanent=True)
    except smtplib.SMTPRecipientsRefused as e:
        codes = sorted({code for code, _ in e.recipients.values()})
        return Outcome(False, f"SMTP refused the recipients ({', '.join(map(str, codes))})",
                       permanent=all(code >= 500 for code in codes))
    except smtplib.SMTPResponseException as e:
        return Outcome(False, f"SMTP error {e.smtp_code}", permanent=e.smtp_code >= 500)
    except smtplib.SMTPNotSupportedError:
        return Outcome(False, "the SMTP server does not offer STARTTLS or login", permanent=True)
    except ssl.SSLError as e:
        return Outcome(False, f"TLS failed: {e.reason or 'error'}")
    except (OSError, smtplib.SMTPException) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        return Outcome(False, f"SMTP: {reason}")
    return Outcome(True)


def describe(sink: EmailSink | WebhookSink) -> str:
    """Where a sink delivers, safe for logs (URLs redacted)."""
    if isinstance(sink, WebhookSink):
        return redact_url(sink.url)
    return f"smtp://{sink.smtp_host}:{sink.smtp_port}"
