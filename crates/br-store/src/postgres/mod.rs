//! The shared backend: all state in one PostgreSQL schema (the first existing schema of the
//! connection's `search_path`), so workers on several machines share one session. Every write
//! transaction first takes one transaction-scoped advisory lock, so writers queue one at a time
//! like SQLite's `BEGIN IMMEDIATE`, and event `seq` follows commit order. Time is the database
//! server's clock. The store's logic is `crate::sql`'s, the same for both backends; this module
//! connects, migrates, runs transactions (reconnecting when a connection is lost), translates
//! each statement once and binds values. Every round trip has a deadline (`link.rs`), so a
//! server that stops answering is an error, never a hang.

mod link;
mod pgpass;
mod schema;
mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use br_core::Timestamp;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Config, Statement};

use self::link::{Link, LinkError};

use crate::Access;
use crate::error::{Result, StoreError};
use crate::sql::{
    Backend, Db, EVENT_INSERT, OpError, OpResult, Param, Row, Serial, Tx, Value, event_rows, millis,
};

pub use schema::CURRENT_VERSION;

/// How long a write waits for another process's transaction before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting may take when the URL does not say (`connect_timeout`): an unreachable
/// host otherwise hangs for the operating system's TCP timeout, minutes.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than the busy timeout one round trip may take before the connection is
/// given up as lost. A statement may wait up to the busy timeout for the write lock on the
/// server; beyond that and this slack, no answer means no server (or no network).
const IO_SLACK: Duration = Duration::from_secs(10);

/// The first half of the advisory lock key that orders writers: most take it exclusively and
/// run one at a time, as under SQLite's `BEGIN IMMEDIATE`; claims, completions and heartbeats
/// take it shared and run side by side (see [`WriteOrder`]). The second half of every key names
/// the schema, so stores in different schemas of one database do not wait for each other.
const WRITE_LOCK_SPACE: i32 = 0x6272_0001; // "br", 1

/// The first half of the key held while a transaction appends its events, to its commit, so
/// that `seq` follows commit order (`PgTx::append_events_sql`).
const EVENT_LOCK_SPACE: i32 = 0x6272_0002;

/// The first half of the key held while a claim checks a task's files against the held locks
/// and takes them ([`Serial::LockSets`]); the second half names the schema and the repository.
const LOCK_SET_SPACE: i32 = 0x6272_0003;

/// The first half of the key held while a claim counts a pool's running tasks and starts one
/// ([`Serial::Pool`]); the second half names the schema and the pool.
const POOL_LOCK_SPACE: i32 = 0x6272_0004;

/// How many statements wait to be sent with the next one at most (`PgTx::execute_later`).
const MAX_PENDING: usize = 16;

/// How many times a write that runs beside others is tried again when the server broke a
/// deadlock or a serialization conflict by failing it (nothing of it was committed).
const CONFLICT_RETRIES: u32 = 5;

/// The channel on which every write transaction that changed something notifies, with the
/// schema's name as payload.
const CHANGE_CHANNEL: &str = "br_change";

/// The store's clock in milliseconds since the epoch. `clock_timestamp()`, not `now()`: a write
/// reads it after waiting for the write lock, so time follows commit order as in SQLite.
const CLOCK_MS: &str = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The write lock (`?1`, `?2`), then the clock, in one round trip: the clock is read in the
/// row the lock's subquery yields, so after the lock is ours.
const CLOCK_AFTER_LOCK: &str = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
     FROM (SELECT pg_advisory_xact_lock(?1, ?2)) AS l";
const CLOCK_AFTER_SHARED_LOCK: &str =
    "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
     FROM (SELECT pg_advisory_xact_lock_shared(?1, ?2)) AS l";

/// How a write orders itself with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteOrder {
    /// Alone: no other write of the store runs meanwhile (everything but the hot path, whose
    /// logic was written for a store that changes only by its own hand).
    Exclusive,
    /// Beside the other shared writes, never beside an exclusive one: claims, completions and
    /// heartbeats, whose logic holds under concurrency by row locks, guarded updates and
    /// [`Serial`] sections (see `Backend::write_shared`).
    Shared,
    /// Beside everything: rows only their writer reads, such as the pieces of an attempt's log.
    Apart,
}

