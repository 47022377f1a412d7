//! Bringing a slot's tree to exactly one commit, and checking that it is there.
//!
//! The promise: HEAD detached at the commit; the index and every tracked file as the commit has
//! them; no untracked file; no ignored file but those the plan's `keep` patterns name (build
//! caches, which an attempt may reuse).
//!
//! Two ways keep it. [`move_to`] is the usual one: attempts start from an integration tip that
//! moves by small steps, so the slot's previous commit and the next differ in a few files. It
//! looks at every tracked file once (`git status`, which compares each with the index, and the
//! index with HEAD), then rewrites only the paths that differ from the target: the ones
//! `git status` found changed, and the ones the two commits change (`git diff-tree`, then
//! `git restore` of just those paths); `git clean` removes the rest. Anything it does not handle
//! — an unborn HEAD, unmerged entries, submodules, entries marked assume-unchanged or
//! skip-worktree (whose changes `git status` cannot see), and (the slot checks) a merge,
//! cherry-pick or revert left in progress — it declines, and the caller takes the thorough way:
//! [`reset_hard`] then [`verify`], which visit every file. Both clean the same way.
//!
//! `git read-tree -m -u HEAD <commit>` also writes only what changed, but it builds the whole
//! index again: on the benchmark's 5,000-file repository it took 16 ms of CPU against 18 for
//! `git reset --hard`, while `git diff-tree` and a `git restore` limited to the changed paths
//! took 10 together.

use std::collections::HashSet;
use std::path::Path;

use super::WorktreeError;
use crate::git::{Git, GitError};

/// How `move_to` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Move {
    /// The slot is at the commit.
    Done,
    /// The slot holds something the short way does not handle; why, for the record.
    Declined(String),
}

/// `git status` as [`verify`] asks it: every untracked file (`all`), ignored paths where a
/// pattern matches them (`matching`: an ignored directory is one entry, not walked into, so a
/// kept `target/` of 100,000 files costs nothing), renames as a deletion and an addition,
/// submodules compared in full.
const STATUS: &[&str] = &[
    "status",
    "--porcelain=v2",
    "--branch",
    "-z",
    "--untracked-files=all",
    "--ignored=matching",
    "--no-renames",
    "--ignore-submodules=none",
];

/// The same for [`move_to`], without untracked and ignored files: `git clean` walks them
/// anyway, and removes them, whatever they are.
const TRACKED_STATUS: &[&str] = &[
    "status",
    "--porcelain=v2",
    "--branch",
    "-z",
    "--untracked-files=no",
    "--no-renames",
    "--ignore-submodules=none",
];

/// Moves the slot `git` runs in to `base`, rewriting only what differs; see the module docs.
/// `Err` means git failed; the caller then takes the thorough way too.
pub(crate) fn move_to(git: &Git, base: &str, keep: &[String]) -> Result<Move, WorktreeError> {
    let status = Status::parse(&git.run_raw(TRACKED_STATUS)?);
    let Some(head) = &status.head else {
        return Ok(Move::Declined("HEAD is unborn".into()));
    };
    if let Some(path) = status.unmerged.first() {
        return Ok(Move::Declined(format!("{} is unmerged", shown(path))));
    }
    if let Some(path) = &status.submodule {
        return Ok(Move::Declined(format!("submodule {} changed", shown(path))));
    }
    if let Some(path) = flagged_entries(git)?.first() {
        return Ok(Move::Declined(format!(
            "{} is marked assume-unchanged or skip-worktree",
            shown(path)
        )));
    }

    let mut paths = status.changed;
    if head != base {
        let diff = git.run_raw([
            "diff-tree",
            "-r",
            "-z",
            "--name-only",
            "--no-renames",
            "--no-commit-id",
            head.as_str(),
            base,
        ])?;
        paths.extend(nul_fields(&diff).map(<[u8]>::to_vec));
    }
    let paths = without_descendants(paths);
    if !paths.is_empty() {
        // No overlay: a path the commit lacks goes from index and tree. Literal pathspecs: a
        // file named `*.rs` is that file. When one path of a pair is a file and the other a
        // directory, only the outer one is named, and it covers both.
        let source = format!("--source={base}");
        git.run_with_input(
            [
                "--literal-pathspecs",
                "restore",
                "--quiet",
                "--no-overlay",
                source.as_str(),
                "--staged",
                "--worktree",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
            ],
            &paths.join(&0u8),
        )?;
    }
    if head != base || !status.detached {
        detach_at(git, base)?;
    }
    // `git clean` exits non-zero when it cannot remove something, so what it leaves is only
    // what `keep` names.
    clean(git, keep)?;
    Ok(Move::Done)
}

/// The thorough way: detaches HEAD at `base`, resets the index and every tracked file, and
/// cleans. [`verify`] then checks the result.
pub(crate) fn reset_hard(git: &Git, base: &str, keep: &[String]) -> Result<(), WorktreeError> {
    // Detach first: a reset with HEAD on a branch the task created would move that branch.
    detach_at(git, base)?;
    git.run(["reset", "--hard", "--quiet", "--no-recurse-submodules"])?;
    clean(git, keep)?;
    Ok(())
}

