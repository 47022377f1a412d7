//! Runs the conformance suite on the SQLite backend, each check on a new file in a temp dir.

use br_store::Store;
use br_store::conformance::FreshStore;
use br_store::sqlite::SqliteStore;

struct TempSqlite {
    dir: tempfile::TempDir,
}

impl FreshStore for TempSqlite {
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.dir.path().join("br.db")).expect("open sqlite store"))
    }
}

fn fresh() -> TempSqlite {
    TempSqlite {
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

br_store::conformance_tests!(fresh);