/// The PostgreSQL store.
pub struct PostgresStore {
    /// The URL with its password hidden: how messages name this store.
    url: String,
    config: Config,
    /// TLS as the URL's `sslmode` asks.
    tls: tls::Tls,
    /// The schema the tables live in (`current_schema()` when opened).
    schema: String,
    write_lock_key: i32,
    busy_timeout: Duration,
    /// The longest one round trip may take before the connection counts as lost.
    io_timeout: Duration,
    /// `None` after the connection was lost; the next operation connects again.
    conn: Mutex<Option<Connection>>,
    /// A second connection that LISTENs, opened by the first `wait_for_change`.
    listener: Mutex<Option<Connection>>,
    /// The server process of `conn`, whose own notifications the listener ignores.
    writer_pid: AtomicI32,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("busy_timeout", &self.busy_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection with the statements prepared on it, so each query is one round trip.
struct Connection {
    link: Link,
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Connection {
    fn is_usable(&self) -> bool {
        !self.link.is_broken() && !self.client.is_closed()
    }
}

impl From<LinkError> for OpError {
    fn from(e: LinkError) -> Self {
        OpError::Sql(Box::new(e))
    }
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Sql(Box::new(LinkError::Pg(e)))
    }
}

/// The link's error inside `e`, if it is one.
fn link_error(e: &OpError) -> Option<&LinkError> {
    match e {
        OpError::Sql(e) => e.downcast_ref(),
        OpError::Store(_) => None,
    }
}

/// Whether `e` means the connection is gone: the operation may be tried on a new one.
fn lost(e: &OpError) -> bool {
    link_error(e).is_some_and(LinkError::lost)
}

/// The shared SQL in PostgreSQL's words: `?N` placeholders become `$N`, and SQLite's
/// `INDEXED BY name` planner hints go (PostgreSQL plans by its statistics). Quoted text and
/// quoted names are copied as they are.
fn to_postgres(sql: &str) -> String {
    const HINT: &str = "INDEXED BY";
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match quote {
            // A doubled quote inside quotes ends and reopens them: the same text either way.
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' && after.starts_with(|d: char| d.is_ascii_digit()) => {
                out.push('$');
                rest = after;
                continue;
            }
            None if rest
                .get(..HINT.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(HINT))
                && !out.ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_') =>
            {
                let name = rest[HINT.len()..].trim_start();
                let end = name
                    .find(|n: char| !(n.is_ascii_alphanumeric() || n == '_'))
                    .unwrap_or(name.len());
                rest = &name[end..];
                continue;
            }
            None => {}
        }
        out.push(c);
        rest = after;
    }
    out
}

/// A parameter as the driver sends it: PostgreSQL types every parameter of a prepared statement,
/// so the store's integers go as the integer type or the boolean it expects. Owned, so that a
/// statement sent later (`execute_later`) outlives the logic's borrowed values.
fn bind(param: Param<'_>, ty: &Type) -> OpResult<Bound> {
    Ok(match param {
        Param::Null if *ty == Type::BOOL => Box::new(None::<bool>),
        Param::Null if *ty == Type::INT4 => Box::new(None::<i32>),
        Param::Null if *ty == Type::INT8 => Box::new(None::<i64>),
        Param::Null => Box::new(None::<String>),
        Param::Integer(n) if *ty == Type::BOOL => Box::new(n != 0),
        Param::Integer(n) if *ty == Type::INT4 => {
            Box::new(i32::try_from(n).map_err(|e| OpError::Sql(Box::new(e)))?)
        }
        Param::Integer(n) => Box::new(n),
        Param::Text(s) => Box::new(s.to_owned()),
        Param::Blob(b) => Box::new(b.to_vec()),
    })
}

/// One bound parameter.
type Bound = Box<dyn ToSql + Sync + Send>;

/// A column as the store's logic reads it: integers and booleans as integers (as SQLite keeps
/// them), bytes as bytes, everything textual as text.
impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(if *ty == Type::INT8 {
            Value::Integer(i64::from_sql(ty, raw)?)
        } else if *ty == Type::INT4 {
            Value::Integer(i32::from_sql(ty, raw)?.into())
        } else if *ty == Type::BOOL {
            Value::Integer(bool::from_sql(ty, raw)?.into())
        } else if *ty == Type::BYTEA {
            Value::Blob(raw.to_vec())
        } else {
            Value::Text(String::from_sql(ty, raw)?)
        })
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT8, Type::INT4, Type::BOOL, Type::BYTEA].contains(ty)
            || <String as FromSql>::accepts(ty)
    }
}

/// How a write transaction begins: READ COMMITTED, not a snapshot level, so each statement
/// after a lock sees what the writer before it committed, as in SQLite.
const BEGIN_WRITE: &str = "BEGIN";

/// How a read begins: one snapshot for all its statements, never blocking a writer.
const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// One transaction on the connection, as the store's logic sees it ([`Db`]). Methods take
/// `&self`, as rusqlite's do, hence the cells. BEGIN goes with the transaction's first
/// statement and COMMIT with its last deferred ones, each one round trip fewer; dropped
/// without [`PgTx::commit`], it rolls back.
struct PgTx<'c> {
    link: RefCell<&'c mut Link>,
    client: &'c Client,
    statements: RefCell<&'c mut HashMap<String, Statement>>,
    /// The store's schema: the second half of its lock keys, and what its notifications say.
    schema: &'c str,
    /// Statements sent with the next one (`execute_later`, and BEGIN), in order.
    pending: RefCell<Vec<(Statement, Vec<Bound>)>>,
    /// Whether BEGIN was sent, so that a drop has something to roll back.
    begun: std::cell::Cell<bool>,
    committed: bool,
}

