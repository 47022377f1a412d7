//! "Is this ref merged?": what `br cleanup` asks before it deletes anything. A task branch or
//! attempt ref goes only when every commit it holds is in the session's integration branch or
//! its base, and the integration branch only when a branch outside `br/` contains it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use br_core::TaskId;

use crate::git::{Git, GitError, Repo};
use crate::refs::{RefError, delete_ref, integration_ref, is_ancestor, resolve_ref, short_branch};
use crate::remote::fetched_ref;
use crate::worktree::list_worktrees;

/// The refs of one session, as br names them.
#[derive(Debug, Clone, Copy)]
pub struct SessionRefs<'a> {
    pub session_id: &'a str,
    pub session_slug: &'a str,
    /// The commit the session started from, when it has one.
    pub base_commit: Option<&'a str>,
}

/// What cleanup does with one ref of a session it deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefFate {
    /// The full ref name.
    pub reference: String,
    pub commit: String,
    pub action: RefAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefAction {
    /// Every commit it holds is also in `merged_into` (the integration branch, the base, or for
    /// the integration branch itself a branch outside `br/`): deleting it loses nothing.
    Delete { merged_into: String },
    /// It holds `commits` commits that are in neither the integration branch nor the base.
    KeepUnmerged { commits: u32 },
    /// The integration branch, which no branch outside `br/` contains yet.
    KeepIntegration,
    /// Checked out in a worktree: br never deletes a branch under a checkout.
    KeepCheckedOut { worktree: PathBuf },
    /// Under the session's branch prefix but not a branch br makes (not a task id, not
    /// `integration`): not br's to delete.
    KeepForeign,
}

impl RefAction {
    pub fn is_delete(&self) -> bool {
        matches!(self, RefAction::Delete { .. })
    }
}

/// Decides, for each of the session's refs — its task branches `br/<slug>/<task>` (`tasks` are
/// its task ids), its attempt refs `refs/br/attempts/<session-id>/…` and its integration branch —
/// whether deleting it would lose work. Changes nothing. Branches under the session's prefix that
/// are not a task's are left alone. The integration branch comes last, so deleting in order never
/// leaves a task branch judged against an integration branch that is already gone.
pub fn session_ref_fates(
    repo: &Repo,
    session: &SessionRefs<'_>,
    tasks: &[TaskId],
) -> Result<Vec<RefFate>, GitError> {
    let checked_out: BTreeMap<String, PathBuf> = list_worktrees(repo)?
        .into_iter()
        .filter(|w| !w.prunable)
        .filter_map(|w| w.branch.map(|b| (b, w.path)))
        .collect();
    let git = repo.git();
    // The integration branch goes once a branch here outside `br/` holds it.
    let outside = |commit: &str| -> Result<Option<String>, GitError> {
        Ok(branches_containing(&git, commit)?
            .into_iter()
            .find(|b| !b.starts_with("refs/heads/br/"))
            .map(|b| short_branch(&b).to_string()))
    };
    fates_of(repo, session, tasks, str::to_owned, &checked_out, &outside)
}

/// The same rule for the session's refs on its git remote, judged on the copies the last
/// [`Remote::fetch_session`](crate::remote::Remote::fetch_session) made here
/// (`refs/br/remote/…`): its task branches, attempt refs, landing candidates and integration
/// branch there. Each fate's `reference` is the copy; [`remote_name`] is the remote's name for
/// it. The remote's integration branch goes only when one of the remote's own branches outside
/// `br/` (`remote_heads`: name and commit, as `git ls-remote --heads` lists them) contains it —
/// a `main` merged here but not pushed does not count, or the remote would be left without the
/// work; no checkout holds a remote ref.
pub fn remote_ref_fates(
    repo: &Repo,
    session: &SessionRefs<'_>,
    tasks: &[TaskId],
    remote_heads: &[(String, String)],
) -> Result<Vec<RefFate>, GitError> {
    let git = repo.git();
    let outside = |commit: &str| -> Result<Option<String>, GitError> {
        for (name, head) in remote_heads {
            // A head whose commit is not here cannot be shown to hold it: it stays.
            if name.starts_with("refs/heads/br/") || !has_commit(&git, head)? {
                continue;
            }
            if is_ancestor(&git, commit, head)? {
                return Ok(Some(short_branch(name).to_string()));
            }
        }
        Ok(None)
    };
    fates_of(
        repo,
        session,
        tasks,
        fetched_ref,
        &BTreeMap::new(),
        &outside,
    )
}

/// Whether this repository has `commit`.
fn has_commit(git: &Git, commit: &str) -> Result<bool, GitError> {
    let spec = format!("{commit}^{{commit}}");
    let out = git.output(["cat-file", "-e", spec.as_str()])?;
    Ok(out.status.success())
}

