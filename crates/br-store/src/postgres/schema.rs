//! The PostgreSQL schema and its migrations. The one-row table `br_schema` holds the schema
//! version; a store with a version above [`CURRENT_VERSION`] was written by a newer br and is
//! refused untouched. Versions count the same steps as the SQLite schema's.

/// The table that holds the version.
pub(super) const VERSION_TABLE: &str = "br_schema";

/// br's tables: finding any of them in a schema without a version means they are someone
/// else's.
pub(super) const TABLES: &[&str] = &[
    "sessions",
    "tasks",
    "task_deps",
    "attempts",
    "workers",
    "locks",
    "events",
    "pools",
    "log_chunks",
];

/// One step of the schema.
pub(super) struct Migration {
    pub from: i64,
    pub to: i64,
    pub sql: &'static str,
}

/// The PostgreSQL backend began when the SQLite schema was at version 3, so its first
/// migration creates that schema whole. Never edit a released entry: append one per new
/// SQLite version.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 0,
        to: 3,
        sql: V3,
    },
    Migration {
        from: 3,
        to: 4,
        sql: V4,
    },
    Migration {
        from: 4,
        to: 5,
        sql: V5,
    },
    Migration {
        from: 5,
        to: 6,
        sql: V6,
    },
    Migration {
        from: 6,
        to: 7,
        sql: V7,
    },
    Migration {
        from: 7,
        to: 8,
        sql: V8,
    },
];

pub const CURRENT_VERSION: i64 = 8;

/// SQLite's version 8: the landing record's index (see there).
const V8: &str = r#"
CREATE INDEX events_landing ON events (session_id, seq)
    WHERE kind IN ('task_landed', 'merge_conflict', 'verify_failed');
"#;

/// SQLite's version 7: the session's remote, and attempt output in the store (see there).
const V7: &str = r#"
ALTER TABLE sessions ADD COLUMN remote TEXT;
CREATE TABLE log_chunks (
    session_id  TEXT COLLATE "C" NOT NULL,
    task_id     TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (session_id, task_id, attempt, byte_offset)
);
"#;

/// SQLite's version 6: fleets of coding agents (see there).
const V6: &str = r#"
ALTER TABLE tasks ADD COLUMN agent TEXT;
ALTER TABLE tasks ADD COLUMN pool TEXT COLLATE "C";
ALTER TABLE tasks ADD COLUMN input_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN output_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN input_tokens BIGINT;
ALTER TABLE attempts ADD COLUMN output_tokens BIGINT;
ALTER TABLE attempts ADD COLUMN cost_micros BIGINT;
ALTER TABLE sessions ADD COLUMN slot_setup TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN input_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN output_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
CREATE TABLE pools (
    name          TEXT COLLATE "C" PRIMARY KEY,
    size          BIGINT,
    backoff_ms    BIGINT NOT NULL,
    parked_until  BIGINT,
    parked_reason TEXT
);
CREATE INDEX tasks_pool_running ON tasks (pool) WHERE state = 'running';
"#;

/// SQLite's version 5: integration as it runs (see there).
const V5: &str = r#"
ALTER TABLE tasks ADD COLUMN landing TEXT;
ALTER TABLE tasks ADD COLUMN landed_commit TEXT;
ALTER TABLE tasks ADD COLUMN result_commit TEXT;
ALTER TABLE tasks ADD COLUMN repairs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN next_reason TEXT;
ALTER TABLE tasks ADD COLUMN prompt TEXT;
ALTER TABLE tasks ADD COLUMN start TEXT NOT NULL DEFAULT 'base';
ALTER TABLE tasks ADD COLUMN land TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE tasks ADD COLUMN on_conflict TEXT;
ALTER TABLE tasks ADD COLUMN max_repairs BIGINT NOT NULL DEFAULT 3;
ALTER TABLE attempts ADD COLUMN reason TEXT;
ALTER TABLE attempts ADD COLUMN start_commit TEXT;
ALTER TABLE sessions ADD COLUMN integration_commit TEXT;
ALTER TABLE sessions ADD COLUMN lander TEXT;
ALTER TABLE sessions ADD COLUMN landing_expires_at BIGINT;
ALTER TABLE sessions ADD COLUMN landed_tasks BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN keep TEXT NOT NULL DEFAULT '[]';
CREATE INDEX tasks_waiting ON tasks (session_id, seq) WHERE landing = 'waiting';
"#;

/// SQLite's version 4: which repository a session belongs to.
const V4: &str = "ALTER TABLE sessions ADD COLUMN repo_id TEXT;";

