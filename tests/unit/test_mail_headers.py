"""A mail's Date and Message-ID as RFC 5322 reads them: the Date in UTC said
as +0000 (-0000 means "the local time is unknown"), the Message-ID under the
server's name and the same for every retry of one notification."""

from __future__ import annotations

import email
import email.policy
import email.utils
from datetime import datetime, timedelta, timezone

import pytest

from bkd.config.models import EmailSink
from bkd.alerts.notify.sinks import Notification, email_message, mail_domain

SINK = EmailSink(name="ops-mail", type="email", to=["ops@example.org"])


def parsed(server: str, key: str = "bkd-1f2e3d4c-7-opened-ops-mail"):
    message = email_message(SINK, Notification(key, "test", {}, server))
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)


def test_the_date_is_utc_written_plus_0000_and_now():
    message = parsed("backup1.example.org")
    assert message["Date"].endswith(" +0000"), message["Date"]
    sent = email.utils.parsedate_to_datetime(message["Date"])
    assert sent.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - sent) < timedelta(minutes=1)


def test_the_message_id_is_the_idempotency_key_under_the_servers_name():
    first, retry = parsed("backup1.example.org"), parsed("backup1.example.org")
    assert first["Message-ID"] == retry["Message-ID"] == "<bkd-1f2e3d4c-7-opened-ops-mail@backup1.example.org>"
    assert first["From"] == "bkd@backup1.example.org"


@pytest.mark.parametrize("server, domain", [
    ("backup1", "backup1"),
    ("Backup 1 (Berlin)", "Backup-1--Berlin"),
    ("bäckup", "b-ckup"),
    ("...", "bkd"),
    ("<x@y>", "x-y"),
])
def test_a_server_name_that_is_no_domain_still_makes_a_valid_message_id(server, domain):
    assert mail_domain(server) == domain
    assert parsed(server)["Message-ID"] == f"<bkd-1f2e3d4c-7-opened-ops-mail@{domain}>"


def test_the_default_sender_is_under_the_same_domain():
    assert parsed("Backup 1 (Berlin)")["From"] == "bkd@Backup-1--Berlin"
