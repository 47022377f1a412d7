//! `br cleanup` as a plan and its application. [`plan`] looks and changes nothing: which worktree
//! slots reconcile would keep, prune or remove, which seeds of kept caches go (all: they are
//! caches, made again by the next attempt in a slot), which finished sessions are old enough to go
//! with their logs, which of their refs are merged (deletable) or hold work (kept), and which
//! worker records are stale (one cut-off for all of it). A dry run reports the plan; [`apply`]
//! carries out that plan and reports what it did, in the same shape. Deciding a ref's fate is
//! the one thing `apply` does again, with the same rule, just before it deletes: reconciling the
//! slots may have just saved an interrupted attempt's leftovers at a new ref, and a ref may have
//! moved since the plan was made. Nothing that holds unmerged work is ever deleted.

use std::path::{Path, PathBuf};

use br_core::{SessionId, SessionStatus, TaskId, Timestamp, WorkerStatus};
use br_git::Repo;
use br_git::fates::{
    RefAction, RefFate, SessionRefs, delete_merged_refs, remote_name, remote_ref_fates,
    session_ref_fates,
};
use br_git::refs::{RefError, delete_ref};
use br_git::remote::{Remote, RemoteError, Update};
use br_git::worktree::{Reconcile, ReconcileMode, WorktreeError, reconcile, remove_seed, seeds};
use br_store::{Session, SessionFilter, Store, StoreError, WorkerFilter};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Worktree(#[from] WorktreeError),
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Git(#[from] br_git::GitError),
    #[error("session {session}'s git remote: {source}")]
    Remote {
        session: SessionId,
        #[source]
        source: RemoteError,
    },
    /// `br cleanup SESSION` of a session that has not ended (or still has a task running).
    #[error(
        "session {session} is {status}{running}: only a finished session is cleaned up (cancel it first with `br cancel {session}`)"
    )]
    NotFinished {
        session: SessionId,
        status: br_core::SessionStatus,
        running: String,
    },
    #[error("cannot remove {}", path.display())]
    RemoveLogs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to clean.
#[derive(Debug, Clone)]
pub struct CleanupScope {
    /// Sessions that ended (and worker records last seen) more than this many days ago.
    pub older_than_days: u32,
    /// This one finished session only, whatever its age (`br cleanup SESSION`).
    pub session: Option<SessionId>,
}

/// The plan, or what applying it did: one shape for both (`dry_run` tells them apart).
#[derive(Debug, Clone, Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// br's worktree slots; `None` when the store is used outside a repository.
    pub worktrees: Option<WorktreesReport>,
    pub sessions: Vec<SessionCleanup>,
    /// Sessions left as they are, and why: still running (or not ended), or ended within the
    /// last `older_than_days` days.
    pub kept_sessions: KeptSessions,
    /// Stale worker records (offline or stopped, last seen before the cut-off).
    pub workers_pruned: u32,
    #[serde(skip)]
    stale_workers_before: Timestamp,
}

impl CleanupReport {
    /// Refs kept because deleting them would lose work.
    pub fn kept_refs(&self) -> usize {
        self.sessions
            .iter()
            .flat_map(|s| &s.refs)
            .filter(|r| r.action == "keep")
            .count()
    }
}

/// How many sessions cleanup left, by reason.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KeptSessions {
    /// Not ended, or ended with a task still running.
    pub unfinished: u32,
    /// Ended more recently than the cut-off.
    pub recent: u32,
    /// Its work travelled through a git remote that could not be reached: its refs there go
    /// with it, once the remote answers.
    pub remote_unreachable: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorktreesReport {
    pub saved: Vec<SavedReport>,
    pub pruned: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub in_use: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    pub other: Vec<PathBuf>,
    /// Disk the removed (or, in a dry run, removable) slots take: what cleanup gives back.
    pub removed_bytes: u64,
    /// Disk the slots in use take.
    pub in_use_bytes: u64,
    /// The seeds of kept caches (and any temporary directory a worker left making one), which
    /// go: slots made later start without the caches until an attempt seeds them again.
    pub seeds: Vec<PathBuf>,
    /// Disk the seeds take, counted as `du` counts it: the blocks a seed shares with the slots
    /// cloned from it count here in full, and stay in use while those slots keep them.
    pub seeds_bytes: u64,
}

