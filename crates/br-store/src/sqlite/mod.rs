//! The embedded backend: one SQLite file in WAL mode, shared by every br process on the machine.
//! Writes run in `BEGIN IMMEDIATE` transactions, so writers queue on SQLite's lock (with
//! `busy_timeout`) instead of failing halfway, and event `seq` follows commit order. The store's
//! logic is `crate::sql`'s; this module opens the file, migrates it, runs transactions and binds
//! values.

mod schema;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use br_core::Timestamp;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::Access;
use crate::error::{Result, StoreError};
use crate::sql::{Backend, Db, OpError, OpResult, Param, Row, Tx, Value};

pub use schema::CURRENT_VERSION;

/// How long a write waits for another process's transaction before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `wait_for_change` looks at SQLite's change counter: first after `CHANGE_POLL`, then
/// less often the longer nothing changes, up to `CHANGE_POLL_MAX`. A look is cheap (no I/O beyond
/// the shared-memory index), but a store that stays quiet for minutes — an idle worker, an open
/// dashboard — should not cost hundreds of wake-ups a second; while things happen, a waiter
/// notices a change within a few milliseconds.
const CHANGE_POLL: Duration = Duration::from_millis(3);
const CHANGE_POLL_MAX: Duration = Duration::from_millis(25);

/// How long an empty store file may stay empty before it counts as not a store: another br
/// that just created it writes the schema within milliseconds.
const NEW_FILE_GRACE: Duration = Duration::from_secs(2);

/// Why a store file cannot be used.
enum FileCheck {
    Io(std::io::Error),
    Empty,
}

/// How many prepared statements a connection keeps: more than the store's logic has, so none
/// is prepared twice.
const STATEMENT_CACHE: usize = 256;

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    busy_timeout: Duration,
    /// `PRAGMA data_version` when `wait_for_change` last returned.
    seen_version: AtomicI64,
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(Box::new(e))
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Integer(n) => ValueRef::Integer(n),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// A column's value. The schema stores only integers, text, bytes and NULL; anything else (a
/// value some other program wrote) is kept as text, so reading it as the model's type reports
/// the column as damaged.
fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Integer(n),
        ValueRef::Text(bytes) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
        ValueRef::Real(f) => Value::Text(f.to_string()),
    }
}

/// The store's logic runs on a connection inside the transaction `read` or `write` began.
/// Statements are prepared once per connection (`prepare_cached`).
impl Db for Connection {
    fn query(&self, sql: &str, params: &[Param<'_>]) -> OpResult<Vec<Row>> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns: Rc<[Box<str>]> = stmt.column_names().into_iter().map(Box::from).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            // Sized up front: collecting fallible items would grow it a few times per row.
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                values.push(value(row.get_ref(i)?));
            }
            out.push(Row::new(columns.clone(), values));
        }
        Ok(out)
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&Row) -> OpResult<()>,
    ) -> OpResult<()> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns: Rc<[Box<str>]> = stmt.column_names().into_iter().map(Box::from).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        // One row's worth of values, refilled for each row.
        let mut current = Row::new(columns.clone(), Vec::with_capacity(columns.len()));
        while let Some(row) = rows.next()? {
            let values = current.values_mut();
            values.clear();
            for i in 0..columns.len() {
                values.push(value(row.get_ref(i)?));
            }
            each(&current)?;
        }
        Ok(())
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> OpResult<u64> {
        let changed = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }
}

/// The busy timeout of this process's stores, for [`retry_while_busy`] (a plain function
/// pointer, so it cannot carry the value itself). One process uses one timeout.
static BUSY_TIMEOUT_US: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(10_000_000);

/// How long the `n`th retry waits. SQLite's own handler sleeps 1, 2, 5, 10… ms, which under a
/// few busy workers costs more than the transactions themselves (they take tens of
/// microseconds); retrying sooner at first keeps per-task overhead low.
fn busy_wait_us(n: u64) -> u64 {
    (50 * (n + 1)).min(2_000)
}

