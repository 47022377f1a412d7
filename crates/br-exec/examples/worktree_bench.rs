//! Times worktree slots against plain `git worktree add` + `git worktree remove` on a generated
//! repository in a temporary directory.
//!
//! `cargo run --release -p br-exec --example worktree_bench -- [FILES] [ATTEMPTS]`
//! (defaults: 5000 files, 50 attempts).

use std::process::ExitCode;

use br_exec::worktree::bench::{bench_worktrees, build_repository};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut number = |default: usize| match args.next() {
        None => Ok(default),
        Some(a) => a.parse::<usize>().map_err(|_| format!("not a number: {a}")),
    };
    let (files, attempts) = match (number(5000), number(50)) {
        (Ok(f), Ok(a)) => (f, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}\nusage: worktree_bench [FILES] [ATTEMPTS]");
            return ExitCode::from(2);
        }
    };
    let Ok(attempts) = u32::try_from(attempts) else {
        eprintln!("error: too many attempts");
        return ExitCode::from(2);
    };
    let result = tempfile::TempDir::new()
        .map_err(|e| e.to_string())
        .and_then(|tmp| {
            let repo =
                build_repository(&tmp.path().join("repo"), files).map_err(|e| e.to_string())?;
            bench_worktrees(&repo, attempts).map_err(|e| e.to_string())
        });
    match result {
        Ok(timings) => {
            println!("{timings}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
