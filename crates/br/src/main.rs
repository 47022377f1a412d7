//! The `br` binary: parse the command line, run the command, print `error: …` with its causes,
//! and pick the exit code in one place.

// The doc comments of `cli.rs` are the command line's help text, written for a terminal
// (`<git common dir>`, `br/<session-slug>/…`), not rustdoc's HTML. An `expect` would not do:
// only rustdoc checks this lint, so every other build would find the expectation unfulfilled.
#![allow(
    rustdoc::invalid_html_tags,
    reason = "clap help text, shown in a terminal, not rendered as HTML"
)]

mod cli;
mod cmd;
mod context;
mod drive;
mod exit;
mod output;
mod progress;
mod table;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::exit::Exit;

fn main() -> ExitCode {
    let args = cli::strip_parallel_alias(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    let result = run(cli);
    match result {
        Ok(exit) => exit.code(),
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            report(&err);
            exit::code_for_error(&err).code()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    if let Command::Reaper = cli.command {
        // Kill what is left once the worker that started us is gone. The grace period matches
        // the default of `--kill-grace`.
        br_exec::reaper::run_reaper(
            std::io::BufReader::new(std::io::stdin()),
            std::time::Duration::from_secs(5),
        );
        return Ok(Exit::Success);
    }
    let ctx = Context::new(cli.dir, cli.store, cli.json)?;
    cmd::dispatch(&ctx, cli.command)
}

/// Prints the error and its causes. A bad plan lists every problem, one `error:` line each.
fn report(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    if let Some(plan) = err.downcast_ref::<br_core::PlanError>() {
        for line in plan.to_string().lines() {
            let _ = writeln!(stderr, "error: {line}");
        }
        return;
    }
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        // A plan error wrapped in context still lists each problem.
        for line in cause.to_string().lines() {
            let _ = writeln!(stderr, "caused by: {line}");
        }
    }
}
