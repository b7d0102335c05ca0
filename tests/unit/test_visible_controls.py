"""Issue 18, item 5: control characters never reach a terminal. A host's
stderr (OSC 52 clipboard writes, window titles, clear screen, C1 CSI), a
viewer's refused call in the audit log, an operator's note: every human
rendering shows them escaped (fmt.safe), in one place — the client that
decodes the daemon's answers for human output, the report's renderings and
the notification sinks — while --json keeps exact values."""

import json
import os
import socket
import threading

import pytest

from bkctl import report
from bkctl.client import Client, RemoteError
from bkctl.fmt import safe, safe_tree
from bkd.notify.sinks import Notification, email_message, subject_line, webhook_body
from bkd.config.models import EmailSink

from test_report_view import alert, digest, host

HOSTILE = ("\x1b]52;c;ZXZpbA==\x07"  # OSC 52: write the clipboard
           "\x1b]0;pwned\x07"  # the window title
           "\x1b[2J\x1b[H"  # clear the screen
           "\u009b31m"  # C1 CSI
           "\x00\x7f\t\n\r"  # NUL, DEL, a tab and a newline inside a field
           "\u202e"  # a bidi override
           + os.fsdecode(b"\xff\xfe")  # bytes that are not UTF-8, as os.fsdecode carries them
           + "\ud800")  # a lone surrogate of no byte


def raw_controls(text: str) -> list[str]:
    """What a terminal would act on, or a reader not see."""
    return [c for c in text if not c.isprintable() and c not in "\n"]


@pytest.mark.parametrize("text, shown", [
    ("plain é 日本", "plain é 日本"),
    ("\x1b[2J", "\\x1b[2J"),
    ("\u009b31m", "\\u009b31m"),
    ("a\tb\nc\rd", "a\\tb\\nc\\rd"),
    ("\x00\x7f", "\\x00\\x7f"),
    (os.fsdecode(b"bad-\xff\xfe-utf8"), "bad-\\xff\\xfe-utf8"),  # the byte itself, as ls always showed it
    ("\ud800", "\\ud800"),
    ("\u202eevil", "\\u202eevil"),
])
def test_safe_shows_every_control_character_visibly_and_is_idempotent(text, shown):
    assert safe(text) == shown
    assert safe(safe(text)) == safe(text)


def test_safe_tree_escapes_every_string_keys_included_and_keeps_other_values():
    tree = {HOSTILE: [HOSTILE, 1, None, True, 2.5, {"k": HOSTILE}]}
    shown = safe_tree(tree)
    assert not raw_controls(json.dumps(shown, ensure_ascii=False))
    assert list(shown) == [safe(HOSTILE)] and shown[safe(HOSTILE)][1:5] == [1, None, True, 2.5]


def _serve_once(path: str, answers: list[dict]) -> threading.Thread:
    """A socket that answers each request line with the next of answers (with its id)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def serve():
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as f:
            for answer in answers:
                request = json.loads(f.readline())
                f.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], **answer}).encode() + b"\n")
                f.flush()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_client_for_people_escapes_answers_events_and_errors_and_keeps_what_it_uses_exact(tmp_path):
    path = str(tmp_path / "s")
    answers = [{"result": {"message": HOSTILE}}, {"result": {"sources": [HOSTILE]}},
               {"error": {"code": -32003, "message": HOSTILE, "data": {"x": HOSTILE}}}]
    thread = _serve_once(path, answers)
    with Client(path, escape=True) as client:
        assert client.call("status") == {"message": safe(HOSTILE)}
        assert client.call("restore", exact=True) == {"sources": [HOSTILE]}  # used, not shown
        with pytest.raises(RemoteError) as refused:
            client.call("prune")
    assert refused.value.message == safe(HOSTILE) and refused.value.data == {"x": safe(HOSTILE)}
    thread.join(5)
    os.unlink(path)
    thread = _serve_once(path, answers[:1])
    with Client(path) as client:  # --json: exact values
        assert client.call("status") == {"message": HOSTILE}
    thread.join(5)


def test_the_report_renders_hostile_text_escaped_in_text_page_and_mail():
    hostile = digest(host("web1", alerts=[alert("run_failed", "web1", subject=HOSTILE)]),
                     server_alerts=[alert("disk", None, subject=HOSTILE)])
    hostile["server"] = HOSTILE
    for rendered in (report.text(hostile), report.page_html(hostile), report.mail_html(hostile),
                     report.summary(hostile)):
        assert not raw_controls(rendered)
        assert "\\x1b]52;c;ZXZpbA==\\x07" in rendered


def test_notifications_people_read_escape_an_operator_s_note_and_the_webhook_keeps_it_exact():
    note = f"maintenance {HOSTILE}"
    record = {"id": 7, "kind": "run_failed", "host": "web1", "subject": None, "state": "acked", "count": 2,
              "message": f"snapshot run failed: {HOSTILE}", "first_seen": "2026-05-01T09:00:00Z",
              "last_seen": "2026-05-01T10:00:00Z", "acked_by": "op", "acked_at": "2026-05-01T10:01:00Z",
              "note": note, "silenced": False}
    n = Notification("key-1", "reminder", record, "backup1")
    mail = email_message(EmailSink(name="m", type="email", to=["ops@example.org"]), n)
    for part in mail.walk():
        if not part.is_multipart():
            assert not raw_controls(part.get_content()), part.get_content_type()
    assert "\\x1b]0;pwned\\x07" in mail.get_body(("plain",)).get_content()
    assert not raw_controls(subject_line(n))
    body = json.loads(webhook_body(n))
    assert body["alert"]["note"] == note  # exact, for programs
    assert not raw_controls(body["text"])
    assert b"\x1b" not in webhook_body(n)  # JSON escapes it: no raw byte on the wire