/// SQLite calls this while another connection holds the lock; `false` gives up (SQLITE_BUSY).
fn retry_while_busy(attempts: i32) -> bool {
    let n = u64::try_from(attempts).unwrap_or(0);
    let waited: u64 = (0..n).map(busy_wait_us).sum();
    if waited >= BUSY_TIMEOUT_US.load(Ordering::Relaxed) {
        return false;
    }
    std::thread::sleep(Duration::from_micros(busy_wait_us(n)));
    true
}

fn clock_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens the store at `path`, creating it (and its directory) if needed, and migrates it to
    /// the current schema. A store from a newer br is refused before anything is written.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Self> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| {
            if crate::disk_full(path) {
                StoreError::Full {
                    path: path.to_path_buf(),
                    source,
                }
            } else {
                StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| open_err(Box::new(e)))?;
        }
        let created = Self::create_or_check_file(path).map_err(|e| match e {
            FileCheck::Io(e) => open_err(Box::new(e)),
            FileCheck::Empty => StoreError::NotAStore {
                path: path.to_path_buf(),
                source: "the file is empty: br makes a new store only where no file exists \
                         (remove the empty file to start a new store there)"
                    .into(),
            },
        })?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Self::open_file(path, flags, busy_timeout, Access::ReadWrite, open_err)
            .map(|(store, _)| store);
        let empty = || std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
        if created && matches!(opened, Err(StoreError::Full { .. })) && empty() {
            // A store this call began and could not write on a full disk is no store: leave no
            // empty file behind, which the next open would rightly refuse.
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(name));
            }
        }
        opened
    }

    /// Opens the store at `path` to read it, changing nothing: `None` where there is no store
    /// yet (no file, or one never initialised). A store of an older schema is refused rather
    /// than migrated: commands that write upgrade it.
    pub fn open_to_read(path: &Path, busy_timeout: Duration) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let open_err = |source: crate::error::BackendError| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        Self::create_or_check_file(path).map_err(|e| match e {
            FileCheck::Io(e) => open_err(Box::new(e)),
            FileCheck::Empty => StoreError::NotAStore {
                path: path.to_path_buf(),
                source: "the file is empty".into(),
            },
        })?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let (store, initialised) =
            Self::open_file(path, flags, busy_timeout, Access::Read, open_err)?;
        Ok(initialised.then_some(store))
    }

    /// An empty store in memory, shown as `label`: what a reading command reads where no store
    /// exists yet, without making one.
    pub fn empty(label: &Path) -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| StoreError::Open {
            path: label.to_path_buf(),
            source: Box::new(e),
        })?;
        let store = SqliteStore {
            path: label.to_path_buf(),
            conn: Mutex::new(conn),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            seen_version: AtomicI64::new(-1),
        };
        store.prepare(Access::ReadWrite)?;
        Ok(store)
    }

    /// Opens and prepares the file: the store, and whether it holds br's schema (reading, it
    /// may not).
    fn open_file(
        path: &Path,
        flags: OpenFlags,
        busy_timeout: Duration,
        access: Access,
        open_err: impl Fn(crate::error::BackendError) -> StoreError,
    ) -> Result<(Self, bool)> {
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(Box::new(e)))?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            busy_timeout,
            seen_version: AtomicI64::new(-1),
        };
        // Until a new file is in WAL mode, two processes initialising it at once can deadlock on
        // the lock upgrade, and SQLite then answers BUSY at once, without its busy handler.
        // Initialising is idempotent, so try again until the busy timeout.
        let deadline = Instant::now() + busy_timeout;
        let initialised = loop {
            match store.prepare(access) {
                Err(StoreError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(fastrand::u64(2..20)));
                }
                Err(e) => return Err(e),
                Ok(initialised) => break initialised,
            }
        };
        // Changes are watched from the moment the store is opened: a caller whose first wait
        // comes later must still see what changed in between.
        let opened_at = {
            let conn = store.lock_conn();
            conn.prepare_cached("PRAGMA data_version")
                .and_then(|mut stmt| stmt.query_row([], |r| r.get::<_, i64>(0)))
                .map_err(|e| store.sql_error("watch the store", e))?
        };
        store.seen_version.store(opened_at, Ordering::Relaxed);
        Ok((store, initialised))
    }

    /// Makes a new store file readable by the user only (SQLite gives its WAL and shared-memory
    /// files the same mode), or checks an existing one is not empty: an empty file is not a
    /// store, and silently making one of it could hide a lost store. A file another br has just
    /// created is empty for a moment, until it writes the schema: wait that out.
    fn create_or_check_file(path: &Path) -> std::result::Result<bool, FileCheck> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FileCheck::Io(e)),
        }
        let deadline = Instant::now() + NEW_FILE_GRACE;
        loop {
            let len = std::fs::metadata(path).map_err(FileCheck::Io)?.len();
            if len > 0 {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                return Err(FileCheck::Empty);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the schema and, to write, initialises or migrates it. Whether the store holds br's
    /// schema now (reading an uninitialised file, it does not).
    fn prepare(&self, access: Access) -> Result<bool> {
        let mut conn = self.lock_conn();
        let ctx = "open the store";
        BUSY_TIMEOUT_US.store(
            u64::try_from(self.busy_timeout.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        conn.busy_handler(Some(retry_while_busy))
            .map_err(|e| self.sql_error(ctx, e))?;
        // Every statement of the store's logic goes through the cache, and a claim alone runs
        // more distinct statements than rusqlite's default of 16 keeps.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Read the version before writing anything: a newer store must stay untouched. One
        // statement reads the version and the table count from the same snapshot: another br
        // creating this store at the same moment must not look like someone else's tables.
        let (version, tables): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql_error(ctx, e))?;
        if version > CURRENT_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: version,
                supported: CURRENT_VERSION,
            });
        }
        if version == 0 {
            // An empty file is ours to initialise; someone else's database is not.
            if tables > 0 {
                return Err(StoreError::NotAStore {
                    path: self.path.clone(),
                    source: "it is an SQLite database with tables that br did not create".into(),
                });
            }
        }
        if access == Access::Read {
            if version > 0 && version < CURRENT_VERSION {
                return Err(StoreError::OlderSchema {
                    path: self.path.clone(),
                    found: version,
                    supported: CURRENT_VERSION,
                });
            }
            return Ok(version > 0);
        }
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.sql_error(ctx, e))?;
        // NORMAL in WAL mode: a commit survives any process crash; only a power loss can drop
        // the last transactions, and never corrupts the file.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sql_error(ctx, e))?;
        // Checkpoint every 4,000 pages of WAL (16 MB) instead of 1,000: each checkpoint syncs the
        // file, and a fleet of short tasks writes a few pages per task.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)
            .map_err(|e| self.sql_error(ctx, e))?;
        if version < CURRENT_VERSION {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.sql_error(ctx, e))?;
            // Another process may have migrated while we waited for the lock.
            let version: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| self.sql_error(ctx, e))?;
            for (i, sql) in schema::MIGRATIONS
                .iter()
                .enumerate()
                .skip(version.max(0) as usize)
            {
                tx.execute_batch(sql)
                    .map_err(|e| self.sql_error("migrate the store", e))?;
                tx.pragma_update(None, "user_version", i as i64 + 1)
                    .map_err(|e| self.sql_error("migrate the store", e))?;
            }
            tx.commit()
                .map_err(|e| self.sql_error("migrate the store", e))?;
        }
        Ok(true)
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves no half-done transaction behind (rusqlite
        // rolls back on drop), so a poisoned lock is safe to reuse.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sql_error(&self, context: &'static str, e: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    return StoreError::Busy {
                        path: self.path.clone(),
                        waited: self.busy_timeout,
                    };
                }
                ErrorCode::DiskFull => {
                    return StoreError::Full {
                        path: self.path.clone(),
                        source: Box::new(e),
                    };
                }
                // Growing the WAL or its shared-memory index on a full disk fails as an I/O
                // error, not as SQLITE_FULL.
                ErrorCode::SystemIoFailure if crate::disk_full(&self.path) => {
                    return StoreError::Full {
                        path: self.path.clone(),
                        source: Box::new(e),
                    };
                }
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                    return StoreError::NotAStore {
                        path: self.path.clone(),
                        source: Box::new(e),
                    };
                }
                _ => {}
            }
        }
        StoreError::Backend {
            context,
            source: Box::new(e),
        }
    }

    fn op_error(&self, context: &'static str, e: OpError) -> StoreError {
        match e {
            OpError::Sql(e) => match e.downcast::<rusqlite::Error>() {
                Ok(e) => self.sql_error(context, *e),
                Err(source) => StoreError::Backend { context, source },
            },
            OpError::Store(e) => e,
        }
    }
}

