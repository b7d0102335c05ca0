"""Errors recorded before viewers were given categories (SPEC §5) quoted file
names and command output; the migration moves them to `detail` (admins)
and leaves every role the status alone. Real SQLite, the real migrations."""

import json
import sqlite3

from bkd.state.store import Store
from bkd.state.schema import MIGRATIONS

LEAK = 'rsync exited with code 23 (partial transfer due to error): send_files failed to open "/home/a/secret.txt"'


def _database_before(path) -> None:
    with sqlite3.connect(path) as db:
        for number in range(4):  # the schema as the previous release left it
            db.executescript(f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;")
        db.execute("INSERT INTO jobs VALUES (1, 'snapshot', 'failed', 'manual', 0, 't0', 't1')")
        db.execute("INSERT INTO jobs VALUES (2, 'restore', 'ok', 'manual', 1, 't0', 't1')")
        db.execute("INSERT INTO jobs VALUES (3, 'snapshot', 'cancelled', 'manual', 0, 't0', 't1')")
        db.execute("INSERT INTO job_hosts (job_id, host, status, error, detail) VALUES (1, 'web1', 'failed', ?, ?)",
                   (LEAK, LEAK))
        db.execute("INSERT INTO job_hosts (job_id, host, status, stats) VALUES (2, 'web1', 'ok', ?)",
                   (json.dumps({"entries_written": 1, "would_write": ["home/a/secret.txt"]}),))
        db.execute("INSERT INTO job_hosts (job_id, host, status, error) VALUES (3, 'web1', 'cancelled', ?)",
                   ("pre hook exited with code 3: PGPASSWORD=x pg_dumpall",))
        db.execute("INSERT INTO host_state (host, added, last_status, last_error) VALUES ('web1', 't0', 'failed', ?)",
                   (LEAK,))
        db.execute("INSERT INTO episodes (kind, host, state, count, message, first_seen, last_seen) "
                   "VALUES ('run_failed', 'web1', 'open', 2, ?, 't0', 't1')", (f"snapshot run failed (2 in a row): {LEAK}",))


async def test_old_errors_move_to_detail_and_every_role_sees_the_status(tmp_path):
    path = tmp_path / "bkd.sqlite"
    _database_before(path)
    store = await Store.open(path)
    try:
        failed, restore, cancelled = [await store.jobs.get(n) for n in (1, 2, 3)]
    finally:
        await store.close()
    (run,) = failed["hosts"]
    assert run["error"] == "failed (recorded by an earlier bkd; admins see the detail)" and run["detail"] == LEAK
    assert restore["hosts"][0]["stats"] == {"entries_written": 1}
    assert cancelled["hosts"][0]["detail"].startswith("pre hook exited with code 3: PGPASSWORD")
    assert "PGPASSWORD" not in cancelled["hosts"][0]["error"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT last_error FROM host_state").fetchone() == ("failed (recorded by an earlier bkd)",)
        assert db.execute("SELECT message FROM episodes").fetchone() == ("snapshot run failed (2 in a row)",)
        assert "secret" not in json.dumps(db.execute("SELECT error, stats FROM job_hosts").fetchall())
