"""The schema, as migrations: each entry moves user_version from N to N+1.
Append only; never edit an entry that has shipped."""

MIGRATIONS = [
    """
    CREATE TABLE jobs (
        job_id   INTEGER PRIMARY KEY AUTOINCREMENT,
        kind     TEXT NOT NULL,
        status   TEXT NOT NULL,
        trigger  TEXT NOT NULL,
        dry_run  INTEGER NOT NULL DEFAULT 0,
        started  TEXT NOT NULL,
        finished TEXT
    );
    CREATE TABLE job_hosts (
        job_id   INTEGER NOT NULL REFERENCES jobs(job_id),
        host     TEXT NOT NULL,
        status   TEXT NOT NULL,
        stage    TEXT,
        started  TEXT,
        finished TEXT,
        snapshot TEXT,
        stats    TEXT,
        error    TEXT,
        PRIMARY KEY (job_id, host)
    );
    CREATE INDEX job_hosts_by_host ON job_hosts(host, job_id);
    CREATE TABLE snapshots (
        host   TEXT NOT NULL,
        name   TEXT NOT NULL,
        time   TEXT NOT NULL,
        stats  TEXT NOT NULL,
        job_id INTEGER,
        PRIMARY KEY (host, name)
    );
    """,
    """
    CREATE TABLE alerts (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        host    TEXT,
        kind    TEXT NOT NULL,
        message TEXT NOT NULL,
        created TEXT NOT NULL,
        acked   TEXT
    );
    CREATE TABLE verified (
        host          TEXT NOT NULL,
        path          BLOB NOT NULL,
        last_verified TEXT NOT NULL,
        PRIMARY KEY (host, path)
    );
    """,
    """
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        time      TEXT NOT NULL,
        uid       INTEGER NOT NULL,
        user      TEXT NOT NULL,
        pid       INTEGER NOT NULL,
        method    TEXT NOT NULL,
        params    TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );
    """,
    """
    -- Alerts become episodes (SPEC §8): one row per (kind, host, subject) while
    -- the condition lasts. Old rows collapse into episodes; rows naming an
    -- invalid host are dropped; integrity messages lose the file names.
    CREATE TABLE episodes (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT NOT NULL,
        host       TEXT NOT NULL DEFAULT '',
        subject    TEXT NOT NULL DEFAULT '',
        state      TEXT NOT NULL,
        count      INTEGER NOT NULL,
        message    TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen  TEXT NOT NULL,
        resolved   TEXT,
        acked_by   TEXT,
        acked_at   TEXT,
        note       TEXT
    );
    CREATE UNIQUE INDEX episodes_current ON episodes(kind, host, subject) WHERE state != 'resolved';
    CREATE INDEX episodes_by_state ON episodes(state, id);
    INSERT INTO episodes (kind, host, state, count, message, first_seen, last_seen, resolved, acked_at)
        SELECT g.kind, g.host, g.state, g.n,
               CASE WHEN g.kind = 'integrity' THEN 'checksum mismatch (recorded by an earlier bkd)'
                    ELSE a.message END,
               g.first_seen, g.last_seen, g.acked, g.acked
        FROM (SELECT kind, COALESCE(host, '') AS host,
                     CASE WHEN acked IS NULL THEN 'open' ELSE 'resolved' END AS state,
                     COUNT(*) AS n, MIN(created) AS first_seen, MAX(created) AS last_seen,
                     MAX(acked) AS acked, MAX(id) AS last_id
              FROM alerts
              WHERE host IS NULL OR (length(host) BETWEEN 1 AND 64 AND host NOT GLOB '*[^A-Za-z0-9._-]*'
                                     AND host NOT GLOB '.*')
              GROUP BY kind, COALESCE(host, ''), acked IS NULL) AS g
        JOIN alerts AS a ON a.id = g.last_id;
    DROP TABLE alerts;

    -- What status and metrics need per host, kept as runs end, so that neither
    -- reads the job history (which is pruned).
    CREATE TABLE host_state (
        host                 TEXT PRIMARY KEY,
        added                TEXT NOT NULL,
        last_job_id          INTEGER,
        last_status          TEXT,
        last_error           TEXT,
        last_finished        TEXT,
        last_attempt         TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO host_state (host, added, last_job_id, last_status, last_error, last_finished, last_attempt)
        SELECT h.host, (SELECT MIN(j2.started) FROM jobs AS j2 JOIN job_hosts AS h2 USING (job_id)
                        WHERE h2.host = h.host),
               h.job_id, h.status, h.error, h.finished, h.started
        FROM job_hosts AS h JOIN jobs AS j USING (job_id)
        WHERE h.job_id = (SELECT MAX(h3.job_id) FROM job_hosts AS h3 JOIN jobs AS j3 USING (job_id)
                          WHERE h3.host = h.host AND j3.dry_run = 0 AND j3.kind IN ('snapshot', 'all'));
    UPDATE host_state SET consecutive_failures = (
        SELECT COUNT(*) FROM job_hosts AS h JOIN jobs AS j USING (job_id)
        WHERE h.host = host_state.host AND j.dry_run = 0 AND j.kind IN ('snapshot', 'all')
          AND h.status = 'failed'
          AND h.job_id > COALESCE((SELECT MAX(h2.job_id) FROM job_hosts AS h2 JOIN jobs AS j2 USING (job_id)
                                   WHERE h2.host = host_state.host AND j2.dry_run = 0
                                     AND j2.kind IN ('snapshot', 'all') AND h2.status IN ('ok', 'warning')), 0));

    -- Counters that survive the pruning of job history (metrics' _total).
    CREATE TABLE run_counts (
        host   TEXT NOT NULL,
        kind   TEXT NOT NULL,
        status TEXT NOT NULL,
        count  INTEGER NOT NULL,
        PRIMARY KEY (host, kind, status)
    );
    INSERT INTO run_counts SELECT h.host, j.kind, h.status, COUNT(*)
        FROM job_hosts AS h JOIN jobs AS j USING (job_id)
        WHERE j.dry_run = 0 AND h.status NOT IN ('queued', 'running')
        GROUP BY h.host, j.kind, h.status;

    ALTER TABLE job_hosts ADD COLUMN detail TEXT;
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    -- Notifications (SPEC §8): what each episode has told the sinks, silences,
    -- the persistent outbox, each sink's state, and samples of the backup
    -- root's disk for the growth trend.
    ALTER TABLE episodes ADD COLUMN notified TEXT;
    ALTER TABLE episodes ADD COLUMN reminded TEXT;
    ALTER TABLE episodes ADD COLUMN reminders INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE silences (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        host    TEXT,
        kind    TEXT,
        until   TEXT NOT NULL,
        note    TEXT,
        by      TEXT NOT NULL,
        created TEXT NOT NULL,
        ended   TEXT
    );
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        key          TEXT NOT NULL UNIQUE,
        sink         TEXT NOT NULL,
        event        TEXT NOT NULL,
        episode_id   INTEGER,
        alert        TEXT NOT NULL,
        created      TEXT NOT NULL,
        created_s    REAL NOT NULL,
        state        TEXT NOT NULL DEFAULT 'pending',
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error   TEXT,
        finished     TEXT
    );
    CREATE INDEX outbox_heads ON outbox(sink, episode_id, id) WHERE state = 'pending';
    CREATE INDEX outbox_finished ON outbox(state, finished);
    CREATE TABLE sinks (
        name          TEXT PRIMARY KEY,
        last_delivery TEXT,
        last_error    TEXT,
        last_error_at TEXT,
        failing       INTEGER NOT NULL DEFAULT 0,
        delivered     INTEGER NOT NULL DEFAULT 0,
        failed        INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE disk_samples (
        time        TEXT PRIMARY KEY,
        used_bytes  INTEGER NOT NULL,
        free_bytes  INTEGER NOT NULL,
        used_inodes INTEGER NOT NULL,
        free_inodes INTEGER NOT NULL
    );
    """,
    """
    -- Viewers see outcomes and counts only (SPEC §5). A run's error is now a
    -- category and exit code for every role, its detail the full message for
    -- admins. Errors recorded before the split may quote file names or
    -- command output: they move to `detail`, and what every role sees becomes
    -- the status alone. The same for each host's last error and for the
    -- run_failed alerts that quoted it (their message keeps the part before
    -- the quote, "snapshot run failed (3 in a row)", or says it is old). A dry-run restore's
    -- list of file names leaves its stats.
    UPDATE job_hosts SET stats = json_remove(stats, '$.would_write')
        WHERE stats IS NOT NULL AND json_valid(stats) AND json_type(stats, '$.would_write') IS NOT NULL;
    UPDATE job_hosts SET detail = COALESCE(detail, error),
                         error = status || ' (recorded by an earlier bkd; admins see the detail)'
        WHERE error IS NOT NULL AND (detail IS NULL OR detail = error);
    UPDATE host_state SET last_error = last_status || ' (recorded by an earlier bkd)'
        WHERE last_error IS NOT NULL;
    UPDATE episodes SET message = CASE WHEN message LIKE '% run failed%'
                                       THEN substr(message, 1, instr(message, ': ') - 1)
                                       ELSE 'run failed (recorded by an earlier bkd)' END
        WHERE kind = 'run_failed' AND instr(message, ': ') > 0;
    """,
    """
    -- Queries that must not grow with the job history: the history pass finds
    -- old jobs by when they finished, and start-up looks for unfinished runs.
    CREATE INDEX jobs_by_finished ON jobs(finished);
    CREATE INDEX jobs_unfinished ON jobs(job_id) WHERE status IN ('queued', 'running');
    CREATE INDEX job_hosts_unfinished ON job_hosts(job_id) WHERE status IN ('queued', 'running');
    """,
    """
    -- What a dry-run restore would write (JSON, admins only) is part of its
    -- record, not only of the job in memory: bkctl reads it after the end.
    ALTER TABLE job_hosts ADD COLUMN listing TEXT;
    """,
]
