//! What every command needs: the directory it acts in, the repository, and the store.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use br_git::Repo;
use br_store::{Access, OpenOptions, Store, StoreLocation};

#[derive(Debug)]
pub(crate) struct Context {
    /// The directory br acts in (`-C DIR`, else the current directory).
    pub dir: PathBuf,
    store_url: Option<String>,
    /// `BR_BUSY_TIMEOUT`, parsed when the context is made, before any command does anything.
    busy_timeout: Option<Duration>,
    pub json: bool,
    repo: OnceLock<Repo>,
}

impl Context {
    pub(crate) fn new(
        dir: Option<PathBuf>,
        store_url: Option<String>,
        json: bool,
    ) -> anyhow::Result<Context> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let dir = match dir {
            Some(d) if d.is_absolute() => d,
            Some(d) => cwd.join(d),
            None => cwd,
        };
        if !dir.is_dir() {
            return Err(crate::exit::usage(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(Context {
            dir,
            store_url: store_url.filter(|s| !s.is_empty()),
            busy_timeout: crate::settings::busy_timeout()?,
            json,
            repo: OnceLock::new(),
        })
    }

    /// Whether the store was named (`--store`, `BR_STORE`), rather than the repository's own.
    pub(crate) fn has_store_url(&self) -> bool {
        self.store_url.is_some()
    }

    /// The repository `dir` is in.
    pub(crate) fn repo(&self) -> anyhow::Result<&Repo> {
        if let Some(repo) = self.repo.get() {
            return Ok(repo);
        }
        let repo = Repo::discover(&self.dir)?;
        Ok(self.repo.get_or_init(|| repo))
    }

    /// A path the user typed, relative to `dir`.
    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    pub(crate) fn store_location(&self) -> anyhow::Result<StoreLocation> {
        match &self.store_url {
            Some(url) => Ok(match StoreLocation::parse(url)? {
                StoreLocation::Sqlite(p) => StoreLocation::Sqlite(self.path(&p)),
                other @ StoreLocation::Postgres(_) => other,
            }),
            None => Ok(StoreLocation::default_for(&self.repo()?.common_dir)),
        }
    }

    /// The store, as a URL other br processes (the workers we start) can open.
    pub(crate) fn store_url_for_children(&self) -> anyhow::Result<String> {
        Ok(match self.store_location()? {
            StoreLocation::Sqlite(p) => p.to_string_lossy().into_owned(),
            StoreLocation::Postgres(url) => url,
        })
    }

    /// The store, to write: made where none exists, migrated when older.
    pub(crate) fn open_store(&self) -> anyhow::Result<Box<dyn Store>> {
        Ok(self.store_location()?.open_with(&OpenOptions {
            busy_timeout: self.busy_timeout,
            access: Access::ReadWrite,
        })?)
    }

    /// The store, only to read: nothing is made or migrated (where no store exists yet, it
    /// reads as an empty one).
    pub(crate) fn open_store_to_read(&self) -> anyhow::Result<Box<dyn Store>> {
        Ok(self.store_location()?.open_with(&OpenOptions {
            busy_timeout: self.busy_timeout,
            access: Access::Read,
        })?)
    }

    /// Where attempt logs go: beside the repository's br state.
    pub(crate) fn log_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(self.repo()?.log_dir())
    }
}
