//! The worktree benchmark's measurements: what one attempt's fresh tree costs in a reused slot
//! on a 5,000-file repository — from a fixed base, and from a tip that moves by a few files per
//! attempt (as the integration tip does) — the short way br takes against the thorough way
//! (`git reset --hard`, `git clean`, `git status`: every checkout before the short way
//! existed), and against a plain `git worktree add` and `git worktree remove` per attempt.
//!
//! Wall times on a shared 2-core VM swing with the load, so each checkout's CPU time (this
//! process and the git processes it waited for) is reported too, and the short and thorough
//! slots take turns, attempt by attempt.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use br_git::worktree::{AttemptSpec, Keep, ResetPolicy, ResetWay, WorktreeError, WorktreeSlot};
use br_git::{Git, Repo};
use nix::sys::resource::{UsageWho, getrusage};

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WorktreeError {
    let path = path.to_path_buf();
    move |source| WorktreeError::Io {
        action,
        path,
        source,
    }
}

/// How the attempts of one scenario start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Every attempt from the same commit.
    Fixed,
    /// Attempt `i` from the `i`-th commit of a chain, each changing 3 files of its parent.
    Moving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The result is thrown away (`discard`): the next checkout finds the task's edits.
    Discard,
    /// The result is committed and kept at the attempt ref (`finish`), as a worker does.
    Finish,
}

/// The timings of one way over one scenario.
#[derive(Debug, Clone, Default)]
struct Series {
    /// Each checkout's wall time, the first (which creates the slot) left out.
    walls: Vec<Duration>,
    /// CPU time of those checkouts: this process and the git processes it ran.
    cpu: Duration,
    /// How many checkouts took the short way.
    moved: u32,
    /// Why the others did not, when they did not (first reason seen).
    declined: Option<String>,
}

impl Series {
    fn median(&self) -> Duration {
        let mut sorted = self.walls.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }

    fn mean(&self) -> Duration {
        self.walls.iter().sum::<Duration>() / u32::try_from(self.walls.len()).unwrap_or(1).max(1)
    }

    fn cpu_each(&self) -> Duration {
        self.cpu / u32::try_from(self.walls.len()).unwrap_or(1).max(1)
    }
}

/// One scenario: the short way and the thorough way, on two slots taking turns.
#[derive(Debug, Clone)]
struct Scenario {
    start: Start,
    end: End,
    quick: Series,
    thorough: Series,
    /// The first checkout of the short slot, when it created the slot.
    first: Option<Duration>,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone)]
pub(crate) struct WorktreeTimings {
    files: usize,
    attempts: u32,
    scenarios: Vec<Scenario>,
    add_remove_attempts: u32,
    /// `git worktree add --detach`, the same edit, `git worktree remove --force`, per attempt.
    add_remove: Duration,
}

impl fmt::Display for WorktreeTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "{} attempts per scenario on a repository of {} files; per checkout after the \
             first (which creates the slot), wall median / mean, and CPU (br + git):",
            self.attempts, self.files
        )?;
        for s in &self.scenarios {
            let start = match s.start {
                Start::Fixed => "fixed base",
                Start::Moving => "moving tip (3 files per step)",
            };
            let end = match s.end {
                End::Discard => "result discarded",
                End::Finish => "result committed",
            };
            match s.first {
                Some(first) => writeln!(
                    f,
                    "  {start}, {end} (the first checkout, which made the slot: {:.0} ms):",
                    ms(first)
                )?,
                None => writeln!(f, "  {start}, {end}:")?,
            }
            for (name, series) in [("short way", &s.quick), ("thorough way", &s.thorough)] {
                let note = match (&series.declined, series.moved) {
                    (None, 0) => String::new(),
                    (None, moved) => format!("  [{moved} moved]"),
                    (Some(why), moved) => format!("  [{moved} moved; declined: {why}]"),
                };
                writeln!(
                    f,
                    "    {name:<13} {:>6.1} / {:>6.1} ms wall, {:>6.1} ms CPU{note}",
                    ms(series.median()),
                    ms(series.mean()),
                    ms(series.cpu_each()),
                )?;
            }
        }
        let per = self.add_remove / self.add_remove_attempts.max(1);
        write!(
            f,
            "  git worktree add + remove: {:.0} ms per attempt ({} attempts)",
            ms(per),
            self.add_remove_attempts
        )
    }
}