/// SQLite's versions 1 to 3. Ids sort bytewise (`COLLATE "C"`), as in SQLite, whatever the
/// database's locale; that also lets an id-prefix `LIKE` use the index. Integers are BIGINT
/// throughout (one Rust type, `i64`, to convert);
/// timestamps are milliseconds since the epoch and JSON is TEXT, as in SQLite, so both backends
/// store the same values. `rowid` stands in for SQLite's implicit one: insertion order, which
/// breaks ties between sessions created in the same millisecond.
const V3: &str = r#"
CREATE TABLE sessions (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    rowid                BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
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
    heartbeat_timeout_ms BIGINT NOT NULL,
    workers_wanted       BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    started_at           BIGINT,
    completed_at         BIGINT,
    -- Counters kept in step with task states, so progress and summaries never count rows.
    total_tasks          BIGINT NOT NULL,
    succeeded_tasks      BIGINT NOT NULL DEFAULT 0,
    failed_tasks         BIGINT NOT NULL DEFAULT 0,
    skipped_tasks        BIGINT NOT NULL DEFAULT 0,
    cancelled_tasks      BIGINT NOT NULL DEFAULT 0,
    running_tasks        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_status ON sessions (status);
CREATE INDEX sessions_by_name ON sessions (name, created_at);
CREATE INDEX sessions_by_created ON sessions (created_at);

CREATE TABLE tasks (
    session_id       TEXT COLLATE "C" NOT NULL,
    id               TEXT COLLATE "C" NOT NULL,
    seq              BIGINT NOT NULL,
    run              TEXT NOT NULL,
    files            TEXT NOT NULL,
    after            TEXT NOT NULL,
    env              TEXT NOT NULL,
    timeout_ms       BIGINT,
    retries          BIGINT NOT NULL,
    state            TEXT NOT NULL,
    deps_left        BIGINT NOT NULL,
    attempt          BIGINT NOT NULL DEFAULT 0,
    failures         BIGINT NOT NULL DEFAULT 0,
    lost             BIGINT NOT NULL DEFAULT 0,
    worker_id        TEXT COLLATE "C",
    lease_expires_at BIGINT,
    exit_code        BIGINT,
    outcome          TEXT,
    started_at       BIGINT,
    finished_at      BIGINT,
    log_path         TEXT,
    blocked_by       TEXT,
    base_commit      TEXT,
    PRIMARY KEY (session_id, id)
);
-- Claiming reads only ready tasks, in plan order: a 10,000-task session claims as fast as a
-- 10-task one.
CREATE INDEX tasks_ready ON tasks (session_id, seq) WHERE state = 'ready';
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX tasks_by_seq ON tasks (session_id, seq);

CREATE TABLE task_deps (
    session_id TEXT COLLATE "C" NOT NULL,
    dep_id     TEXT COLLATE "C" NOT NULL,
    task_id    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (session_id, dep_id, task_id)
);

CREATE TABLE attempts (
    session_id  TEXT COLLATE "C" NOT NULL,
    task_id     TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    worker_id   TEXT COLLATE "C" NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    outcome     TEXT,
    exit_code   BIGINT,
    detail      TEXT NOT NULL DEFAULT '{}',
    log_path    TEXT,
    PRIMARY KEY (session_id, task_id, attempt)
);

CREATE TABLE workers (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    host                 TEXT NOT NULL,
    pid                  BIGINT NOT NULL,
    status               TEXT NOT NULL,
    session_id           TEXT COLLATE "C",
    task_session_id      TEXT COLLATE "C",
    task_id              TEXT COLLATE "C",
    attempt              BIGINT,
    task_started_at      BIGINT,
    tasks_completed      BIGINT NOT NULL DEFAULT 0,
    tasks_failed         BIGINT NOT NULL DEFAULT 0,
    started_at           BIGINT NOT NULL,
    last_heartbeat       BIGINT NOT NULL,
    heartbeat_timeout_ms BIGINT NOT NULL,
    stop_requested       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX workers_by_status ON workers (status);

CREATE TABLE locks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path        TEXT NOT NULL,
    session_id  TEXT COLLATE "C" NOT NULL,
    task_id     TEXT COLLATE "C",
    attempt     BIGINT,
    acquired_at BIGINT NOT NULL
);
CREATE INDEX locks_by_owner ON locks (session_id, task_id);

-- Writers hold the write lock from before `nextval` until commit, so `seq` follows commit
-- order; a rolled-back transaction can leave a gap, never a reordering.
CREATE TABLE events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    session_id TEXT COLLATE "C",
    task_id    TEXT COLLATE "C",
    worker_id  TEXT COLLATE "C",
    attempt    BIGINT,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_session ON events (session_id, seq);
-- Reading a task shows its scope violations and predicted conflicts: find those events of a
-- session without reading all of them.
CREATE INDEX events_notes ON events (session_id, seq)
    WHERE kind IN ('scope_violation', 'merge_conflict');
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_keep_step_with_sqlite() {
        assert_eq!(CURRENT_VERSION, crate::sqlite::CURRENT_VERSION);
        assert_eq!(MIGRATIONS.last().map(|m| m.to), Some(CURRENT_VERSION));
        for pair in MIGRATIONS.windows(2) {
            assert_eq!(pair[0].to, pair[1].from, "migrations form one chain");
        }
    }
}
