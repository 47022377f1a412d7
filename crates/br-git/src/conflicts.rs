//! Conflict prediction: whether two task results would merge cleanly, answered by git's merge
//! machinery on objects alone (`git merge-tree --write-tree`), so no working tree, index or ref is
//! touched and it can run while tasks are running.

use std::ffi::OsString;
use std::sync::OnceLock;

use crate::git::{Git, GitError, Repo, failure};

/// `merge-tree --write-tree` came in git 2.38, and its `--merge-base` option in 2.40.
pub const MERGE_TREE_MIN_VERSION: (u32, u32) = (2, 38);
pub const MERGE_BASE_OPTION_MIN_VERSION: (u32, u32) = (2, 40);

/// The installed git's version, asked once per process.
static GIT_VERSION: OnceLock<(u32, u32, u32)> = OnceLock::new();

/// Checks once that git can predict conflicts (with an explicit merge base, if one is given).
pub fn require_merge_tree(repo: &Repo, explicit_base: bool) -> Result<(), GitError> {
    let version = match GIT_VERSION.get() {
        Some(v) => *v,
        None => {
            let v = repo.git().version()?;
            *GIT_VERSION.get_or_init(|| v)
        }
    };
    let (major, minor, patch) = version;
    let (need, feature) = if explicit_base {
        (
            MERGE_BASE_OPTION_MIN_VERSION,
            "conflict prediction with a given merge base (`git merge-tree --merge-base`)",
        )
    } else {
        (
            MERGE_TREE_MIN_VERSION,
            "conflict prediction (`git merge-tree --write-tree`)",
        )
    };
    if (major, minor) < need {
        return Err(GitError::TooOld {
            feature,
            need: format!("{}.{}", need.0, need.1),
            found: format!("{major}.{minor}.{patch}"),
        });
    }
    Ok(())
}

/// The result of merging two commits on objects alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeTree {
    /// They merge cleanly into this tree.
    Clean { tree: String },
    /// These files conflict (sorted). `tree` holds the merge as git left it, conflict markers
    /// and all (see [`conflict_hunks`]).
    Conflicted { files: Vec<String>, tree: String },
}

/// Merges `theirs` into `ours` with `git merge-tree --write-tree`: no working tree, index or ref
/// is touched. With `base`, git merges as if that were their common ancestor; without, git finds
/// it, which is right whenever the two have different bases (a task rerun on top of the
/// integration branch, say). `git` carries the configuration to run with.
pub fn merge_tree(
    repo: &Repo,
    git: &Git,
    base: Option<&str>,
    ours: &str,
    theirs: &str,
) -> Result<MergeTree, GitError> {
    require_merge_tree(repo, base.is_some())?;
    let merge_base = base.map(|b| format!("--merge-base={b}"));
    let mut args: Vec<OsString> = [
        "merge-tree",
        "--write-tree",
        "--name-only",
        "--no-messages",
        "-z",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(merge_base.map(OsString::from));
    args.extend(
        ["--end-of-options", ours, theirs]
            .iter()
            .map(OsString::from),
    );
    let out = git.output(&args)?;
    // 0: clean; 1: conflicts; anything else: git could not do the merge at all.
    match out.status.code() {
        Some(0) => {
            let tree = out
                .stdout
                .split(|b| *b == 0)
                .next()
                .map(|t| String::from_utf8_lossy(t).trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| failure(&args, &out))?;
            Ok(MergeTree::Clean { tree })
        }
        Some(1) => Ok(MergeTree::Conflicted {
            files: parse_conflicted_files(&out.stdout),
            tree: out
                .stdout
                .split(|b| *b == 0)
                .next()
                .map(|t| String::from_utf8_lossy(t).trim().to_string())
                .unwrap_or_default(),
        }),
        _ => Err(failure(&args, &out)),
    }
}

/// The files that would conflict if `theirs` were merged into `ours`: sorted, empty when they
/// merge cleanly (see [`merge_tree`] for `base`).
pub fn predict_conflicts(
    repo: &Repo,
    base: Option<&str>,
    ours: &str,
    theirs: &str,
) -> Result<Vec<String>, GitError> {
    Ok(match merge_tree(repo, &repo.git(), base, ours, theirs)? {
        MergeTree::Clean { .. } => Vec::new(),
        MergeTree::Conflicted { files, .. } => files,
    })
}

/// The conflicting hunks of `files` in a conflicted merge `tree`, as git marks them (`<<<<<<<`
/// … `>>>>>>>`), each headed by its file, at most `max_bytes` in all: what a task rerun after a
/// conflict is shown, so that it can do differently.
pub fn conflict_hunks(git: &Git, tree: &str, files: &[String], max_bytes: usize) -> String {
    let mut out = String::new();
    for file in files {
        let Ok(blob) = git.output([
            "cat-file".to_string(),
            "-p".to_string(),
            format!("{tree}:{file}"),
        ]) else {
            continue;
        };
        if !blob.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&blob.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if !lines[i].starts_with("<<<<<<<") {
                i += 1;
                continue;
            }
            let end = lines[i..]
                .iter()
                .position(|l| l.starts_with(">>>>>>>"))
                .map_or(lines.len(), |e| i + e + 1);
            let hunk = format!(
                "--- {file} (line {})\n{}\n",
                i + 1,
                lines[i..end].join("\n")
            );
            if out.len() + hunk.len() > max_bytes {
                out.push_str("… (more conflicts left out)\n");
                return out;
            }
            out.push_str(&hunk);
            i = end;
        }
    }
    out
}