/// Creates a repository of `files` small text files (50 per directory) in `dir`, with one
/// commit on `main`.
pub(crate) fn build_repository(dir: &Path, files: usize) -> Result<Repo, WorktreeError> {
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    Git::new(dir).run(["init", "--quiet", "--initial-branch=main"])?;
    for i in 0..files {
        let sub = dir.join(format!("src/d{:03}", i / 50));
        if i % 50 == 0 {
            std::fs::create_dir_all(&sub).map_err(io_error("create", &sub))?;
        }
        let path = sub.join(format!("f{i:05}.txt"));
        let text = format!("file {i}\n").repeat(20 + i % 80);
        std::fs::write(&path, text).map_err(io_error("write", &path))?;
    }
    let repo = Repo::discover(dir)?;
    let git = repo.own_git(&repo.root)?;
    git.run(["add", "--all"])?;
    git.run(["commit", "--quiet", "--no-verify", "-m", "benchmark base"])?;
    Ok(repo)
}

/// `n` commits on top of `base`, each changing 3 of the repository's files (other ones each
/// time), made with plumbing so that no checkout is touched: what an integration tip looks
/// like as tasks land.
fn moving_tip(repo: &Repo, base: &str, n: u32) -> Result<Vec<String>, WorktreeError> {
    std::fs::create_dir_all(repo.br_dir()).map_err(io_error("create", &repo.br_dir()))?;
    let index = repo.br_dir().join("bench-tip.index");
    let git = |args: &[&str], input: Option<&str>| -> Result<String, WorktreeError> {
        let mut cmd = Command::new("git");
        cmd.args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .current_dir(&repo.root)
        .env("GIT_INDEX_FILE", &index);
        if input.is_some() {
            cmd.stdin(std::process::Stdio::piped());
        }
        cmd.stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(io_error("run git in", &repo.root))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin
                .write_all(text.as_bytes())
                .map_err(io_error("write to git in", &repo.root))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_error("run git in", &repo.root))?;
        assert!(out.status.success(), "git {args:?}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let mut tips = Vec::new();
    let mut tip = base.to_string();
    git(&["read-tree", &tip], None)?;
    for step in 0..n {
        for k in 0..3u32 {
            // Files spread over the tree, never the one the benchmark's task edits.
            let i = 1 + (step * 3 + k) * 97 % 4999;
            let blob = git(
                &["hash-object", "-w", "--stdin"],
                Some(&format!("tip {step}, change {k}\n")),
            )?;
            let path = format!("src/d{:03}/f{i:05}.txt", i / 50);
            git(
                &[
                    "update-index",
                    "--cacheinfo",
                    &format!("100644,{blob},{path}"),
                ],
                None,
            )?;
        }
        let tree = git(&["write-tree"], None)?;
        tip = git(
            &[
                "commit-tree",
                &tree,
                "-p",
                &tip,
                "-m",
                &format!("tip {step}"),
            ],
            None,
        )?;
        tips.push(tip.clone());
    }
    let _ = std::fs::remove_file(&index);
    Ok(tips)
}

/// CPU time used so far by this process and the children it waited for.
pub(crate) fn cpu_so_far() -> Duration {
    let of = |who| {
        getrusage(who).map_or(Duration::ZERO, |u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
            };
            t(u.user_time()) + t(u.system_time())
        })
    };
    of(UsageWho::RUSAGE_SELF) + of(UsageWho::RUSAGE_CHILDREN)
}

