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
