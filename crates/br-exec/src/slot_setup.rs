//! What an attempt's directory gets besides its checkout, before its command starts: the
//! untracked files the plan copies in (`copy`, never committed), a block of ports no other
//! running attempt on the host holds (`ports`), and for a coding agent its own config
//! directory (`config_env`, seeded from `config_from`), so no two running agents share one and
//! the user's own is never written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use br_core::agent::AgentProfile;
use br_git::git::Repo;
use br_store::ClaimedTask;

/// The first port of the first block, and each block's width: blocks are fixed so that attempts
/// asking for different numbers of ports still never overlap.
const PORT_FLOOR: u32 = 20_000;
const PORT_BLOCK: u32 = 1000;
/// Blocks up to port 65,000: at most this many attempts with ports at once on a host.
const PORT_BLOCKS: u32 = 45;

/// Entries of an agent's config directory that are its history, not its config: not copied
/// into each slot (they can be gigabytes, and an attempt needs none of them).
const HISTORY: &[&str] = &[
    "projects",
    "sessions",
    "logs",
    "todos",
    "shell-snapshots",
    "statsig",
    "history.jsonl",
    "log",
];

/// What an attempt got; dropping it gives its port block back.
#[derive(Debug, Default)]
pub(crate) struct SlotExtras {
    /// Variables for the attempt's environment (`BR_PORT_BASE`, `BR_PORT_COUNT`, the agent's
    /// `config_env`).
    pub(crate) env: BTreeMap<String, String>,
    /// Files copied in, relative to the attempt's directory: removed again before its result
    /// is committed.
    pub(crate) copied: Vec<PathBuf>,
    /// Held while the attempt runs: the OS lock on its port block.
    _ports: Option<File>,
    /// When the slot's `setup` runs first: the lines that run it before the task's command,
    /// and what marks it done.
    pub(crate) setup: Option<Setup>,
}

/// A `setup` that runs before this attempt's command, in the same process group and under the
/// same lease, timeout and output limit: its own shell, so its text needs no quoting.
#[derive(Debug)]
pub(crate) struct Setup {
    /// Prepended to the task's command.
    pub(crate) prelude: String,
    /// Made by the prelude once `setup` exited 0.
    mark: PathBuf,
    /// What it was run for: the command and its inputs' content.
    key: String,
    record: PathBuf,
    command: String,
}

impl SlotExtras {
    /// After the attempt: a setup that ran to success is recorded for the slot; one that did
    /// not is said instead of the task's own outcome (the task never ran).
    pub(crate) fn setup_outcome(&self, outcome: br_core::Outcome) -> br_core::Outcome {
        let Some(setup) = &self.setup else {
            return outcome;
        };
        if setup.mark.exists() {
            let _ = std::fs::remove_file(&setup.mark);
            if let Some(dir) = setup.record.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&setup.record, &setup.key);
            return outcome;
        }
        match outcome {
            br_core::Outcome::Failed { exit_code } => br_core::Outcome::SpawnFailed {
                reason: format!("setup `{}` failed (exit {exit_code})", setup.command),
            },
            other => other,
        }
    }
}

/// Prepares `dir` (an attempt's worktree, or the repository itself in shared isolation) for
/// `task`. `slot` names the directory's owner for its agent config (a slot, or a worker).
pub(crate) fn prepare(
    repo: &Repo,
    dir: &Path,
    slot: &str,
    task: &ClaimedTask,
) -> Result<SlotExtras, String> {
    let mut extras = SlotExtras::default();
    // In shared isolation the "copy" would be the file itself.
    if dir != repo.root {
        extras.copied = copy_in(&repo.root, dir, &task.slot_setup.copy)?;
    }
    if task.slot_setup.ports > 0 {
        let (base, lock) = port_block()?;
        extras._ports = Some(lock);
        extras.env.insert("BR_PORT_BASE".into(), base.to_string());
        extras
            .env
            .insert("BR_PORT_COUNT".into(), task.slot_setup.ports.to_string());
    }
    if let Some(command) = &task.slot_setup.setup {
        extras.setup = setup_for(repo, dir, slot, task, command);
        if extras.setup.is_some() {
            extras
                .env
                .insert("BR_SETUP_COMMAND".into(), command.clone());
        }
    }
    if let Some(agent) = &task.agent
        && let Some(var) = &agent.config_env
    {
        let config = agent_config(repo, slot, agent)?;
        extras
            .env
            .insert(var.clone(), config.to_string_lossy().into_owned());
    }
    Ok(extras)
}

/// Whether `setup` must run in this slot before the attempt: always when nothing survives
/// between attempts (no `keep`: a slot's ignored files are removed), else when it never ran
/// to success here for this command and these `setup_inputs` contents.
fn setup_for(
    repo: &Repo,
    dir: &Path,
    slot: &str,
    task: &ClaimedTask,
    command: &str,
) -> Option<Setup> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    command.hash(&mut hasher);
    for input in &task.slot_setup.setup_inputs {
        input.hash(&mut hasher);
        std::fs::read(dir.join(input)).ok().hash(&mut hasher);
    }
    let key = format!("{:016x}", hasher.finish());
    let record = repo.br_dir().join("setup").join(format!("{slot}.done"));
    let done = std::fs::read_to_string(&record).is_ok_and(|k| k == key);
    if done && !task.keep.is_empty() {
        return None;
    }
    let mark = task.log_path.with_extension("setup-done");
    let _ = std::fs::remove_file(&mark);
    let prelude = format!(
        "sh -c \"$BR_SETUP_COMMAND\" || exit $?\n: > '{}'\n",
        mark.to_string_lossy().replace('\'', "'\\''")
    );
    Some(Setup {
        prelude,
        mark,
        key,
        record,
        command: command.to_string(),
    })
}

