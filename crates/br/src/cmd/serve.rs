//! `br serve`: the web dashboard and JSON API, until Ctrl-C or SIGTERM.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use br_web::{Access, AppState, Server, Stop, Token};

use crate::cli::ServeArgs;
use crate::context::Context;
use crate::exit::{Exit, usage};

pub(super) fn serve(ctx: &Context, args: ServeArgs) -> anyhow::Result<Exit> {
    // Decided before binding: an address beyond loopback without a token never listens at all.
    let access = access(&args)?;
    // Bind first: a port in use is reported before the store is even opened.
    let server =
        Server::bind(args.addr).with_context(|| format!("cannot listen on {}", args.addr))?;
    if matches!(access, Access::Network { .. }) {
        eprintln!(
            "note: every request needs the token; open http://{}/?token=<token> once in the \
             browser (the page keeps it in a cookie)",
            server.local_addr()
        );
    }
    let store: Arc<dyn br_store::Store> = Arc::from(ctx.open_store()?);
    let snapshots: Arc<dyn br_store::Store> = Arc::from(ctx.open_store()?);
    // Dropped here, after the server: a PostgreSQL handle runs a runtime of its own, which must
    // not be dropped by the server's last task (tokio refuses that in an async context).
    let _last_handle = Arc::clone(&store);
    let mut state = AppState::with_publisher_store(store, snapshots, args.refresh, access)?;
    // Diffs need git in a clone of the repository; outside one the endpoint says so.
    if let Ok(repo) = ctx.repo() {
        let repo = repo.clone();
        state = state.with_differ(Arc::new(move |store, session, task, attempt| {
            br_exec::diff::attempt_diff(store, &repo, session, task, attempt, false).map_err(|e| {
                match e {
                    br_exec::diff::DiffError::Missing(why) => br_web::DiffFailure::Missing(why),
                    br_exec::diff::DiffError::Store(e) => br_web::DiffFailure::Store(e),
                    br_exec::diff::DiffError::Git(why) => br_web::DiffFailure::Failed(why),
                }
            })
        }));
    }
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

/// Who may use the server: on loopback anyone on this machine (and, with a token, only who has
/// it); beyond loopback only who has the token, which is then required.
fn access(args: &ServeArgs) -> anyhow::Result<Access> {
    let token = match args.token.as_deref() {
        // An empty BR_SERVE_TOKEN is no token, not a token anyone can send.
        None | Some("") => None,
        Some(text) => {
            Some(Token::new(text).map_err(|e| usage(format!("--token / BR_SERVE_TOKEN: {e}")))?)
        }
    };
    match (args.addr.ip().is_loopback(), token) {
        (true, token) => Ok(Access::Loopback { token }),
        (false, Some(token)) => Ok(Access::Network { token }),
        (false, None) => Err(usage(format!(
            "{} is not a loopback address: anyone who can reach it could read every session \
             and cancel it, so it needs a token; give one with --token TOKEN or \
             BR_SERVE_TOKEN=TOKEN (then open http://HOST:PORT/?token=TOKEN once), or listen on \
             127.0.0.1",
            args.addr
        ))),
    }
}
