//! What commands print: text (escaped) and JSON to stdout, and the status JSON of a session (the shape of
//! `br status --json`, also what `br run --json` and `br wait --json` print at the end).

use std::io::Write;

use br_store::view::StatusView;
use br_store::{Session, Store};

use crate::escape::esc;

/// Writes JSON to stdout with a trailing newline.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Writes text to stdout, every line escaped ([`esc`]): the values in it come from the store,
/// and a value a caller forgot to escape still cannot reach the terminal as a control sequence.
/// (Escaping is idempotent: what [`esc`] writes holds no control character.)
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
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
