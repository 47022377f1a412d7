//! Landing one succeeded task on its session's integration branch, as the worker whose turn it
//! is does it: merge the task's commit onto the tip on objects alone (`git merge-tree`), verify
//! the merge when the session says so, and move the branch by compare-and-swap. What it means
//! for the task (landed, repaired, failed) is the store's to record; see
//! `br_store::Store::record_landing`.
//!
//! Landing is idempotent across crashes: a task whose commit the integration branch already
//! holds (a worker died between moving the branch and recording it) lands as the tip that holds
//! it, so nothing is merged twice.

use br_git::conflicts::{MergeTree, conflict_hunks, landed_touching, merge_tree};
use br_git::git::{Git, GitError, Repo};
use br_git::refs::{
    RefError, advance_ref, checked_out_in, commit_tree, create_ref, integration_ref, is_ancestor,
    resolve_ref, short_branch, task_branch_ref,
};
use br_git::remote::{Remote, RemoteError, Update, landed_ref};
use br_store::{LandingItem, LandingJob, LandingResult};

use crate::merge::{QueueLock, merge_message};

/// How much of the conflicting hunks a rerun is shown.
const HUNKS_MAX_BYTES: usize = 16 * 1024;

/// How often the branch is tried again when another writer moved it meanwhile.
const CAS_TRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LandError {
    #[error(
        "`{branch}` is checked out in {}, and br does not move a branch under a checkout: \
         switch that worktree to another branch (or `git switch --detach`)",
        worktree.display()
    )]
    CheckedOut {
        branch: String,
        worktree: std::path::PathBuf,
    },
    #[error("the session has no base commit to start its integration branch from")]
    NoBase,
    #[error("the landing turn passed to another worker")]
    TurnLost,
    #[error("interrupted")]
    Interrupted,
    #[error("cannot run the verify command: {0}")]
    Verify(String),
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Merge(#[from] crate::merge::MergeError),
    #[error(transparent)]
    Remote(#[from] br_git::remote::RemoteError),
}

/// How a verify command ended on a merge that did not pass.
#[derive(Debug, Clone)]
pub struct VerifyRefusal {
    pub exit_code: Option<i32>,
    pub reason: String,
    pub log_tail: String,
}

/// Runs the session's verify command on a merge (`candidate`, made on `tip`): `None` when it
/// passed.
pub type Verify<'a> = dyn FnMut(&str, &str) -> Result<Option<VerifyRefusal>, LandError> + 'a;

/// Lands `item` of `job`'s session. `verify` runs the session's verify command on a merge
/// (`candidate`, made on `tip`): `None` when it passed.
pub fn land_one(
    repo: &Repo,
    job: &LandingJob,
    item: &LandingItem,
    verify: &mut Verify<'_>,
) -> Result<LandingResult, LandError> {
    let git = repo.own_git(&repo.root)?;
    let reference = integration_ref(&job.session_slug);
    // One landing at a time in a repository, also against a `br merge` run by hand.
    let _queue = QueueLock::acquire(repo)?;
    let mut tries = 0;
    loop {
        tries += 1;
        let tip = current_tip(repo, &git, &reference, job)?;
        let candidate = match merged(repo, &git, job, item, &tip, verify)? {
            Merged::Decided(result) => return Ok(result),
            Merged::Candidate(candidate) => candidate,
        };
        if let Some(holder) = checked_out_in(repo, &reference)? {
            return Err(LandError::CheckedOut {
                branch: short_branch(&reference).to_string(),
                worktree: holder,
            });
        }
        let log = format!(
            "br: land task {} of session {}",
            item.task_id, job.session_id
        );
        match advance_ref(repo, &git, &reference, &candidate, &tip, &log) {
            Ok(()) => return Ok(LandingResult::Landed { commit: candidate }),
            // Someone moved the branch (a `br merge` by hand): merge again on what it is now.
            Err(RefError::RefMoved { .. }) if tries < CAS_TRIES => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Lands `item` of `job`'s session when the session has a remote (`url`): the integration branch
/// that counts is the remote's, and `tip` is its commit as the store recorded it. The merge is
/// made and verified here, and its commit pushed to the remote under a landing ref of its own —
/// not onto the branch: [`publish_integration`] moves the branch once the store has recorded
/// the landing. So the remote's branch only ever takes commits the store accepted, and a worker
/// that lost its turn cannot move it.
pub fn land_one_remote(
    repo: &Repo,
    job: &LandingJob,
    item: &LandingItem,
    tip: &str,
    url: &str,
    verify: &mut Verify<'_>,
) -> Result<LandingResult, LandError> {
    let git = repo.own_git(&repo.root)?;
    let remote = Remote { git: &git, url };
    // The result was pushed to its attempt ref before its success was recorded.
    remote.fetch_session(job.session_id.as_str(), &job.session_slug)?;
    if let Some(commit) = &item.result_commit {
        // Its worker moves the task's branch on the remote once the result is accepted; one
        // that died in between left it behind. The store accepted this result, so it may go
        // there — by compare-and-swap, so a newer attempt's branch is never overwritten.
        let branch = task_branch_ref(&job.session_slug, item.task_id.as_str());
        let there = remote.fetched(&branch)?;
        if there.as_deref() != Some(commit.as_str()) {
            let _ = remote.push(&[Update::Swap {
                commit,
                reference: &branch,
                expected: there.as_deref(),
            }]);
        }
    }
    let candidate = match merged(repo, &git, job, item, tip, verify)? {
        Merged::Decided(result) => return Ok(result),
        Merged::Candidate(candidate) => candidate,
    };
    remote.push(&[Update::Forward {
        commit: &candidate,
        reference: &landed_ref(job.session_id.as_str(), &candidate),
    }])?;
    Ok(LandingResult::Landed { commit: candidate })
}

/// Moves the session's integration branch on its remote forward to `commit`, a commit the store
/// recorded as the integration tip (never a forced push: a branch already there or beyond is
/// left as it is). Also how a turn repairs a branch that a worker which died between recording
/// and pushing left behind.
pub fn publish_integration(
    repo: &Repo,
    job: &LandingJob,
    url: &str,
    commit: &str,
) -> Result<(), LandError> {
    let git = repo.git();
    let remote = Remote { git: &git, url };
    let reference = integration_ref(&job.session_slug);
    match remote.push(&[Update::Forward {
        commit,
        reference: &reference,
    }]) {
        Ok(()) => Ok(()),
        // Someone published this commit or a later one first.
        Err(RemoteError::Refused { .. }) => {
            remote.fetch_session(job.session_id.as_str(), &job.session_slug)?;
            match remote.fetched(&reference)? {
                Some(there) if is_ancestor(&git, commit, &there)? => Ok(()),
                _ => Err(RemoteError::Refused {
                    remote: remote.shown(),
                    reference,
                    why: "it holds commits the store did not record".into(),
                }
                .into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What merging an item onto a tip decided.
enum Merged {
    /// Nothing to move: landed already (or it changed nothing), a conflict, or a failed verify.
    Decided(LandingResult),
    /// A clean merge that passed the verify command: the commit to move the branch to.
    Candidate(String),
}

/// Merges `item`'s result onto `tip` on objects alone and verifies the merge when the session
/// says so — the part of landing that is the same wherever the integration branch lives.
fn merged(
    repo: &Repo,
    git: &Git,
    job: &LandingJob,
    item: &LandingItem,
    tip: &str,
    verify: &mut Verify<'_>,
) -> Result<Merged, LandError> {
    let decided = |result| Ok(Merged::Decided(result));
    let Some(commit) = &item.result_commit else {
        // It changed nothing: its work is wherever the branch is.
        return decided(LandingResult::Landed {
            commit: tip.to_string(),
        });
    };
    if is_ancestor(git, commit, tip)? {
        return decided(LandingResult::Landed {
            commit: tip.to_string(),
        });
    }
    let tree = match merge_tree(repo, git, None, tip, commit)? {
        MergeTree::Conflicted { files, tree } => {
            let with = match &item.start_commit {
                Some(start) => landed_touching(git, start, tip, &files).unwrap_or_default(),
                None => Vec::new(),
            };
            return decided(LandingResult::Conflict {
                details: conflict_hunks(git, &tree, &files, HUNKS_MAX_BYTES),
                files,
                with,
                tip: tip.to_string(),
            });
        }
        MergeTree::Clean { tree } => tree,
    };
    let message = merge_message(&job.session_name, &job.session_id, &item.task_id);
    let candidate = commit_tree(git, &tree, tip, commit, &message)?;
    if let Some(command) = &job.verify
        && let Some(refused) = verify(&candidate, tip)?
    {
        return decided(LandingResult::VerifyFailed {
            command: command.clone(),
            exit_code: refused.exit_code,
            reason: refused.reason,
            log_tail: refused.log_tail,
            tip: tip.to_string(),
        });
    }
    Ok(Merged::Candidate(candidate))
}

/// The integration branch's tip, made at the session's base when it does not exist yet.
fn current_tip(
    repo: &Repo,
    git: &Git,
    reference: &str,
    job: &LandingJob,
) -> Result<String, LandError> {
    if let Some(tip) = resolve_ref(git, reference)? {
        return Ok(tip);
    }
    let base = job.base_commit.as_deref().ok_or(LandError::NoBase)?;
    match create_ref(
        repo,
        git,
        reference,
        base,
        &format!("br: integration branch of session {}", job.session_id),
    ) {
        Ok(()) => Ok(base.to_string()),
        // Made by someone else meanwhile: use theirs.
        Err(RefError::RefMoved { found, .. }) => Ok(found),
        Err(e) => Err(e.into()),
    }
}