impl WorktreesReport {
    /// Fills in the disk the slots take, measured before anything is removed.
    fn measured(mut self, sizes: &std::collections::BTreeMap<PathBuf, u64>) -> Self {
        let sum = |paths: &[PathBuf]| paths.iter().filter_map(|p| sizes.get(p)).sum();
        self.removed_bytes = sum(&self.removed);
        self.in_use_bytes = sum(&self.in_use);
        self
    }

    /// Fills in the repository's seeds and the disk they take.
    fn with_seeds(mut self, repo: &Repo) -> Result<Self, WorktreeError> {
        self.seeds = seeds(repo)?;
        self.seeds_bytes = self.seeds.iter().map(|p| disk_usage(p)).sum();
        Ok(self)
    }
}

/// The disk each of br's worktree slots takes (files as allocated, links not followed), by
/// path.
fn slot_sizes(repo: &Repo) -> std::collections::BTreeMap<PathBuf, u64> {
    let Ok(entries) = std::fs::read_dir(repo.worktrees_dir()) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.path(), disk_usage(&e.path())))
        .collect()
}

fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = path.symlink_metadata() else {
        return 0;
    };
    // Blocks of 512 bytes, as du counts: what the disk really holds.
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children: u64 = std::fs::read_dir(path).map_or(0, |entries| {
        entries.flatten().map(|e| disk_usage(&e.path())).sum()
    });
    own + children
}

#[derive(Debug, Clone, Serialize)]
pub struct SavedReport {
    pub slot: PathBuf,
    #[serde(rename = "ref")]
    pub reference: String,
    pub commit: Option<String>,
}

impl From<Reconcile> for WorktreesReport {
    fn from(r: Reconcile) -> Self {
        WorktreesReport {
            saved: r
                .saved
                .into_iter()
                .map(|s| SavedReport {
                    slot: s.slot,
                    reference: s.reference,
                    commit: s.commit,
                })
                .collect(),
            pruned: r.pruned,
            removed: r.removed,
            in_use: r.in_use,
            kept: r.kept,
            other: r.other,
            removed_bytes: 0,
            in_use_bytes: 0,
            seeds: Vec::new(),
            seeds_bytes: 0,
        }
    }
}

/// One finished session that goes.
#[derive(Debug, Clone, Serialize)]
pub struct SessionCleanup {
    pub session_id: SessionId,
    pub name: String,
    pub status: SessionStatus,
    /// Its log directory, when there is one.
    pub logs: Option<PathBuf>,
    pub refs: Vec<RefReport>,
    /// Its refs were not looked at: it ran in this other repository.
    #[serde(skip)]
    pub other_repository: Option<String>,
    #[serde(skip)]
    fates: Vec<RefFate>,
    /// Its refs on its git remote, judged on their copies here.
    #[serde(skip)]
    remote_fates: Vec<RefFate>,
}

/// What happens to one ref of a session that goes.
#[derive(Debug, Clone, Serialize)]
pub struct RefReport {
    #[serde(rename = "ref")]
    pub reference: String,
    pub commit: String,
    /// `delete` or `keep`.
    pub action: &'static str,
    pub reason: String,
    pub unmerged_commits: Option<u32>,
    pub merged_into: Option<String>,
    /// The git remote the ref is on (its URL without a password); none for a ref here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(skip)]
    pub foreign: bool,
}

impl RefReport {
    /// A ref on the session's remote: named as the remote names it.
    fn on_remote(fate: &RefFate, remote: &str) -> RefReport {
        RefReport {
            reference: remote_name(&fate.reference),
            remote: Some(br_git::remote::redact_url(remote)),
            ..RefReport::from(fate)
        }
    }
}