/// Times `attempts` attempts of every scenario on `repo`'s HEAD, then plain `git worktree add`
/// and `remove` for `add_remove_attempts`. Leaves two slots behind (reusable, and removable
/// with `reconcile`); each scenario reuses them as a worker would.
pub(crate) fn bench_worktrees(
    repo: &Repo,
    attempts: u32,
    add_remove_attempts: u32,
) -> Result<WorktreeTimings, WorktreeError> {
    let base = repo.resolve_commit("HEAD")?;
    let git = repo.own_git(&repo.root)?;
    let listed = git.run(["ls-files"])?;
    let files = listed.lines().count();
    let first = listed.lines().next().unwrap_or("README").to_string();
    // What a short task does: edit one tracked file and add one.
    let task = |dir: &Path, i: u32| -> Result<(), WorktreeError> {
        let edited = dir.join(&first);
        std::fs::write(&edited, format!("edited by attempt {i}\n"))
            .map_err(io_error("write", &edited))?;
        let added = dir.join(format!("bench-{i}.txt"));
        std::fs::write(&added, "new\n").map_err(io_error("write", &added))
    };
    let tips = moving_tip(repo, &base, attempts)?;

    let mut scenarios = Vec::new();
    for (start, end) in [
        (Start::Fixed, End::Discard),
        (Start::Moving, End::Discard),
        (Start::Moving, End::Finish),
    ] {
        let mut quick = WorktreeSlot::acquire(repo)?;
        let mut thorough = WorktreeSlot::acquire(repo)?;
        thorough.set_reset_policy(ResetPolicy::Thorough);
        let mut scenario = Scenario {
            start,
            end,
            quick: Series::default(),
            thorough: Series::default(),
            first: None,
        };
        for i in 0..attempts {
            let commit = match start {
                Start::Fixed => base.as_str(),
                Start::Moving => tips[i as usize].as_str(),
            };
            let attempt = AttemptSpec {
                session_id: "benchmark",
                session_name: "benchmark",
                session_slug: "benchmark",
                task_id: "bench",
                attempt: i + 1,
                base_commit: commit,
                keep: &[],
            };
            // The two ways take turns, so a burst of load on the VM hits both alike.
            for (way, slot) in [&mut quick, &mut thorough].into_iter().enumerate() {
                let cpu = cpu_so_far();
                let started = Instant::now();
                let dir = slot.checkout(&attempt)?;
                let wall = started.elapsed();
                let cpu = cpu_so_far().saturating_sub(cpu);
                let series = if way == 0 {
                    &mut scenario.quick
                } else {
                    &mut scenario.thorough
                };
                match slot.last_reset() {
                    Some(ResetWay::Created) if way == 0 => scenario.first = Some(wall),
                    Some(ResetWay::Moved) => series.moved += 1,
                    Some(ResetWay::Reset { why }) => {
                        series.declined.get_or_insert_with(|| why.clone());
                    }
                    Some(ResetWay::Created) | None => {}
                }
                // The first checkout may create the slot: a worker pays that once in its life.
                if i > 0 {
                    series.walls.push(wall);
                    series.cpu += cpu;
                }
                task(&dir, i)?;
                match end {
                    End::Discard => slot.discard()?,
                    End::Finish => {
                        slot.finish(&attempt, Keep::AttemptRef)?;
                    }
                }
            }
        }
        // The thorough way's reason is the policy, not the tree: not worth printing.
        scenario.thorough.declined = None;
        scenarios.push(scenario);
    }

    let started = Instant::now();
    for i in 1..=add_remove_attempts {
        let dir = repo.worktrees_dir().join(format!("bench-add-{i}"));
        git.run([
            "worktree".as_ref(),
            "add".as_ref(),
            "--detach".as_ref(),
            "--quiet".as_ref(),
            dir.as_os_str(),
            base.as_ref(),
        ])?;
        task(&dir, i)?;
        git.run([
            "worktree".as_ref(),
            "remove".as_ref(),
            "--force".as_ref(),
            dir.as_os_str(),
        ])?;
    }
    let add_remove = started.elapsed();
    Ok(WorktreeTimings {
        files,
        attempts,
        scenarios,
        add_remove_attempts,
        add_remove,
    })
}