/// `-z --name-only --no-messages` output: the tree id, then each conflicted path, each followed
/// by NUL, and an empty field if informational messages would follow.
fn parse_conflicted_files(out: &[u8]) -> Vec<String> {
    let mut files: Vec<String> = out
        .split(|b| *b == 0)
        .skip(1)
        .take_while(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    files.sort();
    files.dedup();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicted_files_are_read_from_nul_separated_output() {
        let out = b"d1d16218decc0c71c8732588ccb69e8d0ccb880a\0f\0odd\nname\0f\0";
        assert_eq!(parse_conflicted_files(out), ["f", "odd\nname"]);
        assert!(parse_conflicted_files(b"e154a230\0").is_empty());
        assert_eq!(parse_conflicted_files(b"e154\0a\0\0message\0"), ["a"]);
    }
}

/// A finished task's branch and the paths it changed relative to its base.
#[derive(Debug, Clone)]
pub struct FinishedBranch {
    pub task: String,
    pub branch: String,
    pub changed: Vec<String>,
}

/// Whether two sets of changed paths touch a common path, or one a directory of the other's —
/// the only way two branches from the same base can conflict.
pub fn paths_meet(a: &[String], b: &[String]) -> bool {
    a.iter().any(|p| {
        b.iter().any(|q| {
            p == q
                || q.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
                || p.strip_prefix(q.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    })
}

/// The finished branches (by task id, or `integration`) that `mine` would not merge with
/// cleanly, and the conflicting files of each. Only branches whose changes meet `mine`'s are
/// merged; the integration branch, when it exists, always is. Git finds each pair's merge base:
/// a task rerun on the integration branch does not share the session's base with the others.
pub fn conflicting_branches(
    repo: &Repo,
    mine: &FinishedBranch,
    others: &[FinishedBranch],
    integration_ref: &str,
) -> Result<Vec<(String, Vec<String>)>, GitError> {
    let mut found = Vec::new();
    for other in others
        .iter()
        .filter(|o| paths_meet(&mine.changed, &o.changed))
    {
        let files = predict_conflicts(repo, None, &mine.branch, &other.branch)?;
        if !files.is_empty() {
            found.push((other.task.clone(), files));
        }
    }
    let git = repo.git();
    let exists = git
        .output(["rev-parse", "--verify", "--quiet", integration_ref])?
        .status
        .success();
    if exists {
        let files = predict_conflicts(repo, None, &mine.branch, integration_ref)?;
        if !files.is_empty() {
            found.push(("integration".to_string(), files));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod paths_tests {
    use super::paths_meet;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn paths_meet_on_equal_paths_and_directories() {
        assert!(paths_meet(&v(&["a.txt"]), &v(&["b.txt", "a.txt"])));
        assert!(paths_meet(&v(&["src"]), &v(&["src/x.rs"])));
        assert!(paths_meet(&v(&["src/x.rs"]), &v(&["src"])));
        assert!(!paths_meet(&v(&["src/x.rs"]), &v(&["src/xy.rs"])));
        assert!(!paths_meet(&v(&["src"]), &v(&["srcs/a"])));
        assert!(!paths_meet(&v(&[]), &v(&["a"])));
    }
}

/// The tasks whose landings between `from` (exclusive) and `to` on the integration branch
/// changed any of `files`, oldest first: who a task that started at `from` and now conflicts
/// at `to` collided with. Each landing is a merge commit whose `Br-Task` trailer names its task.
pub fn landed_touching(
    git: &Git,
    from: &str,
    to: &str,
    files: &[String],
) -> Result<Vec<String>, GitError> {
    let range = format!("{from}..{to}");
    let out = git.run([
        "log",
        "--first-parent",
        "--reverse",
        "--format=%H %(trailers:key=Br-Task,valueonly,separator=%x2C)",
        range.as_str(),
    ])?;
    let mut found: Vec<String> = Vec::new();
    for line in out.lines() {
        let Some((commit, task)) = line.split_once(' ') else {
            continue;
        };
        let task = task.trim();
        if task.is_empty() || found.iter().any(|f| f == task) {
            continue;
        }
        let parent = format!("{commit}^1");
        let changed = git.run([
            "diff-tree",
            "--no-commit-id",
            "--name-only",
            "-r",
            parent.as_str(),
            commit,
        ])?;
        let changed: Vec<String> = changed.lines().map(str::to_string).collect();
        if paths_meet(files, &changed) {
            found.push(task.to_string());
        }
    }
    Ok(found)
}