/// The remote's name of a ref copied here as `copy` (the inverse of
/// [`fetched_ref`]).
pub fn remote_name(copy: &str) -> String {
    let rest = copy.strip_prefix("refs/br/remote/").unwrap_or(copy);
    format!("refs/{rest}")
}

/// The fates of a session's refs as `named` names them here (themselves, or their copies of
/// the remote's).
fn fates_of(
    repo: &Repo,
    session: &SessionRefs<'_>,
    tasks: &[TaskId],
    named: impl Fn(&str) -> String,
    checked_out: &BTreeMap<String, PathBuf>,
    outside: &dyn Fn(&str) -> Result<Option<String>, GitError>,
) -> Result<Vec<RefFate>, GitError> {
    let git = &repo.git();
    let tasks: BTreeSet<&str> = tasks.iter().map(TaskId::as_str).collect();
    let branch_prefix = named(&format!("refs/heads/br/{}", session.session_slug));
    let attempt_prefix = named(&format!("refs/br/attempts/{}", session.session_id));
    // Landing candidates exist on a remote only (locally a landing moves the branch itself).
    let landed_prefix = named(&format!("refs/br/landed/{}", session.session_id));
    let integration = named(&integration_ref(session.session_slug));
    let listed = git.run_raw([
        "for-each-ref",
        "--format=%(refname)%00%(objectname)",
        &branch_prefix,
        &attempt_prefix,
        &landed_prefix,
    ])?;
    let integration_commit = resolve_ref(git, &integration)?;
    let base = session.base_commit;

    let mut fates = Vec::new();
    let mut integration_fate = None;
    for line in listed.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = String::from_utf8_lossy(line);
        let Some((reference, commit)) = line.split_once('\0') else {
            continue;
        };
        let (reference, commit) = (reference.to_string(), commit.to_string());
        if let Some(worktree) = checked_out.get(&reference) {
            let fate = RefFate {
                reference: reference.clone(),
                commit,
                action: RefAction::KeepCheckedOut {
                    worktree: worktree.clone(),
                },
            };
            if reference == integration {
                integration_fate = Some(fate);
            } else {
                fates.push(fate);
            }
            continue;
        }
        if reference == integration {
            let action = match outside(&commit)? {
                Some(merged_into) => RefAction::Delete { merged_into },
                None => RefAction::KeepIntegration,
            };
            integration_fate = Some(RefFate {
                reference,
                commit,
                action,
            });
            continue;
        }
        if let Some(name) = reference.strip_prefix(&format!("{branch_prefix}/"))
            && !tasks.contains(name)
        {
            fates.push(RefFate {
                reference,
                commit,
                action: RefAction::KeepForeign,
            });
            continue;
        }
        let mut not: Vec<&str> = Vec::new();
        not.extend(integration_commit.as_deref());
        not.extend(base);
        let unmerged = count_unmerged(git, &commit, &not)?;
        let action = if unmerged > 0 {
            RefAction::KeepUnmerged { commits: unmerged }
        } else {
            let in_integration = match &integration_commit {
                Some(i) => is_ancestor(git, &commit, i)?,
                None => false,
            };
            RefAction::Delete {
                merged_into: if in_integration {
                    short_branch(&integration_ref(session.session_slug)).to_string()
                } else {
                    "the base".to_string()
                },
            }
        };
        fates.push(RefFate {
            reference,
            commit,
            action,
        });
    }
    fates.sort_by(|a, b| a.reference.cmp(&b.reference));
    fates.extend(integration_fate);
    Ok(fates)
}

/// Commits reachable from `commit` but from none of `not`.
fn count_unmerged(git: &Git, commit: &str, not: &[&str]) -> Result<u32, GitError> {
    let mut args = vec!["rev-list", "--count", commit];
    if !not.is_empty() {
        args.push("--not");
        args.extend(not);
    }
    let text = git.run(&args)?;
    Ok(text.trim().parse().unwrap_or(u32::MAX))
}

/// Local branches (full ref names, sorted) that contain `commit`.
fn branches_containing(git: &Git, commit: &str) -> Result<Vec<String>, GitError> {
    let text = git.run([
        "for-each-ref",
        "--format=%(refname)",
        "--contains",
        commit,
        "refs/heads",
    ])?;
    let mut branches: Vec<String> = text.lines().map(str::to_string).collect();
    branches.sort();
    Ok(branches)
}

/// Deletes the refs whose fate is `Delete`, in order, each only if it still points at the commit
/// it was judged by.
pub fn delete_merged_refs(repo: &Repo, fates: &[RefFate]) -> Result<(), RefError> {
    let git = repo.own_git(&repo.root)?;
    for fate in fates.iter().filter(|f| f.action.is_delete()) {
        delete_ref(repo, &git, &fate.reference, &fate.commit)?;
    }
    Ok(())
}
