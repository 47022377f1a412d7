//! Newtype identifiers: sessions, tasks, workers and attempt numbers, with the rules that keep them
//! safe to use as git ref components, file names and command-line arguments.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("task id is empty")]
    Empty,
    #[error("task id `{}…` is longer than 64 characters", .0.chars().take(64).collect::<String>())]
    TooLong(String),
    #[error("task id `{id}` contains `{ch}`: only letters, digits, `.`, `_` and `-` are allowed")]
    BadChar { id: String, ch: char },
    #[error(
        "task id `{0}` is not a valid git ref component: it must not start with `.` or `-`, \
         contain `..`, or end with `.` or `.lock`"
    )]
    NotRefSafe(String),
}

/// A task's id, unique within its session: `[A-Za-z0-9._-]{1,64}`, and also a valid git ref
/// component, because it names the task's branch `br/<session-slug>/<task-id>` and its log file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.chars().count() > 64 {
            return Err(IdError::TooLong(id));
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::BadChar { id, ch });
        }
        if id.starts_with('.')
            || id.starts_with('-')
            || id.contains("..")
            || id.ends_with('.')
            || id.ends_with(".lock")
        {
            return Err(IdError::NotRefSafe(id));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Task ids that name br's own refs: a task's branch is `br/<session-slug>/<task-id>`, beside the
/// session's integration branch `br/<session-slug>/integration`, so a task with that id would
/// have its branch *be* the integration branch (a late finish moved it to the task's commit and
/// dropped what had landed). Compared ignoring ASCII case, because on a case-insensitive file
/// system `Integration` and `integration` are one loose ref.
///
/// Any other ref br ever keeps under `br/<session-slug>/` will contain a character a task id
/// cannot (`+`, say, as in `br/<slug>/+verify`), so no further id needs reserving and no valid
/// plan stops being valid.
pub const RESERVED_TASK_IDS: &[&str] = &["integration"];

impl TaskId {
    /// Whether this id is one of br's own ref names ([`RESERVED_TASK_IDS`]). Plans refuse such
    /// ids; `TaskId::new` accepts them, so that a store an older br wrote still reads.
    pub fn is_reserved(&self) -> bool {
        is_reserved_task_id(&self.0)
    }
}

/// [`TaskId::is_reserved`] for an id as text.
pub fn is_reserved_task_id(id: &str) -> bool {
    RESERVED_TASK_IDS.iter().any(|r| r.eq_ignore_ascii_case(id))
}

impl TryFrom<String> for TaskId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Generated identifiers are lowercase hex, so a short unique prefix is easy to type.
macro_rules! generated_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Builds an id from `random` bits; the caller supplies them so this crate stays
            /// free of I/O and global state.
            pub fn from_random(random: u64) -> Self {
                Self(format!(concat!($prefix, "{:012x}"), random & 0xffff_ffff_ffff))
            }

            /// Wraps an id read back from the store or typed by a user.
            pub fn from_string(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

generated_id!(
    /// A session's id: 12 hex digits. Commands accept it whole, as a unique prefix, or the
    /// session's name.
    SessionId,
    ""
);
generated_id!(
    /// A worker's id: `w` and 12 hex digits.
    WorkerId,
    "w"
);

/// An attempt number: the first execution of a task is attempt 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl Attempt {
    pub const FIRST: Attempt = Attempt(1);

    pub fn next(self) -> Attempt {
        Attempt(self.0 + 1)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Turns a free-form session name into something safe inside a git ref and a directory name:
/// lowercase ASCII letters, digits, `.`, `_` and `-`, with no `..`, no leading `.`/`-`, and no
/// `.lock` suffix. The result is never empty.
pub fn slugify(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        let keep = c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        let c = if keep { c } else { '-' };
        // Collapse runs of separators so "a  b" and "a..b" stay readable and ref-safe.
        let is_sep = matches!(c, '-' | '.');
        if is_sep && slug.ends_with(['-', '.']) {
            continue;
        }
        slug.push(c);
    }
    let mut slug = slug.trim_matches(['-', '.']).to_string();
    while slug.ends_with(".lock") {
        slug.truncate(slug.len() - ".lock".len());
        slug = slug.trim_end_matches(['-', '.']).to_string();
    }
    slug.truncate(48);
    let slug = slug.trim_end_matches(['-', '.']).to_string();
    if slug.is_empty() {
        "session".to_string()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_follow_the_plan_rules() {
        for ok in ["api", "a.b", "A_1-x", &"x".repeat(64)] {
            assert!(TaskId::new(ok).is_ok(), "{ok}");
        }
        let bad = [
            ("", IdError::Empty),
            (
                "a/b",
                IdError::BadChar {
                    id: "a/b".into(),
                    ch: '/',
                },
            ),
            (
                "a b",
                IdError::BadChar {
                    id: "a b".into(),
                    ch: ' ',
                },
            ),
            (
                "é",
                IdError::BadChar {
                    id: "é".into(),
                    ch: 'é',
                },
            ),
        ];
        for (id, want) in bad {
            assert_eq!(TaskId::new(id).unwrap_err(), want);
        }
        for not_ref in [".hidden", "-x", "a..b", "x.lock", "end."] {
            assert!(
                matches!(TaskId::new(not_ref), Err(IdError::NotRefSafe(_))),
                "{not_ref}"
            );
        }
        assert!(matches!(
            TaskId::new("x".repeat(65)),
            Err(IdError::TooLong(_))
        ));
    }

    #[test]
    fn the_integration_branchs_name_is_reserved_in_any_case() {
        for reserved in ["integration", "Integration", "INTEGRATION"] {
            assert!(TaskId::new(reserved).unwrap().is_reserved(), "{reserved}");
        }
        for free in ["integration-tests", "integrate", "api", "integration.x"] {
            assert!(!TaskId::new(free).unwrap().is_reserved(), "{free}");
        }
    }

    #[test]
    fn slugs_are_ref_safe() {
        let cases = [
            ("build-v3.1", "build-v3.1"),
            ("My Build!!", "my-build"),
            ("..weird..name..", "weird.name"),
            ("x.lock", "x"),
            ("", "session"),
            ("日本", "session"),
            ("a/b\\c", "a-b-c"),
        ];
        for (name, want) in cases {
            assert_eq!(slugify(name), want, "{name}");
        }
    }

    #[test]
    fn generated_ids_are_fixed_width_hex() {
        assert_eq!(SessionId::from_random(0xabc).as_str(), "000000000abc");
        assert_eq!(WorkerId::from_random(u64::MAX).as_str(), "wffffffffffff");
    }
}
