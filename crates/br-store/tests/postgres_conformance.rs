//! Runs the conformance suite on the PostgreSQL backend at `BR_TEST_POSTGRES_URL`, each check in
//! a schema of its own that is dropped afterwards. Without the variable every test says it was
//! skipped and passes (CI sets it).

use std::time::Duration;

use br_store::conformance::FreshStore;
use br_store::postgres::PostgresStore;
use br_store::{NewWorker, Store, StoreError, StoreLocation, WorkerFilter};

const URL_VAR: &str = "BR_TEST_POSTGRES_URL";

/// A fresh schema in the test database; stores opened on it see only it.
struct TempSchema {
    admin: String,
    schema: String,
    /// The server URL with `search_path` set to the schema: the plain product path.
    url: String,
}

impl TempSchema {
    /// `None` (after saying so) when no test database is configured.
    fn create() -> Option<TempSchema> {
        let Ok(admin) = std::env::var(URL_VAR) else {
            // CI must never be green by skipping: there the server is required.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {URL_VAR} is not: the PostgreSQL tests must run in CI"
            );
            println!("skipped: {URL_VAR} is not set (set it to a PostgreSQL URL to run this test)");
            return None;
        };
        let schema = format!("br_test_{:016x}", fastrand::u64(..));
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {URL_VAR}: {e}"));
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("create test schema");
        let separator = if admin.contains('?') { '&' } else { '?' };
        // The application name lets a test find the store's connections on the server.
        let url =
            format!("{admin}{separator}options=-csearch_path%3D{schema}&application_name={schema}");
        Some(TempSchema { admin, schema, url })
    }

    fn open(&self) -> Result<PostgresStore, StoreError> {
        PostgresStore::open(&self.url)
    }

    fn execute(&self, sql: &str) {
        let mut client = postgres::Client::connect(&self.admin, postgres::NoTls).expect("connect");
        client
            .batch_execute(&format!("SET search_path = {}; {sql}", self.schema))
            .expect(sql);
    }
}

impl TempSchema {
    /// Cuts every connection of the schema's stores, as a server restart would.
    fn cut_connections(&self) {
        self.execute(&format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
             WHERE application_name = '{}'",
            self.schema
        ));
    }
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        let dropped = postgres::Client::connect(&self.admin, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

impl FreshStore for TempSchema {
    fn open(&self) -> Box<dyn Store> {
        Box::new(TempSchema::open(self).expect("open postgres store"))
    }
}

/// A fresh backend, or returns from the calling test when there is no database to test on.
macro_rules! fresh_or_skip {
    () => {
        match TempSchema::create() {
            Some(schema) => move || schema,
            None => return,
        }
    };
}

br_store::conformance_tests!(fresh_or_skip!());

#[test]
fn store_url_opens_a_postgres_store() {
    let temp = fresh_or_skip!()();
    let store = StoreLocation::parse(&temp.url)
        .expect("parse")
        .open()
        .expect("open through the store URL");
    assert_eq!(store.last_seq().expect("last seq"), 0);
}

#[test]
fn store_from_a_newer_br_is_refused_untouched() {
    let temp = fresh_or_skip!()();
    drop(temp.open().expect("create"));
    temp.execute("UPDATE br_schema SET version = 99");
    match temp.open() {
        Err(StoreError::NewerSchema {
            found, supported, ..
        }) => {
            assert_eq!(found, 99);
            assert_eq!(supported, br_store::postgres::CURRENT_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    temp.execute("DO $$ BEGIN ASSERT (SELECT version FROM br_schema) = 99; END $$");
}

#[test]
fn two_stores_opening_a_fresh_schema_at_once_both_succeed() {
    let temp = fresh_or_skip!()();
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        let opened: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    temp.open()
                })
            })
            .collect();
        for handle in opened {
            let store = handle.join().expect("thread").expect("open");
            assert_eq!(store.last_seq().expect("last seq"), 0);
        }
    });
}

#[test]
fn a_lost_connection_is_replaced() {
    let temp = fresh_or_skip!()();
    let store = temp.open().expect("open");
    let new_worker = NewWorker {
        host: "test-host".into(),
        pid: 4242,
        session: None,
        heartbeat_timeout: Duration::from_secs(30),
    };
    store.register_worker(&new_worker).expect("register");
    temp.cut_connections();
    let workers = store
        .workers(&WorkerFilter::default())
        .expect("a read runs again on a new connection");
    assert_eq!(workers.len(), 1);
    temp.cut_connections();
    store
        .register_worker(&new_worker)
        .expect("a write that found its connection gone at the start runs on a new one");
    assert_eq!(
        store
            .workers(&WorkerFilter::default())
            .expect("workers")
            .len(),
        2
    );
}

#[test]
fn someone_elses_tables_are_not_taken_over() {
    let temp = fresh_or_skip!()();
    temp.execute("CREATE TABLE sessions (id INTEGER)");
    match temp.open() {
        Err(StoreError::NotAStore { .. }) => {}
        other => panic!("expected NotAStore, got {other:?}"),
    }
}

#[test]
fn unreachable_server_names_the_redacted_url() {
    // Port 1 on loopback: refused at once, no network involved.
    let url = "postgres://br:secret@127.0.0.1:1/br?connect_timeout=5";
    let err = PostgresStore::open(url).expect_err("nothing listens on port 1");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        message.contains("postgres://br:***@127.0.0.1:1/br"),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
}

#[test]
fn tls_settings_that_cannot_be_carried_out_are_refused_with_a_reason() {
    for (query, says) in [
        (
            "sslmode=maybe",
            "expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert /nonexistent/ca.pem",
        ),
    ] {
        let err = PostgresStore::open(&format!("postgres://br@127.0.0.1:1/br?{query}"))
            .expect_err("refused");
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[test]
fn a_busy_store_gives_up_after_the_busy_timeout() {
    let temp = fresh_or_skip!()();
    drop(temp.open().expect("create"));
    let store = PostgresStore::open_with(&temp.url, Duration::from_millis(200)).expect("open");
    // Another process holds the tables longer than the store is willing to wait.
    let mut holder = postgres::Client::connect(&temp.url, postgres::NoTls).expect("connect");
    let mut tx = holder.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let err = store
        .set_workers_wanted(&br_core::SessionId::from_string("none"), 1)
        .expect_err("the table is locked");
    assert!(err.is_transient(), "{err:?}");
    tx.rollback().expect("rollback");
}