/// A write transaction that has begun and not committed: dropping it rolls back.
struct OpenTransaction<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // After a failed COMMIT, SQLite may have rolled back already; either way the
        // connection is left with no transaction open.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Backend for SqliteStore {
    /// `BEGIN IMMEDIATE`: the write lock is taken at once, so writers queue on it (with the busy
    /// handler) instead of failing halfway when a read turns into a write.
    fn write<T>(&self, context: &'static str, f: impl FnOnce(&Tx<'_>) -> OpResult<T>) -> Result<T> {
        let conn = self.lock_conn();
        // BEGIN and COMMIT as cached statements: `execute_batch` would parse them anew for every
        // transaction, a measurable part of a short task's cost.
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        run("BEGIN IMMEDIATE").map_err(|e| self.sql_error(context, e))?;
        // Rolls back unless committed, on every way out (an error, a panic).
        let mut open = OpenTransaction {
            conn: &conn,
            committed: false,
        };
        let tx = Tx::new(&*conn, clock_now());
        let out = f(&tx)
            .and_then(|out| tx.close().map(|_| out))
            .map_err(|e| self.op_error(context, e))?;
        run("COMMIT").map_err(|e| self.sql_error(context, e))?;
        open.committed = true;
        Ok(out)
    }

    fn read<T>(&self, context: &'static str, f: impl Fn(&dyn Db) -> OpResult<T>) -> Result<T> {
        let mut conn = self.lock_conn();
        let tx = conn.transaction().map_err(|e| self.sql_error(context, e))?;
        let out = f(&*tx).map_err(|e| self.op_error(context, e))?;
        // Nothing to keep: ending a read transaction either way releases its snapshot.
        drop(tx);
        Ok(out)
    }

    /// The machine's clock: every process sharing the file runs on this machine.
    fn clock(&self, _db: &dyn Db) -> OpResult<i64> {
        Ok(clock_now())
    }

    fn now(&self) -> Result<Timestamp> {
        Ok(Timestamp(clock_now()))
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let version = || -> Result<i64> {
            let conn = self.lock_conn();
            conn.prepare_cached("PRAGMA data_version")
                .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
                .map_err(|e| self.sql_error("watch the store", e))
        };
        let mut seen = self.seen_version.load(Ordering::Relaxed);
        if seen < 0 {
            // First call: nothing to compare with yet; watch from here.
            seen = version()?;
            self.seen_version.store(seen, Ordering::Relaxed);
        }
        let mut pause = CHANGE_POLL;
        loop {
            let current = version()?;
            if current != seen {
                self.seen_version.store(current, Ordering::Relaxed);
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(pause));
            pause = (pause * 3 / 2).min(CHANGE_POLL_MAX);
        }
    }
}
