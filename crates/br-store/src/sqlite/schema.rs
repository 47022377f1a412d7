//! The SQLite schema and its migrations. `PRAGMA user_version` holds the schema version; a store
//! with a version above [`CURRENT_VERSION`] was written by a newer br and is refused untouched.

/// Each entry migrates from version `i` to `i + 1`. Never edit a released entry: append.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8];

pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

const V1: &str = r#"
CREATE TABLE sessions (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    slug                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    repo_root            TEXT NOT NULL,
    plan_path            TEXT,
    base                 TEXT NOT NULL,
    base_commit          TEXT,
    isolation            TEXT NOT NULL,
    scope                TEXT NOT NULL,
    verify               TEXT,
    on_conflict          TEXT NOT NULL,
    heartbeat_timeout_ms INTEGER NOT NULL,
    workers_wanted       INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    started_at           INTEGER,
    completed_at         INTEGER,
    -- Counters kept in step with task states, so progress and summaries never count rows.
    total_tasks          INTEGER NOT NULL,
    succeeded_tasks      INTEGER NOT NULL DEFAULT 0,
    failed_tasks         INTEGER NOT NULL DEFAULT 0,
    skipped_tasks        INTEGER NOT NULL DEFAULT 0,
    cancelled_tasks      INTEGER NOT NULL DEFAULT 0,
    running_tasks        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_status ON sessions (status);
CREATE INDEX sessions_by_name ON sessions (name, created_at);
CREATE INDEX sessions_by_created ON sessions (created_at);

CREATE TABLE tasks (
    session_id       TEXT NOT NULL,
    id               TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    run              TEXT NOT NULL,
    files            TEXT NOT NULL,
    after            TEXT NOT NULL,
    env              TEXT NOT NULL,
    timeout_ms       INTEGER,
    retries          INTEGER NOT NULL,
    state            TEXT NOT NULL,
    deps_left        INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    lost             INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    lease_expires_at INTEGER,
    exit_code        INTEGER,
    outcome          TEXT,
    started_at       INTEGER,
    finished_at      INTEGER,
    log_path         TEXT,
    blocked_by       TEXT,
    PRIMARY KEY (session_id, id)
);
-- Claiming reads only ready tasks, in plan order: a 10,000-task session claims as fast as a
-- 10-task one.
CREATE INDEX tasks_ready ON tasks (session_id, seq) WHERE state = 'ready';
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX tasks_by_seq ON tasks (session_id, seq);

CREATE TABLE task_deps (
    session_id TEXT NOT NULL,
    dep_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    PRIMARY KEY (session_id, dep_id, task_id)
);

CREATE TABLE attempts (
    session_id  TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT,
    exit_code   INTEGER,
    detail      TEXT NOT NULL DEFAULT '{}',
    log_path    TEXT,
    PRIMARY KEY (session_id, task_id, attempt)
);

CREATE TABLE workers (
    id                   TEXT PRIMARY KEY,
    host                 TEXT NOT NULL,
    pid                  INTEGER NOT NULL,
    status               TEXT NOT NULL,
    session_id           TEXT,
    task_session_id      TEXT,
    task_id              TEXT,
    attempt              INTEGER,
    task_started_at      INTEGER,
    tasks_completed      INTEGER NOT NULL DEFAULT 0,
    tasks_failed         INTEGER NOT NULL DEFAULT 0,
    started_at           INTEGER NOT NULL,
    last_heartbeat       INTEGER NOT NULL,
    heartbeat_timeout_ms INTEGER NOT NULL,
    stop_requested       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_status ON workers (status);

CREATE TABLE locks (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    task_id     TEXT,
    attempt     INTEGER,
    acquired_at INTEGER NOT NULL
);
CREATE INDEX locks_by_owner ON locks (session_id, task_id);

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    session_id TEXT,
    task_id    TEXT,
    worker_id  TEXT,
    attempt    INTEGER,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_session ON events (session_id, seq);
"#;

/// Per-task base commits, for tasks the merge queue requeues on top of the integration branch.
const V2: &str = r#"
ALTER TABLE tasks ADD COLUMN base_commit TEXT;
"#;

/// Reading a task shows its scope violations and predicted conflicts: find those events of a
/// session without reading all of them.
const V3: &str = r#"
CREATE INDEX events_notes ON events (session_id, seq)
    WHERE kind IN ('scope_violation', 'merge_conflict');
"#;

/// Which repository a session belongs to (`Repo::identity`): a worker claims only tasks of
/// sessions of the repository it serves. NULL for sessions of older stores: anyone's.
const V4: &str = r#"
ALTER TABLE sessions ADD COLUMN repo_id TEXT;
"#;

/// Integration as it runs: where each task's work is (`landing`, `landed_commit`, the commit of
/// its succeeded attempt waiting to land, its repairs), how it starts and lands (per task, set
/// at submit: older sessions start from their base and land by `br merge`, as they did), its
/// prompt, why each attempt runs and what it started from; per session the integration tip,
/// the worker landing for it (a lease, like a task's), how many tasks landed, and the paths
/// its slots keep. `tasks_waiting`: who has something to land is found without a scan.
const V5: &str = r#"
ALTER TABLE tasks ADD COLUMN landing TEXT;
ALTER TABLE tasks ADD COLUMN landed_commit TEXT;
ALTER TABLE tasks ADD COLUMN result_commit TEXT;
ALTER TABLE tasks ADD COLUMN repairs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN next_reason TEXT;
ALTER TABLE tasks ADD COLUMN prompt TEXT;
ALTER TABLE tasks ADD COLUMN start TEXT NOT NULL DEFAULT 'base';
ALTER TABLE tasks ADD COLUMN land TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE tasks ADD COLUMN on_conflict TEXT;
ALTER TABLE tasks ADD COLUMN max_repairs INTEGER NOT NULL DEFAULT 3;
ALTER TABLE attempts ADD COLUMN reason TEXT;
ALTER TABLE attempts ADD COLUMN start_commit TEXT;
ALTER TABLE sessions ADD COLUMN integration_commit TEXT;
ALTER TABLE sessions ADD COLUMN lander TEXT;
ALTER TABLE sessions ADD COLUMN landing_expires_at INTEGER;
ALTER TABLE sessions ADD COLUMN landed_tasks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN keep TEXT NOT NULL DEFAULT '[]';
CREATE INDEX tasks_waiting ON tasks (session_id, seq) WHERE landing = 'waiting';
"#;

/// Fleets of coding agents: a task's agent profile (JSON, resolved at submit) and pool; what a
/// session's slots get (`slot_setup`: copy, setup, setup_inputs, ports, as JSON); usage per
/// attempt, kept in step per task and per session (cost in millionths of a dollar, so that the
/// store keeps integers only); and the pools, shared by every session of the store: how many of
/// a pool's tasks may run at once (NULL: any number) and until when a rate limit parks it.
/// `tasks_pool_running` counts a pool's running tasks without a scan.
const V6: &str = r#"
ALTER TABLE tasks ADD COLUMN agent TEXT;
ALTER TABLE tasks ADD COLUMN pool TEXT;
ALTER TABLE tasks ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN cost_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN input_tokens INTEGER;
ALTER TABLE attempts ADD COLUMN output_tokens INTEGER;
ALTER TABLE attempts ADD COLUMN cost_micros INTEGER;
ALTER TABLE sessions ADD COLUMN slot_setup TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN cost_micros INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pools (
    name          TEXT PRIMARY KEY,
    size          INTEGER,
    backoff_ms    INTEGER NOT NULL,
    parked_until  INTEGER,
    parked_reason TEXT
);
CREATE INDEX tasks_pool_running ON tasks (pool) WHERE state = 'running';
"#;

/// Version 7: the session's git remote (where its work travels between machines), and attempt
/// output kept in the store, in pieces as it is written, so any machine that
/// reaches the store can read (and follow) any attempt's log. A piece is named by the byte of
/// the log it starts at: writing one twice (a retry after a lost answer) keeps one copy.
const V7: &str = r#"
ALTER TABLE sessions ADD COLUMN remote TEXT;
CREATE TABLE log_chunks (
    session_id  TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    data        BLOB NOT NULL,
    PRIMARY KEY (session_id, task_id, attempt, byte_offset)
) WITHOUT ROWID;
"#;

/// Version 8: a run page reads a session's landing record (`Store::history`) without reading
/// every event of the session (20,000 tasks have over 100,000).
const V8: &str = r#"
CREATE INDEX events_landing ON events (session_id, seq)
    WHERE kind IN ('task_landed', 'merge_conflict', 'verify_failed');
"#;
