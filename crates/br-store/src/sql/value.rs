//! The values that cross between the store's logic and a database driver: statement parameters
//! ([`Param`]), and result rows ([`Row`]) read by column index into the model's types
//! ([`FromValue`]).
//!
//! Both schemas keep integers (timestamps in milliseconds, counters, PostgreSQL's one BOOLEAN
//! column), text (ids, words, JSON), bytes (attempt output, which need not be UTF-8) and NULL. A
//! boolean is the integer 0 or 1, as SQLite keeps it; the PostgreSQL driver converts at the edge.

use std::rc::Rc;

use br_core::state::UnknownState;
use br_core::{EventKind, Landing, OutcomeKind, RunReason, SessionStatus, TaskState, WorkerStatus};

use super::{OpError, OpResult};
use crate::error::StoreError;

/// A statement parameter, borrowed from the caller so binding copies no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param<'a> {
    Null,
    Integer(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(b: &'a [u8]) -> Self {
        Param::Blob(b)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(s: &'a str) -> Self {
        Param::Text(s)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(s: &'a String) -> Self {
        Param::Text(s)
    }
}

impl<'a> From<&&'a str> for Param<'a> {
    fn from(s: &&'a str) -> Self {
        Param::Text(s)
    }
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(s: &'a Option<String>) -> Self {
        s.as_deref().into()
    }
}

impl From<i64> for Param<'_> {
    fn from(n: i64) -> Self {
        Param::Integer(n)
    }
}

impl From<u32> for Param<'_> {
    fn from(n: u32) -> Self {
        Param::Integer(n.into())
    }
}

impl From<i32> for Param<'_> {
    fn from(n: i32) -> Self {
        Param::Integer(n.into())
    }
}

impl From<usize> for Param<'_> {
    fn from(n: usize) -> Self {
        Param::Integer(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Param<'_> {
    fn from(b: bool) -> Self {
        Param::Integer(b.into())
    }
}

/// The store's words (states, statuses, outcomes, event kinds) bind as the text they are kept
/// as, so the SQL layer names them by their enum, never by a string literal.
macro_rules! word_params {
    ($($t:ty),*) => {$(
        impl From<$t> for Param<'_> {
            fn from(word: $t) -> Self {
                Param::Text(word.as_str())
            }
        }

        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                String::from_value(value)?.parse().map_err(|e: UnknownState| e.to_string())
            }
        }
    )*};
}
word_params!(
    TaskState,
    SessionStatus,
    WorkerStatus,
    OutcomeKind,
    EventKind,
    Landing,
    RunReason
);

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// A value read from a result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Integer(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One result row. The column names are shared by every row of a query and serve only to name
/// a damaged column in the error.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    columns: Rc<[Box<str>]>,
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(columns: Rc<[Box<str>]>, values: Vec<Value>) -> Self {
        Row { columns, values }
    }

    /// Its values, for a backend that reuses one row while it reads many.
    pub(crate) fn values_mut(&mut self) -> &mut Vec<Value> {
        &mut self.values
    }

    /// Column `idx` in the model's type; a value that type cannot hold means the store is
    /// damaged.
    pub(crate) fn get<T: FromValue>(&self, idx: usize) -> OpResult<T> {
        let value = self.values.get(idx).unwrap_or(&Value::Null);
        T::from_value(value).map_err(|why| self.damaged(idx, why))
    }

    /// The error for column `idx` holding something the model cannot take.
    pub(crate) fn damaged(&self, idx: usize, why: impl std::fmt::Display) -> OpError {
        let column = self.columns.get(idx).map_or("?", |c| c);
        StoreError::Damaged(format!("column `{column}`: {why}")).into()
    }
}

/// A model type a column converts into; the error says why it cannot.
pub(crate) trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn unexpected(value: &Value, wanted: &str) -> String {
    let found = match value {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    };
    format!("expected {wanted}, found {found}")
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Integer(n) => Ok(*n),
            other => Err(unexpected(other, "an integer")),
        }
    }
}

/// The narrower integer types of the model: out of range is damage, not a wrap-around.
macro_rules! from_integer {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                let n = i64::from_value(value)?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range"))
            }
        }
    )*};
}
from_integer!(u32, i32, u64);

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(unexpected(other, "text")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(unexpected(other, "bytes")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<Value>) -> Row {
        let columns: Rc<[Box<str>]> = ["attempt", "worker_id"].map(Box::from).into();
        Row::new(columns, values)
    }

    #[test]
    fn columns_convert_into_the_model_types() {
        let r = row(vec![Value::Integer(3), Value::Null]);
        assert_eq!(r.get::<u32>(0).unwrap(), 3);
        assert!(r.get::<bool>(0).unwrap());
        assert_eq!(r.get::<Option<String>>(1).unwrap(), None);
        let r = row(vec![Value::Integer(0), Value::Text("w1".into())]);
        assert!(!r.get::<bool>(0).unwrap());
        assert_eq!(r.get::<Option<String>>(1).unwrap().as_deref(), Some("w1"));
    }

    #[test]
    fn a_value_the_model_cannot_hold_names_its_column() {
        let damaged = |e: OpError| match e {
            OpError::Store(StoreError::Damaged(why)) => why,
            other => panic!("unexpected error: {other:?}"),
        };
        let r = row(vec![Value::Integer(-1), Value::Null]);
        assert_eq!(
            damaged(r.get::<u32>(0).unwrap_err()),
            "column `attempt`: -1 is out of range"
        );
        assert_eq!(
            damaged(r.get::<String>(1).unwrap_err()),
            "column `worker_id`: expected text, found NULL"
        );
    }

    #[test]
    fn a_word_no_state_has_is_damage_naming_its_column() {
        let columns: Rc<[Box<str>]> = ["outcome"].map(Box::from).into();
        let r = Row::new(columns, vec![Value::Text("exploded".into())]);
        let e = match r.get::<Option<OutcomeKind>>(0).unwrap_err() {
            OpError::Store(StoreError::Damaged(why)) => why,
            other => panic!("unexpected error: {other:?}"),
        };
        assert!(
            e.starts_with(
                "column `outcome`: unknown outcome `exploded` (expected one of: succeeded,"
            ),
            "{e}"
        );
        let r = Row::new(
            ["outcome"].map(Box::from).into(),
            vec![Value::Text("timed_out".into())],
        );
        assert_eq!(r.get::<OutcomeKind>(0).unwrap(), OutcomeKind::TimedOut);
        assert_eq!(Param::from(TaskState::Ready), Param::Text("ready"));
    }

    #[test]
    fn parameters_borrow_what_they_bind() {
        let name = String::from("a");
        let none: Option<&str> = None;
        assert_eq!(Param::from(&name), Param::Text("a"));
        assert_eq!(Param::from(none), Param::Null);
        assert_eq!(Param::from(Some(7u32)), Param::Integer(7));
        assert_eq!(Param::from(true), Param::Integer(1));
    }
}
