//! `br serve`: the web dashboard and JSON API, until Ctrl-C or SIGTERM.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use br_web::{AppState, Exposure, Server, Stop};

use crate::cli::ServeArgs;
use crate::context::Context;
use crate::exit::Exit;

pub(super) fn serve(ctx: &Context, args: ServeArgs) -> anyhow::Result<Exit> {
    // Bind first: a port in use is reported before the store is even opened.
    let server =
        Server::bind(args.addr).with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = server.local_addr();
    let exposure = if addr.ip().is_loopback() {
        Exposure::Loopback
    } else {
        eprintln!(
            "warning: listening on {addr}, which is not a loopback address: anyone who can \
             reach it can see every session and pause or cancel it"
        );
        Exposure::Network
    };
    let store: Arc<dyn br_store::Store> = Arc::from(ctx.open_store()?);
    let state = AppState::new(store, args.refresh, exposure)?;
    let stop = server
        .run(state, |addr| {
            // The line tests and scripts read to find the port; flushed at once.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        })
        .context("the web server failed")?;
    Ok(match stop {
        Stop::Terminated => Exit::Success,
        Stop::Interrupted => Exit::Interrupted,
    })
}
