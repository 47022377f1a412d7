//! Merge rounds after a run (`br run --merge`): land the session's task branches; while
//! `on_conflict = "requeue"` queued tasks again, run them again with a local pool and land again.
//! A round after the first requeues only if it landed something, and there are at most one more
//! rounds than tasks, so a task that can never land does not loop forever.

use br_git::Repo;
use br_store::{Session, Store};

use super::{MergeError, MergeMode, MergeOptions, MergeReport, merge_session, requeue_refused};
use crate::drive::{DriveEnd, DriveError, DriveEvent, DriveOptions, drive};
use crate::signals::Interrupts;

/// Something worth telling whoever watches the rounds.
#[derive(Debug)]
pub enum RoundEvent<'a> {
    /// Round `round` landed (or refused) what it could.
    Merged {
        round: u32,
        session: &'a Session,
        report: &'a MergeReport,
    },
    /// Requeued tasks run again on top of the integration branch.
    Rerunning {
        requeued: usize,
        integration_branch: &'a str,
    },
    /// What the drive of a rerun tells.
    Drive(DriveEvent<'a>),
    /// A rerun's drive ended.
    RerunEnded(&'a Session),
}

/// How the rounds ended.
#[derive(Debug)]
pub enum RoundsEnd {
    /// No round requeued anything more: the last round's report.
    Done {
        session: Session,
        report: MergeReport,
        rounds: u32,
    },
    /// Interrupted, during a merge or a rerun.
    Interrupted(Session),
}

#[derive(Debug, thiserror::Error)]
pub enum RoundsError {
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Drive(#[from] DriveError),
}

/// Runs merge rounds for `session`, whose first drive has ended (not interrupted).
pub fn merge_rounds(
    store: &dyn Store,
    repo: &Repo,
    session: &Session,
    merge: &MergeOptions,
    rerun: &DriveOptions,
    interrupts: &Interrupts,
    on_event: &mut dyn FnMut(RoundEvent<'_>) -> std::io::Result<()>,
) -> Result<RoundsEnd, RoundsError> {
    let report_error = |e| RoundsError::Drive(DriveError::Report(e));
    let merge = MergeOptions {
        mode: MergeMode::Land,
        ..merge.clone()
    };
    let max_rounds = session.total_tasks.saturating_add(1);
    let mut round = 1u32;
    loop {
        let s = store.session(&session.id).map_err(MergeError::from)?;
        let mut report = match merge_session(store, repo, &s, &merge) {
            Ok(report) => report,
            Err(MergeError::Interrupted) => return Ok(RoundsEnd::Interrupted(s)),
            Err(e) => return Err(e.into()),
        };
        if round < max_rounds && (round == 1 || report.landed_now() > 0) {
            requeue_refused(store, &s, &mut report)?;
        }
        on_event(RoundEvent::Merged {
            round,
            session: &s,
            report: &report,
        })
        .map_err(report_error)?;
        let requeued = report.requeued();
        if requeued == 0 {
            let session = store.session(&session.id).map_err(MergeError::from)?;
            return Ok(RoundsEnd::Done {
                session,
                report,
                rounds: round,
            });
        }
        on_event(RoundEvent::Rerunning {
            requeued,
            integration_branch: report.integration_branch(),
        })
        .map_err(report_error)?;
        let again = DriveOptions {
            from_seq: store.last_seq().map_err(MergeError::from)?,
            ..rerun.clone()
        };
        let s = store.session(&session.id).map_err(MergeError::from)?;
        let end = drive(store, repo, &s, &again, interrupts, &mut |e| {
            on_event(RoundEvent::Drive(e))
        })?;
        if let DriveEnd::Interrupted(s) = end {
            return Ok(RoundsEnd::Interrupted(s));
        }
        on_event(RoundEvent::RerunEnded(end.session())).map_err(report_error)?;
        round += 1;
    }
}
