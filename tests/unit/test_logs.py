"""Journal fields and the native protocol's encoding."""

import struct

from bkd.logs import encode_journal, journal_fields


def test_fields_keep_severity_and_name_host_and_job():
    fields = journal_fields({"event": "run.failed", "level": "error", "host": "web1", "job_id": 12,
                             "timestamp": "x", "stats": {"a": 1}}, "event=run.failed host=web1")
    assert fields == {"MESSAGE": "event=run.failed host=web1", "PRIORITY": "3", "SYSLOG_IDENTIFIER": "bkd",
                      "BKD_EVENT": "run.failed", "BKD_HOST": "web1", "BKD_JOB_ID": "12"}
    assert journal_fields({"event": "x", "level": "warning"}, "x")["PRIORITY"] == "4"


def test_values_with_newlines_use_the_binary_form():
    data = encode_journal({"MESSAGE": "two\nlines", "PRIORITY": "6"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=6\n"


def test_without_a_journal_an_entry_goes_to_stderr_escaped_and_cut(monkeypatch, tmp_path, capsys):
    """Issue 18, item 8: the fallback line carried a host's raw bytes (and any length)."""
    from bkd import logs
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(tmp_path / "no-journal"))
    message = "event=hook.output line=\"\x1b]52;c;ZXZpbA==\x07\x00" + "y" * 100_000 + "\""
    logs.JournalLogger().msg(message, {"MESSAGE": message, "PRIORITY": "6"})
    line = capsys.readouterr().err
    assert line.startswith("<6>event=hook.output line=\"\\x1b]52;c;ZXZpbA==\\x07\\x00yyy")
    assert line.count("\n") == 1 and len(line) < logs.STDERR_LIMIT + 100
    assert line.endswith(" characters not shown]\n")


def test_what_people_read_in_the_journal_and_on_a_terminal_is_escaped_a_traceback_keeps_its_lines():
    from bkd.logs import _visible
    shown = _visible(None, None, {"event": "hook.output", "line": "\x1b[2J\u009b", "count": 3,
                                  "exception": "Traceback:\n  boom \x1b[2J"})
    assert shown == {"event": "hook.output", "line": "\\x1b[2J\\u009b", "count": 3,
                     "exception": "Traceback:\n  boom \\x1b[2J"}
