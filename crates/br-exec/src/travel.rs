//! How a session's work travels through its git remote (`remote = …` in the plan), as a worker
//! does it: fetch what an attempt starts from, publish its result before the outcome is recorded,
//! and move the task branch on the remote only once the store accepted the result — by
//! compare-and-swap against the value the attempt started from, so an older result can never
//! overwrite a newer one. Landing's side is in `landing.rs`. Without a remote, nothing here runs.

use br_git::Repo;
use br_git::refs::{advance_ref, create_ref, is_ancestor, resolve_ref, task_branch_ref};
use br_git::remote::{Remote, Update};
use br_git::worktree::attempt_ref;
use br_store::{ClaimedTask, Session};

/// A claimed attempt's view of its session's remote.
#[derive(Debug)]
pub struct Travel {
    git: br_git::Git,
    url: String,
    session_id: String,
    slug: String,
    task_id: String,
    attempt: u32,
    /// The task branch on the remote when the attempt started (`None`: it had none).
    branch_at_start: Option<String>,
}

/// Why an attempt could not start from the session's remote.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The remote did not answer (a network, a server or a path that is not there now): the
    /// session's remote was reachable when it was submitted, so this is waited out, like a store
    /// that cannot be reached, and costs the task no retry.
    Unreachable(String),
    /// Anything else, which the attempt fails on.
    Other(String),
}

impl Travel {
    /// Fetches the session from its remote, so the attempt's start commit is here, and notes
    /// where the task's branch is there. `None` without a remote.
    pub(crate) fn start(repo: &Repo, task: &ClaimedTask) -> Result<Option<Travel>, StartError> {
        let Some(url) = &task.remote else {
            return Ok(None);
        };
        let git = repo.git();
        let session_id = task.lease.session_id.to_string();
        let remote = Remote { git: &git, url };
        remote
            .fetch_session(&session_id, &task.session_slug)
            .map_err(|e| {
                StartError::Unreachable(format!("cannot fetch from the session's remote: {e}"))
            })?;
        let branch = task_branch_ref(&task.session_slug, task.lease.task_id.as_str());
        let branch_at_start = remote
            .fetched(&branch)
            .map_err(|e| StartError::Other(e.to_string()))?;
        Ok(Some(Travel {
            url: url.clone(),
            session_id,
            slug: task.session_slug.clone(),
            task_id: task.lease.task_id.to_string(),
            attempt: task.lease.attempt.0,
            branch_at_start,
            git,
        }))
    }

    fn remote(&self) -> Remote<'_> {
        Remote {
            git: &self.git,
            url: &self.url,
        }
    }

    /// Pushes the attempt's result to its own attempt ref on the remote, where the worker that
    /// lands it fetches it. A ref no other attempt writes: a stale worker's push changes only
    /// what its own (refused) attempt left.
    pub(crate) fn publish_result(&self, commit: &str) -> Result<(), String> {
        let reference = attempt_ref(&self.session_id, &self.task_id, self.attempt);
        self.remote()
            .push(&[Update::Forward {
                commit,
                reference: &reference,
            }])
            .map_err(|e| format!("cannot push the result to the session's remote: {e}"))
    }

    /// Moves the task's branch on the remote to its accepted result, only from where it was
    /// when the attempt started.
    pub(crate) fn publish_branch(&self, commit: &str) -> Result<(), String> {
        let reference = task_branch_ref(&self.slug, &self.task_id);
        self.remote()
            .push(&[Update::Swap {
                commit,
                reference: &reference,
                expected: self.branch_at_start.as_deref(),
            }])
            .map_err(|e| e.to_string())
    }
}

/// Brings the session's branches from its remote into this repository, so any machine can
/// `br merge --into`, `br diff` and see every branch: each `br/<slug>/…` branch is created
/// here, or moved forward to the remote's; a local branch that went its own way is left alone.
/// Does nothing for a session without a remote.
pub fn adopt_session(repo: &Repo, session: &Session) -> Result<(), String> {
    let Some(url) = &session.remote else {
        return Ok(());
    };
    let git = repo.git();
    let remote = Remote { git: &git, url };
    remote
        .fetch_session(session.id.as_str(), &session.slug)
        .map_err(|e| format!("cannot fetch from the session's remote: {e}"))?;
    let prefix = format!("refs/heads/br/{}/", session.slug);
    let fetched_prefix = br_git::remote::fetched_ref(&prefix);
    let listed = git
        .run([
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            &fetched_prefix,
        ])
        .map_err(|e| e.to_string())?;
    for line in listed.lines() {
        let Some((fetched, commit)) = line.split_once(' ') else {
            continue;
        };
        let Some(name) = fetched.strip_prefix(&fetched_prefix) else {
            continue;
        };
        let local = format!("{prefix}{name}");
        let message = format!("br: from the remote of session {}", session.id);
        let moved = match resolve_ref(&git, &local).map_err(|e| e.to_string())? {
            None => create_ref(repo, &git, &local, commit, &message),
            Some(here) if here != commit && is_ancestor(&git, &here, commit).unwrap_or(false) => {
                advance_ref(repo, &git, &local, commit, &here, &message)
            }
            Some(_) => Ok(()),
        };
        moved.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Moves the session's integration branch on its remote forward to `commit` (what a `br merge`
/// here landed), never by a forced push.
pub fn publish_merge(repo: &Repo, session: &Session, commit: &str) -> Result<(), String> {
    let Some(url) = &session.remote else {
        return Ok(());
    };
    let git = repo.git();
    let reference = br_git::refs::integration_ref(&session.slug);
    Remote { git: &git, url }
        .push(&[Update::Forward {
            commit,
            reference: &reference,
        }])
        .map_err(|e| e.to_string())
}
