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
mod escape;
mod exit;
mod output;
mod progress;
mod settings;
mod table;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::escape::esc;
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
    // Made from the command line's own definitions; they need no repository and no store.
    match &cli.command {
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into memory first: writing to a closed pipe must be the error main ignores, not
            // the panic clap_complete makes of it.
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "br", &mut script);
            std::io::stdout().write_all(&script)?;
            return Ok(Exit::Success);
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            return Ok(Exit::Success);
        }
        _ => {}
    }
    let mut store = cli.store;
    if let Command::Worker(args) = &cli.command
        && args.store_from_stdin
    {
        store = Some(read_store_line()?);
    }
    let ctx = Context::new(cli.dir, store, cli.json)?;
    cmd::dispatch(&ctx, cli.command)
}

/// The first line of standard input, read a byte at a time: the rest of the pipe is the
/// parent's to close, and a buffered reader would swallow it.
fn read_store_line() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the store URL")),
        }
    }
    let line = String::from_utf8(line).map_err(|_| exit::usage("the store URL is not UTF-8"))?;
    if line.is_empty() {
        return Err(exit::usage("no store URL on standard input"));
    }
    Ok(line)
}

/// Prints the error and its causes. A bad plan lists every problem, one `error:` line each.
/// Messages name sessions, tasks and paths that may come from a hostile plan: each line is
/// escaped.
fn report(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    if let Some(plan) = err.downcast_ref::<br_core::PlanError>() {
        for line in plan.to_string().lines() {
            let _ = writeln!(stderr, "error: {}", esc(line));
        }
        return;
    }
    let text = err.to_string();
    let lines: Vec<String> = text.split('\n').map(|l| esc(l).to_string()).collect();
    let _ = writeln!(stderr, "error: {}", lines.join("\n"));
    for cause in err.chain().skip(1) {
        // A plan error wrapped in context still lists each problem.
        for line in cause.to_string().lines() {
            let _ = writeln!(stderr, "caused by: {}", esc(line));
        }
    }
}
