//! Attempt output in the store: the worker writes each attempt's log in pieces as the task
//! produces it (the file on the worker's machine stays as a cache), so `br logs`, `--follow`,
//! the dashboards and the JSON API read any attempt's log from any machine that reaches the
//! store.
//!
//! A piece is keyed by the byte of the log it starts at. Writing one again — a retry after an
//! answer was lost — changes nothing, and a reader asks for what follows the bytes it has.

use super::{OpResult, Tx, params};
use crate::sql::Db;

/// How many pieces one read returns at most: a reader that wants more asks again from where
/// this read ended, so one read of a huge log stays bounded.
const PIECES_PER_READ: i64 = 64;

pub(super) fn append(
    tx: &Tx<'_>,
    session_id: &str,
    task_id: &str,
    attempt: u32,
    offset: u64,
    bytes: &[u8],
) -> OpResult<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO log_chunks (session_id, task_id, attempt, byte_offset, data)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        params![
            session_id,
            task_id,
            attempt,
            i64::try_from(offset).unwrap_or(i64::MAX),
            bytes
        ],
    )?;
    Ok(())
}

/// The log's bytes from `from` on, as far as the store holds them without a gap (at most
/// [`PIECES_PER_READ`] pieces).
pub(super) fn read(
    c: &dyn Db,
    session_id: &str,
    task_id: &str,
    attempt: u32,
    from: u64,
) -> OpResult<Vec<u8>> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let rows = c.query(
        "SELECT byte_offset, data FROM log_chunks
         WHERE session_id = ?1 AND task_id = ?2 AND attempt = ?3
           AND byte_offset + length(data) > ?4
         ORDER BY byte_offset LIMIT ?5",
        params![session_id, task_id, attempt, from, PIECES_PER_READ],
    )?;
    let mut out = Vec::new();
    let mut at = from;
    for r in &rows {
        let offset: i64 = r.get(0)?;
        let data: Vec<u8> = r.get(1)?;
        if offset > at {
            // A piece not written (yet): what follows it is not the log's next bytes.
            break;
        }
        let skip = usize::try_from(at - offset).unwrap_or(usize::MAX);
        if let Some(rest) = data.get(skip..) {
            out.extend_from_slice(rest);
            at += i64::try_from(rest.len()).unwrap_or(i64::MAX);
        }
    }
    Ok(out)
}
