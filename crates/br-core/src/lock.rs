//! Lock paths: normalised repo-relative paths or globs, and the conservative rule that decides
//! whether two of them could ever name a common file.
//!
//! PLACEHOLDER: being rewritten (overlap is exact-prefix only here).

use serde::Serialize;

/// Why a string cannot be a lock path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockPathError {
    #[error("empty path")]
    Empty,
    #[error("`{0}` is absolute: lock paths are relative to the repository root")]
    Absolute(String),
    #[error("`{0}` leaves the repository (`..`)")]
    Escapes(String),
    #[error("`{path}` is not a valid glob: {reason}")]
    InvalidGlob { path: String, reason: String },
}

/// A normalised, repo-relative path or glob (`src/api/**`, `Cargo.lock`, `docs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LockPath(String);

impl LockPath {
    pub fn parse(input: &str) -> Result<LockPath, LockPathError> {
        if input.is_empty() {
            return Err(LockPathError::Empty);
        }
        if input.starts_with('/') {
            return Err(LockPathError::Absolute(input.to_string()));
        }
        if input.split('/').any(|s| s == "..") {
            return Err(LockPathError::Escapes(input.to_string()));
        }
        Ok(LockPath(input.trim_end_matches('/').to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?', '[', '{'])
    }

    pub fn overlaps(&self, other: &LockPath) -> bool {
        let (a, b) = (&self.0, &other.0);
        a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
    }

    pub fn covers_file(&self, file: &str) -> bool {
        file == self.0 || file.starts_with(&format!("{}/", self.0))
    }
}

impl std::fmt::Display for LockPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every pair `(wanted, held)` that overlaps.
pub fn overlapping<'a>(
    wanted: &'a [LockPath],
    held: &'a [LockPath],
) -> Vec<(&'a LockPath, &'a LockPath)> {
    let mut out = Vec::new();
    for w in wanted {
        for h in held {
            if w.overlaps(h) {
                out.push((w, h));
            }
        }
    }
    out
}