impl From<&RefFate> for RefReport {
    fn from(fate: &RefFate) -> Self {
        let (action, reason) = match &fate.action {
            RefAction::Delete { merged_into } => ("delete", format!("merged into {merged_into}")),
            RefAction::KeepUnmerged { commits } => (
                "keep",
                format!(
                    "holds {commits} unmerged commit{}",
                    if *commits == 1 { "" } else { "s" }
                ),
            ),
            RefAction::KeepIntegration => {
                ("keep", "not merged into any branch outside br/".to_string())
            }
            RefAction::KeepCheckedOut { worktree } => {
                ("keep", format!("checked out in {}", worktree.display()))
            }
            RefAction::KeepForeign => ("keep", "not a branch br made for this session".to_string()),
        };
        RefReport {
            reference: fate.reference.clone(),
            commit: fate.commit.clone(),
            action,
            reason,
            unmerged_commits: match &fate.action {
                RefAction::KeepUnmerged { commits } => Some(*commits),
                _ => None,
            },
            merged_into: match &fate.action {
                RefAction::Delete { merged_into } => Some(merged_into.clone()),
                _ => None,
            },
            remote: None,
            foreign: matches!(fate.action, RefAction::KeepForeign),
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// What deleting each of the session's refs would do (the one rule, br-git's).
fn ref_fates(store: &dyn Store, repo: &Repo, id: &SessionId) -> Result<Vec<RefFate>, CleanupError> {
    let s = store.session(id)?;
    let ids: Vec<TaskId> = store.tasks(id)?.into_iter().map(|t| t.id).collect();
    let refs = SessionRefs {
        session_id: s.id.as_str(),
        session_slug: &s.slug,
        base_commit: s.base_commit.as_deref(),
    };
    Ok(session_ref_fates(repo, &refs, &ids)?)
}

/// What deleting each of the session's refs on its git remote would do: fetches them (to
/// `refs/br/remote/…`, pruning copies of refs the remote no longer has) and judges the copies by
/// the same rule, the integration branch against the remote's own branches.
fn remote_fates(
    store: &dyn Store,
    repo: &Repo,
    s: &Session,
    url: &str,
) -> Result<Vec<RefFate>, CleanupError> {
    let git = repo.git();
    let remote = Remote { git: &git, url };
    let failed = |source| CleanupError::Remote {
        session: s.id.clone(),
        source,
    };
    remote
        .fetch_session(s.id.as_str(), &s.slug)
        .map_err(failed)?;
    let heads = remote.heads().map_err(failed)?;
    let ids: Vec<TaskId> = store.tasks(&s.id)?.into_iter().map(|t| t.id).collect();
    let refs = SessionRefs {
        session_id: s.id.as_str(),
        session_slug: &s.slug,
        base_commit: s.base_commit.as_deref(),
    };
    Ok(remote_ref_fates(repo, &refs, &ids, &heads)?)
}

/// Deletes on the remote, in one atomic push, the refs whose fate is `Delete` (each only if it
/// still is the commit it was judged by), then their copies here.
fn delete_remote_refs(
    repo: &Repo,
    s: &Session,
    url: &str,
    fates: &[RefFate],
) -> Result<(), CleanupError> {
    let doomed: Vec<(&RefFate, String)> = fates
        .iter()
        .filter(|f| f.action.is_delete())
        .map(|f| (f, remote_name(&f.reference)))
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    let git = repo.git();
    let updates: Vec<Update<'_>> = doomed
        .iter()
        .map(|(f, name)| Update::Delete {
            reference: name,
            expected: &f.commit,
        })
        .collect();
    Remote { git: &git, url }
        .push(&updates)
        .map_err(|source| CleanupError::Remote {
            session: s.id.clone(),
            source,
        })?;
    let own = repo.own_git(&repo.root)?;
    for (f, _) in &doomed {
        delete_ref(repo, &own, &f.reference, &f.commit)?;
    }
    Ok(())
}

/// Looks at everything cleanup would do, and changes nothing. `repo` is the repository the
/// command runs in (none when the store is used elsewhere: then only records and logs are
/// looked at); `log_dir` is where attempt logs are.
pub fn plan(
    store: &dyn Store,
    repo: Option<&Repo>,
    log_dir: Option<&Path>,
    scope: CleanupScope,
) -> Result<CleanupReport, CleanupError> {
    let now = store.now()?;
    let cutoff = Timestamp(now.millis() - i64::from(scope.older_than_days) * DAY_MS);
    // No free slot is kept: after a cleanup, `git worktree list` shows only what runs.
    let worktrees = match repo {
        Some(repo) => Some(
            WorktreesReport::from(reconcile(repo, ReconcileMode::DryRun, 0)?)
                .measured(&slot_sizes(repo))
                .with_seeds(repo)?,
        ),
        None => None,
    };
    let mut sessions = Vec::new();
    let mut kept = KeptSessions::default();
    let candidates = match &scope.session {
        Some(id) => {
            let s = store.session(id)?;
            if !(s.status.is_terminal() && s.running_tasks == 0) {
                return Err(CleanupError::NotFinished {
                    running: if s.running_tasks > 0 {
                        format!(" with {} still running", s.running_tasks)
                    } else {
                        String::new()
                    },
                    session: s.id,
                    status: s.status,
                });
            }
            vec![s]
        }
        None => store.list_sessions(&SessionFilter::default())?,
    };
    for s in candidates {
        if !(s.status.is_terminal() && s.running_tasks == 0) {
            kept.unfinished += 1;
            continue;
        }
        if scope.session.is_none() && s.completed_at.unwrap_or(s.created_at) > cutoff {
            kept.recent += 1;
            continue;
        }
        let logs = log_dir
            .map(|d| d.join(s.id.as_str()))
            .filter(|d| d.exists());
        // Refs are looked at in the repository the session ran in, when that is this one.
        let own = repo.filter(|r| {
            Repo::discover(Path::new(&s.repo_root))
                .is_ok_and(|theirs| theirs.common_dir == r.common_dir)
        });
        let fates = match own {
            Some(r) => ref_fates(store, r, &s.id)?,
            None => Vec::new(),
        };
        // Its refs on its remote are judged from any clone: the remote is where they all are.
        let remote_fates = match (&s.remote, repo) {
            (Some(url), Some(r)) => match remote_fates(store, r, &s, url) {
                Ok(f) => f,
                Err(e) if scope.session.is_some() => return Err(e),
                Err(_) => {
                    kept.remote_unreachable += 1;
                    continue;
                }
            },
            _ => Vec::new(),
        };
        let url = s.remote.as_deref().unwrap_or_default();
        sessions.push(SessionCleanup {
            refs: fates
                .iter()
                .map(RefReport::from)
                .chain(remote_fates.iter().map(|f| RefReport::on_remote(f, url)))
                .collect(),
            remote_fates,
            other_repository: (own.is_none() && repo.is_some()).then(|| s.repo_root.clone()),
            session_id: s.id,
            name: s.name,
            status: s.status,
            logs,
            fates,
        });
    }
    // One cut-off for what the plan counts and what `apply` deletes.
    let stale_workers_before = Timestamp(cutoff.millis() + 1);
    let stale = store
        .workers(&WorkerFilter::default())?
        .into_iter()
        .filter(|w| matches!(w.status, WorkerStatus::Offline | WorkerStatus::Stopped))
        .filter(|w| w.last_heartbeat < stale_workers_before)
        .count();
    Ok(CleanupReport {
        dry_run: true,
        worktrees,
        sessions,
        kept_sessions: kept,
        workers_pruned: u32::try_from(stale).unwrap_or(u32::MAX),
        stale_workers_before,
    })
}

/// Carries out `plan`: reconciles the worktree slots, removes the seeds of kept caches, deletes each planned session's merged
/// refs (each only if it still points where the plan saw it), its records and its logs, and
/// prunes the stale worker records. Returns what was done.
pub fn apply(
    store: &dyn Store,
    repo: Option<&Repo>,
    plan: &CleanupReport,
) -> Result<CleanupReport, CleanupError> {
    let mut done = plan.clone();
    done.dry_run = false;
    // Worktrees first: an orphan slot's leftovers become an attempt ref, which the plan's ref
    // check of that session then kept.
    if let Some(repo) = repo {
        let sizes = slot_sizes(repo);
        let worktrees = WorktreesReport::from(reconcile(repo, ReconcileMode::Apply, 0)?)
            .measured(&sizes)
            .with_seeds(repo)?;
        for seed in &worktrees.seeds {
            remove_seed(seed)?;
        }
        done.worktrees = Some(worktrees);
    }
    for s in &mut done.sessions {
        let session = store.session(&s.session_id)?;
        let mut refs = Vec::new();
        if let Some(r) = repo
            && s.other_repository.is_none()
        {
            s.fates = ref_fates(store, r, &s.session_id)?;
            refs.extend(s.fates.iter().map(RefReport::from));
            delete_merged_refs(r, &s.fates)?;
        }
        if let (Some(r), Some(url)) = (repo, session.remote.as_deref()) {
            s.remote_fates = remote_fates(store, r, &session, url)?;
            refs.extend(s.remote_fates.iter().map(|f| RefReport::on_remote(f, url)));
            delete_remote_refs(r, &session, url, &s.remote_fates)?;
        }
        if repo.is_some() {
            s.refs = refs;
        }
        store.delete_session(&s.session_id)?;
        if let Some(dir) = &s.logs {
            std::fs::remove_dir_all(dir).map_err(|source| CleanupError::RemoveLogs {
                path: dir.clone(),
                source,
            })?;
        }
    }
    done.workers_pruned = store.prune_workers(plan.stale_workers_before)?;
    Ok(done)
}
