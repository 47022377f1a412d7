//! One function per command; `dispatch` picks it. Commands parse nothing and decide nothing the
//! library crates decide: they wire the store, the executor and the terminal together.

mod agents;
mod dashboard;
mod demo;
pub(crate) mod diff;
mod events;
mod lock;
mod merge;
mod plan;
mod pools;
mod serve;
mod session;
mod worker;

use br_core::TaskId;
use br_store::{Session, Store};

use crate::cli::Command;
use crate::context::Context;
use crate::exit::{Exit, usage};

pub(crate) fn dispatch(ctx: &Context, command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Agents(a) => agents::agents(ctx, a),
        Command::Demo(a) => demo::demo(ctx, a),
        Command::Diff(a) => diff::diff(ctx, a),
        Command::Init(a) => plan::init(ctx, a),
        Command::Run(a) => plan::run(ctx, a),
        Command::Submit(a) => plan::submit(ctx, a),
        Command::Start(a) => plan::start(ctx, a),
        Command::Worker(a) => worker::worker(ctx, a),
        Command::Workers(a) => worker::workers(ctx, a),
        Command::Wait(a) => session::wait(ctx, a),
        Command::Status(a) => session::status(ctx, a),
        Command::List(a) => session::list(ctx, a),
        Command::Pause(a) => session::pause(ctx, a),
        Command::Resume(a) => session::resume(ctx, a),
        Command::Retry(a) => session::retry(ctx, a),
        Command::Cancel(a) => session::cancel(ctx, a),
        Command::Scale(a) => session::scale(ctx, a),
        Command::Dashboard(a) => dashboard::dashboard(ctx, a),
        Command::Serve(a) => serve::serve(ctx, a),
        Command::Merge(a) => merge::merge(ctx, a),
        Command::Summary => session::summary(ctx),
        Command::Cleanup(a) => session::cleanup(ctx, a),
        Command::Lock(a) => lock::lock(ctx, a),
        Command::Unlock(a) => lock::unlock(ctx, a),
        Command::Locks => lock::locks(ctx),
        Command::Pools => pools::pools(ctx),
        Command::Events(a) => events::events(ctx, a),
        Command::Logs(a) => events::logs(ctx, a),
        Command::Reaper => unreachable_reaper(),
        Command::Completions(_) | Command::Man => Err(crate::exit::usage(
            "completions and the manual are printed before a context exists",
        )),
    }
}

/// `__reaper` is handled before a context exists (it must not touch the repository or store).
fn unreachable_reaper() -> anyhow::Result<Exit> {
    Err(crate::exit::usage("`__reaper` is internal to br workers"))
}

/// `TASK` (of the latest session) or `SESSION TASK`, as `br diff` and `br logs` take them.
fn session_and_task(store: &dyn Store, names: &[String]) -> anyhow::Result<(Session, TaskId)> {
    let (session, task) = match names {
        [task] => {
            let latest = store
                .list_sessions(&br_store::SessionFilter {
                    status: None,
                    limit: Some(1),
                })?
                .into_iter()
                .next()
                .ok_or_else(|| usage("no session yet: run a plan first"))?;
            (latest, task)
        }
        [session, task] => (store.resolve_session(session)?, task),
        _ => return Err(usage("give TASK, or SESSION TASK")),
    };
    let task = TaskId::new(task.clone()).map_err(|e| usage(e.to_string()))?;
    Ok((session, task))
}
