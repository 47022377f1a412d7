//! What only the SQLite backend can get wrong: files that are not br stores, stores from a newer
//! br, a store locked by another process. Each must be refused with a clear error and left
//! exactly as it was.

use std::time::Duration;

use br_store::sqlite::{CURRENT_VERSION, SqliteStore};
use br_store::{SessionFilter, Store, StoreError};

fn bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("read store file")
}

#[test]
fn store_from_a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("br.db");
    drop(SqliteStore::open(&path).expect("create"));
    {
        let conn = rusqlite::Connection::open(&path).expect("open raw");
        conn.pragma_update(None, "user_version", CURRENT_VERSION + 5)
            .expect("bump version");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL so the file is self-contained");
    }
    let before = bytes(&path);
    let err = SqliteStore::open(&path).expect_err("newer store must be refused");
    match &err {
        StoreError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (CURRENT_VERSION + 5, CURRENT_VERSION));
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("written by a newer br"), "{err}");
    assert_eq!(
        bytes(&path),
        before,
        "the newer store is left exactly as it was"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("br.db");
    let garbage = b"this is not an sqlite database, it is a text file with enough bytes \
                    in it to look like something: 0123456789abcdef0123456789abcdef"
        .repeat(20);
    std::fs::write(&path, &garbage).expect("write garbage");
    let err = SqliteStore::open(&path).expect_err("garbage must be refused");
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    assert_eq!(bytes(&path), garbage);
}

#[test]
fn someone_elses_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open raw");
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);")
            .expect("create foreign table");
    }
    let before = bytes(&path);
    let err = SqliteStore::open(&path).expect_err("a foreign database must be refused");
    assert!(err.to_string().contains("not a br store"), "{err}");
    assert_eq!(bytes(&path), before);
}

#[test]
fn a_locked_store_gives_a_busy_error_and_keeps_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("br.db");
    let store = SqliteStore::open_with(&path, Duration::from_millis(200)).expect("create");
    let holder = rusqlite::Connection::open(&path).expect("open raw");
    holder
        .execute_batch("BEGIN EXCLUSIVE;")
        .expect("take the write lock");
    let err = store
        .set_workers_wanted(&br_core::SessionId::from_string("000000000000"), 1)
        .expect_err("the write must give up");
    assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    holder.execute_batch("ROLLBACK;").expect("release");
    assert!(
        store
            .list_sessions(&SessionFilter::default())
            .expect("list")
            .is_empty()
    );
}

#[test]
fn opening_twice_migrates_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("br.db");
    let a = SqliteStore::open(&path).expect("create with its directory");
    let b = SqliteStore::open(&path).expect("open again");
    assert_eq!(a.summary().expect("summary").sessions.total, 0);
    assert_eq!(b.last_seq().expect("seq"), 0);
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, CURRENT_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
}

#[test]
fn many_processes_creating_the_same_store_at_once_all_succeed() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("br.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("every opener succeeds");
        }
    }
}

/// A store with one session whose one task failed (exit 2), as a worker records it.
fn store_with_a_failed_task(path: &std::path::Path) -> (SqliteStore, br_core::SessionId) {
    use br_core::{Outcome, Plan};
    use br_store::{Claim, ClaimRequest, NewSession, NewWorker};

    let store = SqliteStore::open(path).expect("create");
    let plan = Plan::parse(
        "name = \"old\"\nisolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"false\"\n",
        std::path::Path::new("br.toml"),
    )
    .expect("plan");
    let session = store
        .create_session(&NewSession {
            plan,
            repo_root: "/repo".into(),
            repo_id: None,
            plan_path: None,
            base_commit: None,
            workers_wanted: 1,
        })
        .expect("session");
    let worker = store
        .register_worker(&NewWorker {
            host: "box".into(),
            pid: 1,
            session: None,
            heartbeat_timeout: Duration::from_secs(30),
        })
        .expect("worker");
    let logs = path.with_file_name("logs");
    let Claim::Task(task) = store
        .claim_next_task(&ClaimRequest {
            worker: &worker,
            session: None,
            log_dir: &logs,
            repo_id: None,
            remote_only: false,
        })
        .expect("claim")
    else {
        panic!("the task is claimable");
    };
    store
        .finish_attempt(&task.lease, &Outcome::Failed { exit_code: 2 })
        .expect("finish");
    (store, session.id)
}

#[test]
fn an_outcome_no_br_writes_is_reported_as_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("br.db");
    let (store, session) = store_with_a_failed_task(&path);
    let task = br_core::TaskId::new("t").expect("id");
    assert_eq!(
        store.tasks(&session).expect("tasks")[0].outcome,
        Some(br_core::OutcomeKind::Failed)
    );
    let raw = rusqlite::Connection::open(&path).expect("open raw");
    raw.execute_batch(
        "UPDATE tasks SET outcome = 'exploded'; UPDATE attempts SET outcome = 'melted';",
    )
    .expect("damage the outcomes");
    for err in [
        store
            .tasks(&session)
            .expect_err("a task with an unknown outcome"),
        store
            .attempts(&session, &task)
            .expect_err("an attempt with an unknown outcome"),
    ] {
        assert!(matches!(err, StoreError::Damaged(_)), "{err}");
        assert!(
            err.to_string()
                .contains("column `outcome`: unknown outcome"),
            "{err}"
        );
    }
}

#[test]
fn an_event_detail_of_another_shape_comes_back_whole_and_in_words() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("br.db");
    let (store, _) = store_with_a_failed_task(&path);
    // What an older br might have written: the same kind with a field this one does not know.
    let old = r#"{"reason":"exit 2","outcome":"failed","exit_code":2,"signal":null}"#;
    let raw = rusqlite::Connection::open(&path).expect("open raw");
    raw.execute(
        "UPDATE events SET detail = ?1 WHERE kind = 'task_failed'",
        [old],
    )
    .expect("rewrite the detail");
    let events = store.events(&Default::default()).expect("events");
    let failed = events
        .iter()
        .find(|e| e.kind == br_core::EventKind::TaskFailed)
        .expect("task_failed");
    assert!(
        matches!(failed.detail, br_core::EventDetail::Raw { .. }),
        "{:?}",
        failed.detail
    );
    assert_eq!(serde_json::to_string(&failed.detail).expect("json"), old);
    let line = serde_json::to_value(br_store::view::EventView::from(failed)).expect("json");
    assert_eq!(line["detail"]["signal"], serde_json::Value::Null);
    assert_eq!(failed.detail.describe().as_deref(), Some("exit 2"));
    // Every detail the store wrote itself comes back typed.
    assert!(
        events
            .iter()
            .filter(|e| e.seq != failed.seq)
            .all(|e| !matches!(e.detail, br_core::EventDetail::Raw { .. })),
        "{events:#?}"
    );
}
