//! The session's verify command, run on each merge candidate in a worktree slot checked out at
//! the candidate before the integration branch may move to it.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use br_core::{Outcome, TaskId};
use br_git::git::Repo;
use br_git::worktree::{AttemptSpec, WorktreeSlot};
use br_store::Session;

use super::{MergeError, MergeOptions, io_error};
use crate::process::{TaskCommand, TaskProcess, outcome_of};
use crate::reaper::Reaper;

/// How often a running verify command is checked for a stop request.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Runs the session's verify command on merge candidates, each in a worktree slot checked out at
/// the candidate. The slot and the reaper are taken on first use and kept for the run.
pub(super) struct Verifier<'a> {
    pub(super) repo: &'a Repo,
    pub(super) session: &'a Session,
    pub(super) command: &'a str,
    pub(super) options: &'a MergeOptions,
    pub(super) slot: Option<WorktreeSlot>,
    pub(super) reaper: Option<Reaper>,
}

impl Verifier<'_> {
    /// Runs the command on `candidate` (the merge of `task` onto `tip`); returns how it ended
    /// and where its output is.
    pub(super) fn run(
        &mut self,
        task: &TaskId,
        candidate: &str,
        tip: &str,
    ) -> Result<(Outcome, PathBuf), MergeError> {
        let slot = match &mut self.slot {
            Some(slot) => slot,
            None => self.slot.insert(WorktreeSlot::acquire(self.repo)?),
        };
        // Attempt 0: not one of the task's attempts. Should this process die while the command
        // runs, whatever it left is kept at `refs/br/attempts/<session>/<task>/0` by the next
        // user of the slot, like any interrupted attempt.
        let spec = AttemptSpec {
            session_id: self.session.id.as_str(),
            session_name: &self.session.name,
            session_slug: &self.session.slug,
            task_id: task.as_str(),
            attempt: 0,
            base_commit: candidate,
            // The verify command builds what the tasks built: the same caches serve it.
            keep: &self.session.keep,
        };
        let dir = slot.checkout(&spec)?;
        let log_path = self
            .repo
            .log_dir()
            .join(self.session.id.as_str())
            .join("merge")
            .join(format!(
                "{task}.{}.log",
                &candidate[..candidate.len().min(12)]
            ));
        // The same candidate verified again gets a fresh log.
        match fs::remove_file(&log_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &log_path)(e)),
        }
        let env: BTreeMap<String, String> = [
            ("BR_SESSION_ID", self.session.id.to_string()),
            ("BR_SESSION_NAME", self.session.name.clone()),
            ("BR_TASK_ID", task.to_string()),
            ("BR_MERGE_COMMIT", candidate.to_string()),
            ("BR_INTEGRATION_TIP", tip.to_string()),
            ("BR_WORKDIR", dir.to_string_lossy().into_owned()),
            (
                "BR_REPO_ROOT",
                self.repo.root.to_string_lossy().into_owned(),
            ),
            ("BR_LOG_PATH", log_path.to_string_lossy().into_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut process = TaskProcess::spawn(&TaskCommand {
            run: self.command.to_string(),
            dir,
            env,
            log_path: log_path.clone(),
            max_log_bytes: None,
        })
        .map_err(MergeError::Verify)?;
        let pgid = process.pgid();
        if self.reaper.is_none()
            && let Some(argv) = &self.options.reaper
        {
            // Without a reaper the command still dies with us on every path but SIGKILL.
            self.reaper = Reaper::spawn(argv).ok();
        }
        if let Some(reaper) = &mut self.reaper {
            let _ = reaper.watch(pgid);
        }
        let status = loop {
            if let Some(status) = process.wait_timeout(STOP_POLL) {
                break Some(status);
            }
            if self.options.stop.any() {
                process.terminate(self.options.kill_grace);
                break None;
            }
        };
        if let Some(reaper) = &mut self.reaper {
            let _ = reaper.forget(pgid);
        }
        slot.discard()?;
        let Some(status) = status else {
            return Err(MergeError::Interrupted);
        };
        Ok((outcome_of(status), log_path))
    }
}
