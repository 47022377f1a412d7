//! `br pools`: the store's pools — each one's running tasks out of its size, and whether a rate
//! limit parks it, until when and why.

use std::time::Duration;

use br_store::view::PoolListView;

use crate::context::Context;
use crate::exit::Exit;
use crate::output::{print, print_json};
use crate::table::{Table, or_dash};

pub(super) fn pools(ctx: &Context) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let list = PoolListView::read(&*store)?;
    if ctx.json {
        print_json(&list)?;
        return Ok(Exit::Success);
    }
    let mut table = Table::new(&["POOL", "SIZE", "RUNNING", "BACKOFF", "PARKED", "REASON"]);
    for p in &list.pools {
        let parked = p.parked_words(list.now);
        // The reason of a park that is over is history: `--json` keeps it.
        let reason = parked.as_ref().and(p.parked_reason.as_deref());
        table.row(vec![
            p.name.clone(),
            p.size
                .map_or_else(|| "no cap".to_string(), |s| s.to_string()),
            p.running.to_string(),
            // As a plan writes it (`60s`, `5m`).
            humantime::format_duration(Duration::from_millis(p.backoff_ms)).to_string(),
            or_dash(parked),
            or_dash(reason),
        ]);
    }
    if table.is_empty() {
        print("no pools: a plan's [pool.NAME] tables (or an agent's `pool`) make them\n")?;
    } else {
        print(&table.render())?;
    }
    Ok(Exit::Success)
}
