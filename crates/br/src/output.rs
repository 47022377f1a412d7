//! What commands print: text and JSON to stdout, and the status JSON of a session (the shape of
//! `br status --json`, also what `br run --json` and `br wait --json` print at the end).

use std::io::Write;

use br_store::view::StatusView;
use br_store::{Session, Store};

/// Writes JSON to stdout with a trailing newline.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
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