fn detach_at(git: &Git, base: &str) -> Result<(), GitError> {
    // git refuses to point HEAD at anything but a commit, so this also checks `base`.
    git.run([
        "update-ref",
        "--no-deref",
        "-m",
        "br: checkout",
        "HEAD",
        base,
    ])
    .map(drop)
}

/// Removes every untracked file, and every ignored one that no `keep` pattern names.
///
/// Without `keep`, one `git clean -ffdx` (twice `-f`: nested repositories the task cloned or
/// initialised go too). With it, two passes: `git clean -ffd` under the repository's ignore
/// rules removes the untracked files that are not ignored — wherever they are, so a file under
/// `target/` that no `.gitignore` ignores goes too; then `git clean -ffdx --exclude=<pattern>…`
/// removes the rest but what the patterns match. With `-x` git uses no ignore rules but the
/// `--exclude` ones, so what they match counts as ignored and stays, and git does not walk into
/// it. A kept path inside an ignored directory (`build/cache/` under an ignored `build/`) stays
/// too: git walks into `build/`, since it is not excluded, and removes the rest of it.
pub(crate) fn clean(git: &Git, keep: &[String]) -> Result<(), GitError> {
    if keep.is_empty() {
        return git.run(["clean", "-ffdxq"]).map(drop);
    }
    git.run(["clean", "-ffdq"])?;
    git.run(clean_keeping(keep, "-ffdxq")).map(drop)
}

/// `git clean <flags> --exclude=<pattern>…`.
fn clean_keeping(keep: &[String], flags: &str) -> Vec<String> {
    let mut args = vec!["clean".to_string(), flags.to_string()];
    args.extend(keep.iter().map(|k| format!("--exclude={k}")));
    args
}

/// Checks the promise (see the module docs) after [`reset_hard`] or a fresh `git worktree add`.
///
/// Modified tracked files are tolerated: right after `reset --hard` the index is the base's
/// tree, and a file that still shows as modified is one git itself cannot check out cleanly in
/// this repository (line-ending normalisation of a file committed with CRLF, two names
/// differing only in case); a fresh `git worktree add` shows the same, and refusing would make
/// every attempt fail.
pub(crate) fn verify(
    git: &Git,
    dir: &Path,
    base: &str,
    keep: &[String],
) -> Result<(), WorktreeError> {
    let status = Status::parse(&git.run_raw(STATUS)?);
    let mut left: Vec<String> = status
        .unmerged
        .iter()
        .map(|p| format!("unmerged {}", shown(p)))
        .chain(
            status
                .untracked
                .iter()
                .map(|p| format!("untracked {}", shown(p))),
        )
        .collect();
    if !status.ignored.is_empty() {
        if keep.is_empty() {
            left.extend(
                status
                    .ignored
                    .iter()
                    .map(|p| format!("ignored {}", shown(p))),
            );
        } else {
            // What the second pass of `clean` would still remove: nothing, if all that is left
            // is kept.
            let out = git.run(clean_keeping(keep, "-ndx"))?;
            left.extend(
                out.lines()
                    .filter_map(|l| l.strip_prefix("Would remove "))
                    .map(|p| format!("ignored {p}")),
            );
        }
    }
    left.extend(
        flagged_entries(git)?
            .iter()
            .map(|p| format!("assume-unchanged or skip-worktree {}", shown(p))),
    );
    if status.head.as_deref() == Some(base) && status.detached && left.is_empty() {
        return Ok(());
    }
    let status = if left.is_empty() {
        format!(
            "HEAD is {} ({})",
            status.head.as_deref().unwrap_or("unborn"),
            if status.detached {
                "detached"
            } else {
                "on a branch"
            }
        )
    } else {
        let shown: Vec<_> = left.iter().take(5).map(String::as_str).collect();
        format!("{} paths left over: {}", left.len(), shown.join(", "))
    };
    Err(WorktreeError::NotPristine {
        path: dir.to_path_buf(),
        base: base.to_string(),
        status,
    })
}

/// Index entries whose changes `git status` cannot see: marked assume-unchanged (git then
/// trusts the entry without looking at the file) or skip-worktree (git ignores the file).
/// A task can set either with `git update-index` or `git sparse-checkout`.
fn flagged_entries(git: &Git) -> Result<Vec<Vec<u8>>, GitError> {
    // `-v` tags each entry: `H` for a plain cached one, lowercase when assume-unchanged, `S`
    // when skip-worktree.
    let out = git.run_raw(["ls-files", "-v", "-z"])?;
    Ok(nul_fields(&out)
        .filter(|f| !f.starts_with(b"H "))
        .map(|f| f.get(2..).unwrap_or_default().to_vec())
        .collect())
}

