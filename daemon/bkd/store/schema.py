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
    -- Queries that must not grow with the job history: the history pass finds
    -- old jobs by when they finished, and start-up looks for unfinished runs.
    CREATE INDEX jobs_by_finished ON jobs(finished);
    CREATE INDEX jobs_unfinished ON jobs(job_id) WHERE status IN ('queued', 'running');
    CREATE INDEX job_hosts_unfinished ON job_hosts(job_id) WHERE status IN ('queued', 'running');
    """,
]