impl<'c> PgTx<'c> {
    /// A transaction that begins as `begin` says with its first statement.
    fn begin(
        link: &'c mut Link,
        client: &'c Client,
        statements: &'c mut HashMap<String, Statement>,
        schema: &'c str,
        begin: &str,
    ) -> std::result::Result<Self, LinkError> {
        let tx = PgTx {
            link: RefCell::new(link),
            client,
            statements: RefCell::new(statements),
            schema,
            pending: RefCell::default(),
            begun: std::cell::Cell::new(false),
            committed: false,
        };
        let stmt = tx.statement(begin)?;
        tx.pending.borrow_mut().push((stmt, Vec::new()));
        Ok(tx)
    }

    /// Runs `last` after every pending statement, all sent at once: one round trip for them
    /// all. The server runs them in order; the first error fails the lot.
    fn with_pending<T>(
        &self,
        last: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> std::result::Result<T, LinkError> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return self.link.borrow_mut().run(last);
        }
        self.begun.set(true);
        let client = self.client;
        let sent = futures_util::future::try_join_all(
            pending
                .iter()
                .map(|(stmt, bound)| async move { client.execute(stmt, &refs(bound)).await }),
        );
        self.link
            .borrow_mut()
            .run(async move { futures_util::future::try_join(sent, last).await })
            .map(|(_, out)| out)
    }

    /// Takes a transaction-scoped advisory lock, exclusive or shared.
    fn advisory(&self, space: i32, key: i32, shared: bool) -> OpResult<()> {
        let sql = if shared {
            "SELECT pg_advisory_xact_lock_shared(?1, ?2)"
        } else {
            "SELECT pg_advisory_xact_lock(?1, ?2)"
        };
        self.execute(
            sql,
            &[Param::Integer(space.into()), Param::Integer(key.into())],
        )?;
        Ok(())
    }

    /// The prepared statement for `sql`, translated and prepared the first time. Prepared
    /// statements belong to the connection, not the transaction, so a rollback does not lose
    /// them.
    fn statement(&self, sql: &str) -> std::result::Result<Statement, LinkError> {
        if let Some(stmt) = self.statements.borrow().get(sql) {
            return Ok(stmt.clone());
        }
        let translated = to_postgres(sql);
        let stmt = self
            .link
            .borrow_mut()
            .run(self.client.prepare(&translated))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// The statement for `sql` with `params` bound to its parameter types.
    fn bound(&self, sql: &str, params: &[Param<'_>]) -> OpResult<(Statement, Vec<Bound>)> {
        let stmt = self.statement(sql)?;
        let bound = params
            .iter()
            .zip(stmt.params())
            .map(|(p, ty)| bind(*p, ty))
            .collect::<OpResult<_>>()?;
        Ok((stmt, bound))
    }

    /// Statements without parameters, in one round trip (migrations).
    fn batch(&self, sql: &str) -> OpResult<()> {
        Ok(self.with_pending(self.client.batch_execute(sql))?)
    }

    /// Commits, with whatever statements still wait to be sent.
    fn commit(mut self) -> std::result::Result<(), LinkError> {
        let commit = self.statement("COMMIT")?;
        self.with_pending(self.client.execute(&commit, &[]))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        // A transaction the server saw and that did not commit is rolled back now, so the
        // connection is ready for the next one. Where the connection broke, it is dropped and
        // the server rolls back on its own.
        let link = self.link.get_mut();
        if self.begun.get() && !self.committed && !link.is_broken() {
            let _ = link.run(self.client.batch_execute("ROLLBACK"));
        }
    }
}

/// The parameters as the driver takes them.
fn refs(bound: &[Bound]) -> Vec<&(dyn ToSql + Sync)> {
    bound.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

impl Db for PgTx<'_> {
    /// One statement that takes the event lock (held to commit, so `seq` follows commit order),
    /// notifies the listeners and appends the events: the section every evented write waits for
    /// is this statement and the commit. Every change that makes work claimable or that a
    /// dashboard shows comes with an event, while a heartbeat, a renewal or a claim that found
    /// nothing must not wake every idle worker; NOTIFY is delivered at commit, not on rollback.
    /// Every appended row comes out of the join with the lock's one row, so the lock is held
    /// before any `seq` is drawn.
    fn append_events_sql(&self, rows: usize) -> String {
        format!(
            "INSERT INTO {EVENT_INSERT}
             SELECT v.* FROM
                 (SELECT pg_advisory_xact_lock({EVENT_LOCK_SPACE}, {key}),
                         pg_notify('{CHANGE_CHANNEL}', {schema})) AS l,
                 (VALUES {values}) AS v
             RETURNING seq",
            key = schema_lock_key(self.schema),
            schema = quote_literal(self.schema),
            values = event_rows(rows, "::bigint,::text,::text,::text,::text,::bigint,::text"),
        )
    }

    fn row_locks(&self, of: &str, skip_locked: bool) -> String {
        let skip = if skip_locked { " SKIP LOCKED" } else { "" };
        format!(" FOR UPDATE OF {of}{skip}")
    }

    fn serialize(&self, what: Serial<'_>) -> OpResult<()> {
        match what {
            Serial::LockSets(repo) => self.advisory(
                LOCK_SET_SPACE,
                schema_lock_key(&format!("{}\0{}", self.schema, repo.unwrap_or_default())),
                false,
            ),
            Serial::Pool(pool) => self.advisory(
                POOL_LOCK_SPACE,
                schema_lock_key(&format!("{}\0{pool}", self.schema)),
                false,
            ),
        }
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> OpResult<Vec<Row>> {
        let (stmt, bound) = self.bound(sql, params)?;
        let params = refs(&bound);
        let rows = self.with_pending(self.client.query(&stmt, &params))?;
        let columns: Rc<[Box<str>]> = stmt.columns().iter().map(|c| c.name().into()).collect();
        rows.iter()
            .map(|r| {
                let values = (0..columns.len())
                    .map(|i| r.try_get(i))
                    .collect::<std::result::Result<_, _>>()?;
                Ok(Row::new(columns.clone(), values))
            })
            .collect()
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> OpResult<u64> {
        let (stmt, bound) = self.bound(sql, params)?;
        let params = refs(&bound);
        Ok(self.with_pending(self.client.execute(&stmt, &params))?)
    }

    fn execute_later(&self, sql: &str, params: &[Param<'_>]) -> OpResult<()> {
        let bound = self.bound(sql, params)?;
        let queued = {
            let mut pending = self.pending.borrow_mut();
            pending.push(bound);
            pending.len()
        };
        // `try_join_all` polls (so sends) in order only up to this many; beyond, send now.
        if queued >= MAX_PENDING {
            self.with_pending(async { Ok(()) })?;
        }
        Ok(())
    }
}

/// What went wrong in one try of a write.
enum Failure {
    /// Starting the transaction failed: nothing of the operation was sent.
    Begin(LinkError),
    Op(OpError),
}

/// Whether `e` means the connection is gone (the server restarted, a proxy cut it, the network
/// failed), as opposed to the database refusing a statement.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|code| {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        })
        || std::error::Error::source(e)
            .is_some_and(<dyn std::error::Error + 'static>::is::<std::io::Error>)
}

/// Whether the server failed `e`'s transaction to break a deadlock or a serialization
/// conflict with another: it was rolled back whole, and may run again.
fn conflicted(e: &OpError) -> bool {
    matches!(link_error(e), Some(LinkError::Pg(pg)) if pg.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    }))
}

/// Whether a failed BEGIN may be sent again on a new connection: anything but the database
/// refusing it, since a BEGIN that did not run changed nothing.
fn may_begin_again(e: &LinkError) -> bool {
    match e {
        LinkError::Pg(e) => e.as_db_error().is_none() || connection_lost(e),
        _ => true,
    }
}

/// The store's clock, read inside `db`'s transaction.
fn clock_now(db: &dyn Db) -> OpResult<i64> {
    db.query_one(CLOCK_MS, &[])?.get(0)
}

/// `text` as an SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// FNV-1a: a hash that stays the same across br versions and machines, which the advisory lock
/// key of a schema must.
fn schema_lock_key(schema: &str) -> i32 {
    let hash = schema.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl PostgresStore {
    /// Opens the store at `url`, creating its tables in the connection's current schema if
    /// needed, and migrates it to the current schema. A store from a newer br is refused before
    /// anything is written.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, DEFAULT_BUSY_TIMEOUT)
    }

    pub fn open_with(url: &str, busy_timeout: Duration) -> Result<Self> {
        Ok(
            Self::open_with_access(url, busy_timeout, Access::ReadWrite)?
                .expect("opened to write, a store is initialised"),
        )
    }

    /// Opens the store at `url` to read it, creating and migrating nothing: `None` where the
    /// schema holds no br store yet. A store of an older schema is refused.
    pub fn open_to_read(url: &str, busy_timeout: Duration) -> Result<Option<Self>> {
        Self::open_with_access(url, busy_timeout, Access::Read)
    }

    fn open_with_access(url: &str, busy_timeout: Duration, access: Access) -> Result<Option<Self>> {
        let shown = crate::redact_password(url);
        let unsupported = |reason: String| StoreError::UnsupportedUrl {
            url: shown.clone(),
            reason,
        };
        // The driver knows neither the verifying modes nor `sslrootcert`: they are taken out
        // and carried out by br's connector (tls.rs).
        let split = tls::split_url(url).map_err(&unsupported)?;
        let tls = tls::connector(split.mode, split.root_cert.as_deref()).map_err(&unsupported)?;
        let mut config: Config = split.url.parse().map_err(|e: tokio_postgres::Error| {
            let why = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            unsupported(format!("not a PostgreSQL connection URL ({e}{why})"))
        })?;
        config.ssl_mode(tls::driver_mode(split.mode));
        // A URL without a password: libpq's places for one.
        if let Some(password) = pgpass::password_for(&config) {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("br");
        }
        let io_timeout = busy_timeout + IO_SLACK;
        // A network that drops packets (rather than a peer that holds them) is noticed by the
        // kernel too, and the listening connection, which sends nothing, by keepalives.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(io_timeout);
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let mut store = PostgresStore {
            url: shown,
            config,
            tls,
            schema: String::new(),
            write_lock_key: 0,
            busy_timeout,
            io_timeout,
            conn: Mutex::new(None),
            listener: Mutex::new(None),
            writer_pid: AtomicI32::new(0),
        };
        // A connection lost while opening (a server restarting, an administrator terminating
        // it) is tried once more on a new one: opening changes nothing, or migrates in one
        // transaction, so doing it again is safe.
        match store.open_once(access) {
            Err(StoreError::Unreachable { .. }) => store.open_once(access),
            other => other,
        }
        .map(|found| found.then_some(store))
    }

    /// Connects, finds the schema and checks (or, to write, prepares) it. Whether the store
    /// holds br's schema now.
    fn open_once(&mut self, access: Access) -> Result<bool> {
        let mut conn = self.connect().map_err(|e| self.open_error(e))?;
        let schema: Option<String> = conn
            .query_one("SELECT current_schema()")
            .and_then(|r| r.try_get(0).map_err(LinkError::Pg))
            .map_err(|e| self.open_error(e))?;
        self.schema = schema.ok_or_else(|| StoreError::Open {
            path: self.path(),
            source: "no schema of the connection's search_path exists, so br has nowhere to \
                     keep its tables: create one or set search_path (URL option \
                     `options=-csearch_path%3DNAME`)"
                .into(),
        })?;
        self.write_lock_key = schema_lock_key(&self.schema);
        if !self.prepare(&mut conn, access)? {
            return Ok(false);
        }
        *self.lock_conn() = Some(conn);
        Ok(true)
    }

    /// The store as messages name it (its URL, password hidden), where a path is expected.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.url)
    }

    /// The schema that holds the store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn open_error(&self, e: LinkError) -> StoreError {
        StoreError::Open {
            path: self.path(),
            source: Box::new(e),
        }
    }

    fn unreachable(&self, e: LinkError) -> StoreError {
        StoreError::Unreachable {
            path: self.path(),
            source: Box::new(e),
        }
    }

    /// A new connection, set up for writes.
    fn connect(&self) -> std::result::Result<Connection, LinkError> {
        let connect_limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            + self.io_timeout;
        let (link, client) =
            Link::connect(&self.config, &self.tls, connect_limit, self.io_timeout)?;
        let mut conn = Connection {
            link,
            client,
            statements: HashMap::new(),
        };
        // A write waits this long for the write lock (lock_timeout covers advisory locks), then
        // fails with LOCK_NOT_AVAILABLE, which becomes `Busy`: SQLite's busy_timeout.
        let setup = format!("SET lock_timeout = {}", millis(self.busy_timeout).max(1));
        conn.link.run(conn.client.batch_execute(&setup))?;
        let pid: i32 = conn
            .query_one("SELECT pg_backend_pid()")?
            .try_get(0)
            .map_err(LinkError::Pg)?;
        self.writer_pid.store(pid, Ordering::Relaxed);
        Ok(conn)
    }

    /// Checks the schema and, to write, initialises or migrates it. Whether the store holds br's
    /// schema now (reading an empty schema, it does not).
    fn prepare(&self, conn: &mut Connection, access: Access) -> Result<bool> {
        let ctx = "open the store";
        // Read the version before writing anything: a newer store must stay untouched. One
        // statement lists the schema's tables, so another br creating this store at the same
        // moment (in one transaction) cannot look like someone else's tables.
        let tables: Vec<String> = conn
            .query(
                // pg_class, not information_schema: that hides tables we have no rights on.
                "SELECT c.relname::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            )
            .map_err(|e| self.sql_error(ctx, e))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.sql_error(ctx, LinkError::Pg(e)))?;
        let version = if tables.iter().any(|t| t == schema::VERSION_TABLE) {
            self.schema_version(conn)?
        } else {
            0
        };
        self.refuse_newer(version)?;
        if version == 0 {
            // An empty schema is ours to initialise; tables of someone else's are not.
            let theirs: Vec<&str> = tables
                .iter()
                .map(String::as_str)
                .filter(|t| schema::TABLES.contains(t))
                .collect();
            if !theirs.is_empty() {
                return Err(StoreError::NotAStore {
                    path: self.path(),
                    source: format!(
                        "schema `{}` has tables br did not create ({}): give br its own schema \
                         (URL option `options=-csearch_path%3DNAME`) or database",
                        self.schema,
                        theirs.join(", ")
                    )
                    .into(),
                });
            }
        }
        if access == Access::Read {
            if version > 0 && version < CURRENT_VERSION {
                return Err(StoreError::OlderSchema {
                    path: self.path(),
                    found: version,
                    supported: CURRENT_VERSION,
                });
            }
            return Ok(version > 0);
        }
        if version < CURRENT_VERSION {
            self.migrate(conn)
                .map_err(|e| self.op_error("migrate the store", e))?;
        }
        Ok(true)
    }

    fn schema_version(&self, conn: &mut Connection) -> Result<i64> {
        let sql = format!(
            "SELECT COALESCE(MAX(version), 0) FROM {}",
            schema::VERSION_TABLE
        );
        conn.query_one(&sql)
            .and_then(|r| r.try_get(0).map_err(LinkError::Pg))
            .map_err(|e| self.sql_error("read the store's version", e))
    }

    fn refuse_newer(&self, version: i64) -> Result<()> {
        if version > CURRENT_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path(),
                found: version,
                supported: CURRENT_VERSION,
            });
        }
        Ok(())
    }

    fn migrate(&self, conn: &mut Connection) -> OpResult<()> {
        let Connection {
            link,
            client,
            statements,
        } = conn;
        let db = PgTx::begin(link, client, statements, &self.schema, BEGIN_WRITE)?;
        // The write lock makes a second br opening a fresh store wait here, then find it done.
        db.execute(
            "SELECT pg_advisory_xact_lock(?1, ?2)",
            &[
                Param::Integer(WRITE_LOCK_SPACE.into()),
                Param::Integer(self.write_lock_key.into()),
            ],
        )?;
        db.batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (version BIGINT NOT NULL)",
            schema::VERSION_TABLE
        ))?;
        let version: i64 = db
            .query_one(
                &format!(
                    "SELECT COALESCE(MAX(version), 0) FROM {}",
                    schema::VERSION_TABLE
                ),
                &[],
            )?
            .get(0)?;
        self.refuse_newer(version)?;
        let pending: Vec<&schema::Migration> = schema::MIGRATIONS
            .iter()
            .filter(|m| m.to > version)
            .collect();
        if let Some(first) = pending.first()
            && first.from != version
        {
            return Err(StoreError::Damaged(format!(
                "schema version {version} is not one this br can migrate from"
            ))
            .into());
        }
        for m in pending {
            db.batch(m.sql)?;
        }
        db.batch(&format!("DELETE FROM {}", schema::VERSION_TABLE))?;
        db.batch(&format!(
            "INSERT INTO {} (version) VALUES ({CURRENT_VERSION})",
            schema::VERSION_TABLE
        ))?;
        db.commit()?;
        // The migration's statements changed the tables under any statement prepared before.
        statements.clear();
        Ok(())
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        // A panic while holding the connection leaves no half-done transaction behind (the
        // transaction rolls back on drop), so a poisoned lock is safe to reuse.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection, connecting again if the last one was lost. Failing to connect again
    /// means the server is unreachable from here for now, which callers may wait out.
    fn connected<'g>(&self, slot: &'g mut Option<Connection>) -> Result<&'g mut Connection> {
        if slot.as_ref().is_none_or(|c| !c.is_usable()) {
            *slot = None;
            *slot = Some(self.connect().map_err(|e| self.unreachable(e))?);
        }
        Ok(slot.as_mut().expect("connected above"))
    }

    fn sql_error(&self, context: &'static str, e: LinkError) -> StoreError {
        if e.lost() {
            return self.unreachable(e);
        }
        let code = match &e {
            LinkError::Pg(pg) => pg.code(),
            _ => None,
        };
        // 53100: the server could not extend a file.
        if code == Some(&SqlState::DISK_FULL) {
            return StoreError::Full {
                path: self.path(),
                source: Box::new(e),
            };
        }
        if code == Some(&SqlState::LOCK_NOT_AVAILABLE)
            || code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            || code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        {
            return StoreError::Busy {
                path: self.path(),
                waited: self.busy_timeout,
            };
        }
        StoreError::Backend {
            context,
            source: Box::new(e),
        }
    }

    fn op_error(&self, context: &'static str, e: OpError) -> StoreError {
        match e {
            OpError::Sql(e) => match e.downcast::<LinkError>() {
                Ok(e) => self.sql_error(context, *e),
                Err(source) => StoreError::Backend { context, source },
            },
            OpError::Store(e) => e,
        }
    }

    /// Runs `f` in a write transaction ordered with the others as `order` says, and commits
    /// it. `f` runs again only for a shared write the server failed to break a deadlock or a
    /// serialization conflict: that transaction was rolled back whole.
    fn write_with_retry<T>(
        &self,
        context: &'static str,
        order: WriteOrder,
        mut f: impl FnMut(&Tx<'_>) -> OpResult<T>,
    ) -> Result<T> {
        let mut slot = self.lock_conn();
        let mut reconnected = false;
        let mut conflicts = 0;
        loop {
            let conn = self.connected(&mut slot)?;
            let failure = match self.write_once(conn, order, &mut f) {
                Ok(out) => return Ok(out),
                Err(failure) => failure,
            };
            match failure {
                // Nothing was sent, so nothing can happen twice: try once on a new connection.
                Failure::Begin(e) if !reconnected && may_begin_again(&e) => {
                    *slot = None;
                    reconnected = true;
                }
                Failure::Begin(e) => return Err(self.failed(&mut slot, context, e.into())),
                Failure::Op(e)
                    if order == WriteOrder::Shared
                        && conflicts < CONFLICT_RETRIES
                        && conflicted(&e) =>
                {
                    conflicts += 1;
                    // Apart a little, so the transactions that met do not meet again.
                    std::thread::sleep(Duration::from_micros(fastrand::u64(100..2_000)));
                }
                Failure::Op(e) => return Err(self.failed(&mut slot, context, e)),
            }
        }
    }

    fn write_once<T>(
        &self,
        conn: &mut Connection,
        order: WriteOrder,
        f: &mut impl FnMut(&Tx<'_>) -> OpResult<T>,
    ) -> std::result::Result<T, Failure> {
        let Connection {
            link,
            client,
            statements,
        } = conn;
        let db = PgTx::begin(link, client, statements, &self.schema, BEGIN_WRITE)
            .map_err(Failure::Begin)?;
        // BEGIN, the write lock and the clock in one round trip, the clock read once the lock
        // is ours: time follows the order in which writers got in. Nothing of the operation
        // was sent if it fails.
        let sql = match order {
            WriteOrder::Exclusive => CLOCK_AFTER_LOCK,
            WriteOrder::Shared => CLOCK_AFTER_SHARED_LOCK,
            WriteOrder::Apart => CLOCK_MS,
        };
        let (stmt, bound) = db
            .bound(
                sql,
                &[
                    Param::Integer(WRITE_LOCK_SPACE.into()),
                    Param::Integer(self.write_lock_key.into()),
                ],
            )
            .map_err(Failure::Op)?;
        let now: i64 = db
            .with_pending(db.client.query_one(&stmt, &refs(&bound)))
            .map_err(|e| match e {
                e if e.lost() => Failure::Begin(e),
                e => Failure::Op(e.into()),
            })?
            .try_get(0)
            .map_err(|e| Failure::Op(e.into()))?;
        let mut run = || -> OpResult<T> {
            let tx = Tx::new(&db, now);
            let out = f(&tx)?;
            tx.close()?;
            Ok(out)
        };
        let out = run().map_err(Failure::Op)?;
        db.commit().map_err(|e| Failure::Op(e.into()))?;
        Ok(out)
    }

    /// Runs `f` in a read-only transaction: one consistent snapshot, never blocked by writers.
    /// Reading twice is harmless, so a read that loses its connection runs once more on a new
    /// one.
    fn read_with_retry<T>(
        &self,
        context: &'static str,
        f: impl Fn(&dyn Db) -> OpResult<T>,
    ) -> Result<T> {
        let mut slot = self.lock_conn();
        let mut reconnected = false;
        loop {
            let conn = self.connected(&mut slot)?;
            let e = match Self::read_once(conn, &self.schema, &f) {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            match e {
                e if !reconnected && lost(&e) => {
                    *slot = None;
                    reconnected = true;
                }
                e => return Err(self.failed(&mut slot, context, e)),
            }
        }
    }

    fn read_once<T>(
        conn: &mut Connection,
        schema: &str,
        f: impl Fn(&dyn Db) -> OpResult<T>,
    ) -> OpResult<T> {
        let Connection {
            link,
            client,
            statements,
        } = conn;
        let db = PgTx::begin(link, client, statements, schema, BEGIN_READ)?;
        let out = f(&db)?;
        db.commit()?;
        Ok(out)
    }

    /// The error for a failed operation. A lost connection is let go, so the next operation
    /// connects again.
    fn failed(
        &self,
        slot: &mut Option<Connection>,
        context: &'static str,
        e: OpError,
    ) -> StoreError {
        if lost(&e) || slot.as_ref().is_some_and(|c| !c.is_usable()) {
            *slot = None;
        }
        self.op_error(context, e)
    }

    fn listen(&self) -> std::result::Result<Connection, LinkError> {
        let connect_limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            + self.io_timeout;
        let (mut link, client) =
            Link::connect(&self.config, &self.tls, connect_limit, self.io_timeout)?;
        link.run(client.batch_execute(&format!("LISTEN {CHANGE_CHANNEL}")))?;
        Ok(Connection {
            link,
            client,
            statements: HashMap::new(),
        })
    }

    /// Whether a notification says another connection changed this store.
    fn changed_elsewhere(&self, n: &tokio_postgres::Notification) -> bool {
        n.payload() == self.schema && n.process_id() != self.writer_pid.load(Ordering::Relaxed)
    }
}

impl Connection {
    /// One statement outside a transaction (opening the store, before the logic runs).
    fn query(&mut self, sql: &str) -> std::result::Result<Vec<tokio_postgres::Row>, LinkError> {
        self.link.run(self.client.query(sql, &[]))
    }

    fn query_one(&mut self, sql: &str) -> std::result::Result<tokio_postgres::Row, LinkError> {
        self.link.run(self.client.query_one(sql, &[]))
    }
}

impl Backend for PostgresStore {
    fn write<T>(&self, context: &'static str, f: impl FnOnce(&Tx<'_>) -> OpResult<T>) -> Result<T> {
        let mut f = Some(f);
        self.write_with_retry(context, WriteOrder::Exclusive, |tx| {
            (f.take()
                .expect("an exclusive write runs its operation once"))(tx)
        })
    }

    /// Beside the other shared writes: claims, completions and heartbeats run at once, and
    /// serialise only where `Serial` says (event order, lock sets, pools) and on the rows they
    /// change (a task's, its dependents', its session's counters at the end).
    fn write_shared<T>(
        &self,
        context: &'static str,
        f: impl Fn(&Tx<'_>) -> OpResult<T>,
    ) -> Result<T> {
        self.write_with_retry(context, WriteOrder::Shared, f)
    }

    /// Without the write lock: what it writes no other writer reads to decide anything, and it
    /// records no event, so nothing needs it in commit order.
    fn write_apart<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Tx<'_>) -> OpResult<T>,
    ) -> Result<T> {
        let mut f = Some(f);
        self.write_with_retry(context, WriteOrder::Apart, |tx| {
            (f.take().expect("a write apart runs its operation once"))(tx)
        })
    }

    fn read<T>(&self, context: &'static str, f: impl Fn(&dyn Db) -> OpResult<T>) -> Result<T> {
        self.read_with_retry(context, f)
    }

    /// The server's clock, so workers on several machines agree about leases.
    fn clock(&self, db: &dyn Db) -> OpResult<i64> {
        clock_now(db)
    }

    fn now(&self) -> Result<Timestamp> {
        self.read("read the store's clock", |db| Ok(Timestamp(clock_now(db)?)))
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut listener = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if listener.as_ref().is_none_or(|c| !c.is_usable()) {
            // First call (or the connection was lost): watch from here. Changes made before
            // are not reported, as with SQLite's first call.
            *listener = None;
            match self.listen() {
                Ok(conn) => *listener = Some(conn),
                Err(e) => {
                    // Unreachable for now: wait as asked, then let the caller's next read say
                    // whether the server is back.
                    drop(listener);
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return Err(self.unreachable(e));
                }
            }
        }
        let conn = listener.as_mut().expect("listening above");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match conn.link.notifications(left) {
                Ok(got) if got.iter().any(|n| self.changed_elsewhere(n)) => return Ok(()),
                Ok(got) if got.is_empty() => return Ok(()),
                Ok(_) if left.is_zero() => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    // The listening connection broke, so changes may have gone unseen: report
                    // one, and listen afresh next time. If the server is really gone, the
                    // caller's next read says so.
                    *listener = None;
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::to_postgres;

    #[test]
    fn shared_sql_is_translated_once_into_postgres_words() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE x = ?1 AND y = ?12 OR ?1 IS NULL"),
            "SELECT a FROM t WHERE x = $1 AND y = $12 OR $1 IS NULL"
        );
        assert_eq!(
            to_postgres("SELECT id FROM tasks INDEXED BY tasks_ready WHERE s = ?1"),
            "SELECT id FROM tasks  WHERE s = $1"
        );
        // Quoted text is data, not SQL.
        assert_eq!(
            to_postgres("SELECT '?1 it''s INDEXED BY x', \"?2\" WHERE k = ?3"),
            "SELECT '?1 it''s INDEXED BY x', \"?2\" WHERE k = $3"
        );
        // Only the clause, not a name that ends with it.
        assert_eq!(
            to_postgres("SELECT reindexed by_x FROM t"),
            "SELECT reindexed by_x FROM t"
        );
    }
}