/// Removes what `copy` put in `dir`, so that the attempt's result never holds it.
pub(crate) fn remove_copies(dir: &Path, extras: &SlotExtras) {
    for rel in &extras.copied {
        let path = dir.join(rel);
        let gone = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        // Already gone (the task removed it) is what was wanted.
        let _ = gone;
    }
}

/// Copies the checkout's paths (files or directories; globs match at any depth under the root,
/// never inside `.git`) into `dir`. A path the checkout does not have is skipped: `.env` may
/// exist on one machine and not another.
fn copy_in(root: &Path, dir: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut copied = Vec::new();
    for pattern in patterns {
        for rel in matches(root, pattern)? {
            let (from, to) = (root.join(&rel), dir.join(&rel));
            // What the checkout already has (tracked at the start commit, or a kept cache) is
            // the attempt's own: copying over it, and removing it afterwards, would change it.
            if to.symlink_metadata().is_ok() {
                continue;
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("copy {}: {e}", rel.display()))?;
            }
            copy_tree(&from, &to, &[]).map_err(|e| format!("copy {}: {e}", rel.display()))?;
            copied.push(rel);
        }
    }
    Ok(copied)
}

/// The paths under `root` that `pattern` names: itself when it has no glob characters.
fn matches(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    if !pattern.contains(['*', '?', '[', '{']) {
        let path = root.join(pattern);
        return Ok(if path.symlink_metadata().is_ok() {
            vec![PathBuf::from(pattern)]
        } else {
            Vec::new()
        });
    }
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("copy pattern {pattern}: {e}"))?
        .compile_matcher();
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && name == ".git" {
                continue;
            }
            let child = rel.join(&name);
            if glob.is_match(&child) {
                found.push(child);
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Copies a file, a symlink (as a link) or a directory tree, leaving out top-level `skip`
/// names of a directory. Sockets and other special files are left out.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> std::io::Result<()> {
    let meta = from.symlink_metadata()?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        let _ = std::fs::remove_file(to);
        return std::os::unix::fs::symlink(target, to);
    }
    if meta.is_file() {
        std::fs::copy(from, to)?;
        return Ok(());
    }
    if !meta.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        copy_tree(&entry.path(), &to.join(&name), &[])?;
    }
    Ok(())
}

/// The agent's own config directory for this slot: `<common>/br/agents/<slot>/<agent>`, made
/// (private to the user) and seeded from `config_from` once; a source that does not exist
/// gives an empty directory.
fn agent_config(repo: &Repo, slot: &str, agent: &AgentProfile) -> Result<PathBuf, String> {
    let dir = repo.br_dir().join("agents").join(slot).join(&agent.name);
    let seeded = dir.join(".br-seeded");
    if seeded.exists() {
        return Ok(dir);
    }
    create_private_dirs(&dir).map_err(|e| format!("agent config {}: {e}", dir.display()))?;
    if let Some(from) = agent.config_from.as_deref().map(expand_home)
        && from.is_dir()
    {
        copy_tree(&from, &dir, HISTORY).map_err(|e| {
            format!(
                "cannot copy {}'s config from {}: {e}",
                agent.name,
                from.display()
            )
        })?;
    }
    std::fs::write(&seeded, "").map_err(|e| format!("agent config {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `~/x` is the worker's home's `x`.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A block of ports no other running attempt on this host holds: the first block whose OS lock
/// (a file in the user's runtime directory) is free. Held until the returned file is dropped —
/// or the process dies, however it dies.
fn port_block() -> Result<(u32, File), String> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("br-ports-{}", rustix::process::getuid().as_raw()));
    create_private_dirs(&dir).map_err(|e| format!("ports: {}: {e}", dir.display()))?;
    for k in 0..PORT_BLOCKS {
        let base = PORT_FLOOR + k * PORT_BLOCK;
        let path = dir.join(format!("{base}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("ports: {}: {e}", path.display()))?;
        if file.try_lock().is_ok() {
            return Ok((base, file));
        }
    }
    Err(format!(
        "no free block of ports: {PORT_BLOCKS} attempts on this host hold one"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_attempts_never_hold_the_same_port_block() {
        let (a, _held_a) = port_block().expect("a block");
        let (b, held_b) = port_block().expect("another block");
        assert_ne!(a, b);
        drop(held_b);
        let (c, _held_c) = port_block().expect("a block again");
        assert_eq!(b, c, "a block given back is handed out again");
    }

    #[test]
    fn copy_takes_files_directories_and_globs_and_skips_what_is_missing() {
        let root = tempfile::tempdir().expect("root");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(root.path().join(".env"), "SECRET=1\n").expect("write");
        std::fs::create_dir_all(root.path().join("config/local")).expect("mkdir");
        std::fs::write(root.path().join("config/a.local"), "a").expect("write");
        std::fs::write(root.path().join("config/b.txt"), "b").expect("write");
        std::fs::write(root.path().join("config/local/x"), "x").expect("write");
        let copied = copy_in(
            root.path(),
            dir.path(),
            &[
                ".env".into(),
                "config/*.local".into(),
                "config/local".into(),
                "missing.env".into(),
            ],
        )
        .expect("copied");
        assert_eq!(
            copied,
            [
                PathBuf::from(".env"),
                PathBuf::from("config/a.local"),
                PathBuf::from("config/local")
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".env")).expect("read"),
            "SECRET=1\n"
        );
        assert!(dir.path().join("config/local/x").exists());
        assert!(!dir.path().join("config/b.txt").exists());
        let extras = SlotExtras {
            copied,
            ..SlotExtras::default()
        };
        remove_copies(dir.path(), &extras);
        assert!(!dir.path().join(".env").exists());
        assert!(!dir.path().join("config/local").exists());
    }
}