/// What `git status` (with [`STATUS`]'s options) says about a slot.
#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    /// HEAD's commit; `None` when HEAD is unborn.
    head: Option<String>,
    detached: bool,
    /// Tracked paths whose index entry or file differs from HEAD.
    changed: Vec<Vec<u8>>,
    /// A changed path that is a submodule, if any.
    submodule: Option<Vec<u8>>,
    unmerged: Vec<Vec<u8>>,
    untracked: Vec<Vec<u8>>,
    /// Ignored paths; a directory ends with `/`.
    ignored: Vec<Vec<u8>>,
}

impl Status {
    /// Parses `git status --porcelain=v2 --branch -z` (see git-status(1), "Porcelain Format
    /// Version 2"). Paths are bytes: a name need not be UTF-8.
    fn parse(out: &[u8]) -> Status {
        let mut status = Status::default();
        let mut fields = nul_fields(out);
        while let Some(field) = fields.next() {
            let words = |n: usize| field.splitn(n, |b| *b == b' ').collect::<Vec<_>>();
            match field.first() {
                Some(b'#') => {
                    let text = String::from_utf8_lossy(field);
                    if let Some(oid) = text.strip_prefix("# branch.oid ") {
                        status.head = (oid != "(initial)").then(|| oid.to_string());
                    } else if text == "# branch.head (detached)" {
                        status.detached = true;
                    }
                }
                // `1 XY sub mH mI mW hH hI path`; `2 … X<score> path` followed by a field
                // with the original path (not printed with `--no-renames`, handled anyway).
                Some(kind @ (b'1' | b'2')) => {
                    let n = if *kind == b'1' { 9 } else { 10 };
                    let words = words(n);
                    if let Some(path) = words.get(n - 1) {
                        if words.get(2).is_some_and(|sub| sub.starts_with(b"S")) {
                            status.submodule.get_or_insert_with(|| path.to_vec());
                        }
                        status.changed.push(path.to_vec());
                    }
                    if *kind == b'2'
                        && let Some(original) = fields.next()
                    {
                        status.changed.push(original.to_vec());
                    }
                }
                // `u XY sub m1 m2 m3 mW h1 h2 h3 path`
                Some(b'u') => {
                    if let Some(path) = words(11).get(10) {
                        status.unmerged.push(path.to_vec());
                    }
                }
                Some(b'?') => status
                    .untracked
                    .push(field.get(2..).unwrap_or_default().to_vec()),
                Some(b'!') => status
                    .ignored
                    .push(field.get(2..).unwrap_or_default().to_vec()),
                _ => {}
            }
        }
        status
    }
}

fn nul_fields(out: &[u8]) -> impl Iterator<Item = &[u8]> {
    out.split(|b| *b == 0).filter(|f| !f.is_empty())
}

/// The paths without any that lie under another of them (`d/y` when `d` is there too: `d` is
/// a file on one side and a directory on the other). `git restore` given both would fail on the
/// inner one, which its own handling of `d` has already replaced; the pathspec `d` covers `d/y`.
fn without_descendants(paths: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let all: HashSet<&[u8]> = paths.iter().map(Vec::as_slice).collect();
    let mut kept: Vec<Vec<u8>> = all
        .iter()
        .filter(|p| !under_any(p, &all))
        .map(|p| p.to_vec())
        .collect();
    kept.sort();
    kept
}

/// Whether a directory above `path` is one of `paths`.
fn under_any(path: &[u8], paths: &HashSet<&[u8]>) -> bool {
    path.iter()
        .enumerate()
        .any(|(i, b)| *b == b'/' && paths.contains(&path[..i]))
}

fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_kind() {
        let out = b"# branch.oid 0123abcd\0# branch.head (detached)\0\
            1 .M N... 100644 100644 100644 aaaa aaaa a file.txt\0\
            1 M. S.M. 160000 160000 160000 bbbb cccc sub\0\
            2 R. N... 100644 100644 100644 dddd dddd R100 new name\0old name\0\
            u UU N... 100644 100644 100644 100644 e e e both.txt\0\
            ? new/file\0! target/\0";
        let status = Status::parse(out);
        assert_eq!(
            status,
            Status {
                head: Some("0123abcd".into()),
                detached: true,
                changed: vec![
                    b"a file.txt".to_vec(),
                    b"sub".to_vec(),
                    b"new name".to_vec(),
                    b"old name".to_vec()
                ],
                submodule: Some(b"sub".to_vec()),
                unmerged: vec![b"both.txt".to_vec()],
                untracked: vec![b"new/file".to_vec()],
                ignored: vec![b"target/".to_vec()],
            }
        );
        let unborn = Status::parse(b"# branch.oid (initial)\0# branch.head main\0");
        assert_eq!(unborn.head, None);
        assert!(!unborn.detached);
    }

    #[test]
    fn paths_under_another_path_are_dropped() {
        let paths = ["d/y", "d", "d-x", "a/b", "d/z/w", "a/b", "e/f"]
            .map(|p| p.as_bytes().to_vec())
            .to_vec();
        let kept: Vec<String> = without_descendants(paths)
            .iter()
            .map(|p| shown(p))
            .collect();
        assert_eq!(kept, ["a/b", "d", "d-x", "e/f"]);
    }
}
