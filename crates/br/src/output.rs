//! What commands print: text (escaped) and JSON to stdout, and the status JSON of a session (the shape of
//! `br status --json`, also what `br run --json` and `br wait --json` print at the end).

use std::io::{BufWriter, Write};

use br_store::view::StatusView;
use br_store::{Session, Store};

use crate::escape::esc;

/// `1 task`, `2 tasks`: a count and its noun, in the number the count says.
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Writes JSON to stdout with a trailing newline.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = stdout();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Stdout in blocks: Rust's stdout writes each line as it ends, and a 20,000-task status is
/// 700,000 lines of JSON — as many `write` system calls, most of `br status --json`'s time.
/// Callers flush at the end (dropping the writer would ignore an error).
fn stdout() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::with_capacity(64 * 1024, std::io::stdout().lock())
}

/// Writes text to stdout, every line escaped ([`esc`]): the values in it come from the store,
/// and a value a caller forgot to escape still cannot reach the terminal as a control sequence.
/// (Escaping is idempotent: what [`esc`] writes holds no control character.)
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = stdout();
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.write_all(b"\n")?;
        }
        write!(out, "{}", esc(line))?;
    }
    out.flush()?;
    Ok(())
}

/// `br status --json`: the session's fields plus `tasks`, as a value callers may add to.
pub(crate) fn status_json(store: &dyn Store, s: &Session) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(StatusView::read(store, s.clone())?)?)
}

pub(crate) fn print_status_json(store: &dyn Store, s: &Session) -> anyhow::Result<()> {
    print_json(&StatusView::read(store, s.clone())?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(super::count(1u32, "task"), "1 task");
        assert_eq!(super::count(0u32, "task"), "0 tasks");
        assert_eq!(super::count(2u64, "worker"), "2 workers");
    }
}
