//! The conformance suite: the behaviour every [`Store`] backend must show, written once against
//! the trait. A backend's test file calls [`conformance_tests!`] with a function that makes a
//! fresh, empty store; each check becomes its own `#[test]`.
//!
//! The checks use real time for leases (short heartbeat timeouts) and poll until a deadline
//! rather than sleeping for a fixed time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use br_core::detail::ScopeViolation;
use br_core::outcome::{Outcome, TaskNext};
use br_core::plan::{DEFAULT_MAX_REPAIRS, Isolation, LandMode, OnConflict, ScopeMode, StartMode};
use br_core::retry::RetryScope;
use br_core::state::SessionAction;
use br_core::{
    Attempt, EventDetail, EventKind, LockPath, OutcomeKind, Plan, RunReason, SessionId,
    SessionStatus, TaskId, TaskSpec, TaskState, WorkerId, WorkerStatus,
};

use crate::audit::{audit_lock_order, audit_terminal_once};
use crate::model::*;
use crate::{Store, StoreError};
use br_core::Timestamp;

/// A fresh, empty store that can be opened more than once (each handle is like another process).
pub trait FreshStore {
    fn open(&self) -> Box<dyn Store>;
}

/// Expands to one `#[test]` per conformance check, each on a fresh backend from `$fresh`.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@tests $fresh;
            session_is_created_with_ready_and_pending_tasks,
            claim_takes_ready_tasks_in_plan_order,
            success_readies_dependents_and_completes_the_session,
            failure_skips_dependents_transitively_and_fails_the_session,
            failed_attempt_is_retried_while_retries_remain,
            claim_waits_for_conflicting_locks,
            lock_sets_are_taken_all_or_nothing,
            manual_locks_conflict_name_the_holder_and_release,
            heartbeat_renews_the_lease,
            expired_lease_is_requeued_as_next_attempt,
            stale_result_is_rejected,
            lost_leases_are_bounded,
            cancel_stops_waiting_tasks_and_fences_running_ones,
            pause_stops_claims_until_resume,
            invalid_transitions_are_refused,
            sessions_resolve_by_id_prefix_and_name,
            scale_down_stops_idle_workers_first,
            stopping_a_worker_gives_its_task_back,
            events_are_ordered_and_filtered,
            summary_counts_everything,
            only_finished_sessions_are_deleted,
            wait_for_change_sees_other_handles,
            concurrent_workers_claim_each_task_once_without_lock_overlap,
            sixteen_workers_at_once_keep_every_promise,
            attempt_reports_are_kept_and_scope_violations_recorded,
            a_finished_task_can_be_requeued_on_a_new_base,
            finishing_and_claiming_the_next_is_one_step,
            workers_claim_only_their_repositorys_sessions,
            landing_is_one_turn_at_a_time_and_decides_what_follows,
            a_landing_turn_whose_holder_went_silent_passes_to_another_worker,
            a_task_out_of_repairs_fails_and_skips_its_dependents,
            retry_reruns_ended_tasks_as_next_attempts,
            a_tasks_prompt_and_events_are_read_back,
            retry_refuses_tasks_that_did_not_end_badly,
            retry_runs_a_cancelled_session_again,
            retry_forgets_what_did_not_land,
            a_pool_caps_running_tasks_across_sessions,
            a_rate_limit_spends_no_retry_and_parks_the_pool,
            usage_adds_up_per_attempt_task_session_and_store,
            a_rate_limit_that_names_its_reset_parks_until_then,
            attempt_output_is_read_back_from_any_handle_in_pieces,
        );
    };
    (@tests $fresh:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = ($fresh)();
                $crate::conformance::$name(&backend);
            }
        )+
    };
}

// Building blocks.

/// A task that echoes its id, locking `files`, after `after` (also the store benchmark's).
pub fn task(id: &str, files: &[&str], after: &[&str]) -> TaskSpec {
    TaskSpec {
        id: TaskId::new(id).expect("valid id"),
        run: format!("echo {id}"),
        files: files
            .iter()
            .map(|f| LockPath::parse(f).expect("valid path"))
            .collect(),
        after: after
            .iter()
            .map(|a| TaskId::new(*a).expect("valid id"))
            .collect(),
        timeout: None,
        retries: 0,
        env: BTreeMap::new(),
        start: StartMode::Tip,
        land: LandMode::Auto,
        on_conflict: OnConflict::Requeue,
        max_repairs: DEFAULT_MAX_REPAIRS,
        prompt: None,
        prompt_file: None,
        agent: None,
        pool: None,
    }
}

/// A plan of `tasks` in shared isolation, nothing to land (also the store benchmark's).
pub fn plan(name: &str, tasks: Vec<TaskSpec>) -> Plan {
    Plan {
        name: name.to_string(),
        workers: None,
        base: "HEAD".into(),
        isolation: Isolation::Shared,
        heartbeat_timeout: Duration::from_secs(30),
        retries: 0,
        scope: ScopeMode::Report,
        verify: None,
        on_conflict: OnConflict::Requeue,
        start: StartMode::Tip,
        land: LandMode::Auto,
        max_repairs: DEFAULT_MAX_REPAIRS,
        keep: Vec::new(),
        agents: Vec::new(),
        pools: BTreeMap::new(),
        copy: Vec::new(),
        setup: None,
        setup_inputs: Vec::new(),
        ports: 0,
        remote: None,
        tasks,
    }
}

/// Creates a session of `plan` (also the store benchmark's).
pub fn submit(store: &dyn Store, plan: Plan) -> Session {
    store
        .create_session(&NewSession {
            plan,
            repo_root: PathBuf::from("/repo"),
            repo_id: None,
            plan_path: Some(PathBuf::from("/repo/br.toml")),
            base_commit: None,
            workers_wanted: 2,
        })
        .expect("create session")
}

/// Registers a worker (also the store benchmark's).
pub fn worker(store: &dyn Store, session: Option<&SessionId>, timeout: Duration) -> WorkerId {
    store
        .register_worker(&NewWorker {
            host: "test-host".into(),
            pid: 4242,
            session: session.cloned(),
            heartbeat_timeout: timeout,
        })
        .expect("register worker")
}

/// Where claimed attempts say their logs go; nothing is written there.
pub fn log_dir() -> &'static Path {
    Path::new("/tmp/br-conformance-logs")
}

/// How a worker of [`work_session`] records each attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `finish_attempt`, then `claim_next_task`.
    Apart,
    /// `finish_attempt_and_claim`, one transaction, as `br worker` does.
    WithNextClaim,
}

/// Works `session` as one worker process would, on its own handle: claims, lets `outcome`
/// decide each attempt's end, records it, until the session is over. Returns the attempts it
/// ran. Shared by the concurrency checks and the store benchmark.
pub fn work_session(
    store: &dyn Store,
    session: &SessionId,
    record: Record,
    mut outcome: impl FnMut(&ClaimedTask) -> Outcome,
) -> Vec<(String, u32)> {
    let w = worker(store, Some(session), Duration::from_secs(30));
    let request = ClaimRequest {
        worker: &w,
        session: Some(session),
        log_dir: log_dir(),
        repo_id: None,
        remote_only: false,
    };
    let mut ran = Vec::new();
    let mut claim = store.claim_next_task(&request).expect("claim");
    loop {
        claim = match claim {
            Claim::Task(t) => {
                let end = outcome(&t);
                ran.push((t.lease.task_id.to_string(), t.lease.attempt.0));
                match record {
                    Record::WithNextClaim => {
                        store
                            .finish_attempt_and_claim(
                                &t.lease,
                                &end,
                                &AttemptReport::default(),
                                &request,
                            )
                            .expect("finish and claim")
                            .1
                    }
                    Record::Apart => {
                        store.finish_attempt(&t.lease, &end).expect("finish");
                        store.claim_next_task(&request).expect("claim")
                    }
                }
            }
            Claim::Nothing => {
                // Others hold the last tasks; done when the session is.
                if store
                    .session(session)
                    .expect("session")
                    .status
                    .is_terminal()
                {
                    return ran;
                }
                store
                    .wait_for_change(Duration::from_millis(20))
                    .expect("wait");
                store.claim_next_task(&request).expect("claim")
            }
            Claim::Stop | Claim::Land(_) => panic!("unexpected {claim:?}"),
        };
    }
}

fn claim(store: &dyn Store, w: &WorkerId) -> Claim {
    store
        .claim_next_task(&ClaimRequest {
            worker: w,
            session: None,
            log_dir: log_dir(),
            repo_id: None,
            remote_only: false,
        })
        .expect("claim")
}

fn claim_task(store: &dyn Store, w: &WorkerId) -> ClaimedTask {
    match claim(store, w) {
        Claim::Task(t) => *t,
        other => panic!("expected a task, got {other:?}"),
    }
}

fn states(store: &dyn Store, s: &SessionId) -> Vec<(String, TaskState)> {
    store
        .tasks(s)
        .expect("tasks")
        .into_iter()
        .map(|t| (t.id.to_string(), t.state))
        .collect()
}

fn kinds(store: &dyn Store, s: &SessionId) -> Vec<EventKind> {
    session_events(store, s)
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn session_events(store: &dyn Store, s: &SessionId) -> Vec<Event> {
    let events = store
        .events(&EventFilter {
            session: Some(s.clone()),
            ..Default::default()
        })
        .expect("events");
    assert_details_typed(&events);
    events
}

/// Every event the store wrote reads back as its kind's typed detail: the writers build details
/// with the typed constructors, and their stored JSON is exactly what those serialise to.
fn assert_details_typed(events: &[Event]) {
    for e in events {
        assert!(
            !matches!(e.detail, EventDetail::Raw { .. }),
            "seq {} ({}) read back raw: {:?}",
            e.seq,
            e.kind,
            e.detail
        );
        assert_eq!(e.detail.kind(), e.kind, "seq {}", e.seq);
    }
}

fn poll_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn short_lease_plan(name: &str, tasks: Vec<TaskSpec>) -> Plan {
    let mut p = plan(name, tasks);
    p.heartbeat_timeout = Duration::from_millis(150);
    p
}

use TaskState::{Cancelled, Failed, Pending, Ready, Running, Skipped, Succeeded};

// The checks.

pub fn session_is_created_with_ready_and_pending_tasks(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan("build", vec![task("a", &[], &[]), task("b", &[], &["a"])]),
    );
    assert_eq!(s.status, SessionStatus::Created);
    assert_eq!(s.name, "build");
    assert!(s.slug.starts_with("build-"), "{}", s.slug);
    assert_eq!(
        (s.total_tasks, s.queued_tasks, s.progress_percent),
        (2, 2, 0.0)
    );
    assert_eq!(
        states(&*store, &s.id),
        [("a".into(), Ready), ("b".into(), Pending)]
    );
    assert_eq!(
        kinds(&*store, &s.id),
        [EventKind::SessionCreated, EventKind::TaskReady]
    );
    let t = store
        .task(&s.id, &TaskId::new("b").expect("id"))
        .expect("task");
    assert_eq!(
        (t.after.clone(), t.attempts, t.run.as_str()),
        (vec!["a".to_string()], 0, "echo b")
    );
    assert!(matches!(
        store.task(&s.id, &TaskId::new("zzz").expect("id")),
        Err(StoreError::NoSuchTask { .. })
    ));
}

pub fn claim_takes_ready_tasks_in_plan_order(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan("p", vec![task("t1", &["a"], &[]), task("t2", &[], &[])]),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let c = claim_task(&*store, &w);
    assert_eq!(c.lease.task_id.as_str(), "t1");
    assert_eq!(c.lease.attempt, Attempt(1));
    assert_eq!(c.lease.worker_id, w);
    assert_eq!(c.run, "echo t1");
    assert_eq!(c.log_path, log_dir().join(s.id.as_str()).join("t1.1.log"));
    assert_eq!(c.files, vec![LockPath::parse("a").expect("path")]);
    let s2 = store.session(&s.id).expect("session");
    assert_eq!(s2.status, SessionStatus::Running);
    assert!(s2.started_at.is_some());
    assert_eq!((s2.running_tasks, s2.queued_tasks), (1, 1));
    let wk = store.worker(&w).expect("worker");
    assert_eq!(wk.status, WorkerStatus::Busy);
    assert_eq!(wk.current_task.as_ref().map(TaskId::as_str), Some("t1"));
    assert_eq!(wk.session_id.as_ref(), Some(&s.id));
    let locks = store.locks().expect("locks");
    assert_eq!(locks.len(), 1);
    assert_eq!(
        (
            locks[0].path.as_str(),
            locks[0].task_id.as_ref().map(TaskId::as_str)
        ),
        ("a", Some("t1"))
    );
    let second = claim_task(&*store, &w);
    assert_eq!(second.lease.task_id.as_str(), "t2");
    assert!(matches!(claim(&*store, &w), Claim::Nothing));
    let k = kinds(&*store, &s.id);
    for want in [
        EventKind::SessionStarted,
        EventKind::TaskStarted,
        EventKind::LockAcquired,
    ] {
        assert!(k.contains(&want), "{want} missing from {k:?}");
    }
}

pub fn success_readies_dependents_and_completes_the_session(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("a", &["x"], &[]),
                task("b", &[], &["a"]),
                task("c", &[], &["a", "b"]),
            ],
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    for (id, then) in [
        ("a", vec![Succeeded, Ready, Pending]),
        ("b", vec![Succeeded, Succeeded, Ready]),
    ] {
        let c = claim_task(&*store, &w);
        assert_eq!(c.lease.task_id.as_str(), id);
        assert!(
            matches!(claim(&*store, &w), Claim::Nothing),
            "nothing else ready"
        );
        let f = store
            .finish_attempt(&c.lease, &Outcome::Succeeded)
            .expect("finish");
        assert_eq!(f, Finish::Recorded(TaskNext::Succeed));
        let got: Vec<TaskState> = states(&*store, &s.id)
            .into_iter()
            .map(|(_, st)| st)
            .collect();
        assert_eq!(got, then);
    }
    assert!(store.locks().expect("locks").is_empty(), "locks released");
    let c = claim_task(&*store, &w);
    store
        .finish_attempt(&c.lease, &Outcome::Succeeded)
        .expect("finish");
    let done = store.session(&s.id).expect("session");
    assert_eq!(done.status, SessionStatus::Completed);
    assert_eq!(
        (
            done.succeeded_tasks,
            done.progress_percent,
            done.running_tasks
        ),
        (3, 100.0, 0)
    );
    assert!(done.completed_at.is_some());
    let wk = store.worker(&w).expect("worker");
    assert_eq!(
        (wk.status, wk.tasks_completed, wk.current_task.clone()),
        (WorkerStatus::Idle, 3, None)
    );
    assert_eq!(
        kinds(&*store, &s.id).last(),
        Some(&EventKind::SessionCompleted)
    );
    let t = store
        .task(&s.id, &TaskId::new("a").expect("id"))
        .expect("task");
    assert_eq!(
        (t.exit_code, t.outcome, t.attempts),
        (Some(0), Some(OutcomeKind::Succeeded), 1)
    );
    assert!(t.finished_at.is_some() && t.started_at.is_some());
    let ends = audit_terminal_once(&session_events(&*store, &s.id)).expect("terminal once");
    assert_eq!(ends.len(), 3);
}

pub fn failure_skips_dependents_transitively_and_fails_the_session(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("a", &[], &[]),
                task("b", &[], &["a"]),
                task("c", &[], &["b"]),
                task("d", &[], &[]),
            ],
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let a = claim_task(&*store, &w);
    let f = store
        .finish_attempt(&a.lease, &Outcome::Failed { exit_code: 3 })
        .expect("finish");
    assert_eq!(f, Finish::Recorded(TaskNext::Fail));
    assert_eq!(
        states(&*store, &s.id),
        [
            ("a".into(), Failed),
            ("b".into(), Skipped),
            ("c".into(), Skipped),
            ("d".into(), Ready)
        ]
    );
    let mid = store.session(&s.id).expect("session");
    assert_eq!(mid.status, SessionStatus::Running, "d still to run");
    assert_eq!(
        (mid.failed_tasks, mid.skipped_tasks, mid.progress_percent),
        (1, 2, 75.0)
    );
    let d = claim_task(&*store, &w);
    store
        .finish_attempt(&d.lease, &Outcome::Succeeded)
        .expect("finish");
    let end = store.session(&s.id).expect("session");
    assert_eq!(end.status, SessionStatus::Failed);
    let t = store
        .task(&s.id, &TaskId::new("a").expect("id"))
        .expect("task");
    assert_eq!(
        (t.exit_code, t.outcome),
        (Some(3), Some(OutcomeKind::Failed))
    );
    assert_eq!(store.worker(&w).expect("worker").tasks_failed, 1);
    let k = kinds(&*store, &s.id);
    assert_eq!(
        k.iter().filter(|k| **k == EventKind::TaskSkipped).count(),
        2
    );
    assert_eq!(k.last(), Some(&EventKind::SessionFailed));
}

pub fn failed_attempt_is_retried_while_retries_remain(b: &dyn FreshStore) {
    let store = b.open();
    let mut flaky = task("flaky", &["f"], &[]);
    flaky.retries = 1;
    let s = submit(&*store, plan("p", vec![flaky]));
    let w = worker(&*store, None, Duration::from_secs(30));
    let first = claim_task(&*store, &w);
    let f = store
        .finish_attempt(&first.lease, &Outcome::TimedOut)
        .expect("finish");
    assert_eq!(f, Finish::Recorded(TaskNext::Retry));
    assert_eq!(states(&*store, &s.id), [("flaky".into(), Ready)]);
    assert!(store.locks().expect("locks").is_empty());
    let second = claim_task(&*store, &w);
    assert_eq!(second.lease.attempt, Attempt(2));
    assert_eq!(
        second.log_path,
        log_dir().join(s.id.as_str()).join("flaky.2.log")
    );
    store
        .finish_attempt(&second.lease, &Outcome::Succeeded)
        .expect("finish");
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
    let attempts = store
        .attempts(&s.id, &TaskId::new("flaky").expect("id"))
        .expect("attempts");
    let outcomes: Vec<_> = attempts.iter().map(|a| (a.attempt.0, a.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (1, Some(OutcomeKind::TimedOut)),
            (2, Some(OutcomeKind::Succeeded))
        ]
    );
    assert!(kinds(&*store, &s.id).contains(&EventKind::TaskRequeued));
}

pub fn claim_waits_for_conflicting_locks(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("dir", &["src"], &[]),
                task("file", &["src/app.py"], &[]),
                task("glob", &["docs/*.md"], &[]),
                task("other", &["docs/*.txt"], &[]),
            ],
        ),
    );
    let w1 = worker(&*store, None, Duration::from_secs(30));
    let w2 = worker(&*store, None, Duration::from_secs(30));
    let dir = claim_task(&*store, &w1);
    assert_eq!(dir.lease.task_id.as_str(), "dir");
    // `file` overlaps `src`, so the next free task in plan order is `glob`, then `other`.
    assert_eq!(claim_task(&*store, &w2).lease.task_id.as_str(), "glob");
    let w3 = worker(&*store, None, Duration::from_secs(30));
    assert_eq!(claim_task(&*store, &w3).lease.task_id.as_str(), "other");
    let w4 = worker(&*store, None, Duration::from_secs(30));
    assert!(matches!(claim(&*store, &w4), Claim::Nothing));
    let file = store
        .task(&s.id, &TaskId::new("file").expect("id"))
        .expect("task");
    assert_eq!(file.state, Ready);
    let blocked = file.blocked_by.expect("blocked_by recorded");
    assert_eq!(blocked.paths, ["src/app.py"]);
    assert_eq!(
        blocked.held_by[0].task_id.as_ref().map(TaskId::as_str),
        Some("dir")
    );
    let conflicts: Vec<Event> = session_events(&*store, &s.id)
        .into_iter()
        .filter(|e| e.kind == EventKind::LockConflict)
        .collect();
    assert_eq!(conflicts.len(), 1, "one event per new reason, not per poll");
    assert_eq!(conflicts[0].detail, EventDetail::LockConflict(blocked));
    assert_eq!(
        conflicts[0].detail.describe().as_deref(),
        Some("waits for src/app.py: src held by dir")
    );
    store
        .finish_attempt(&dir.lease, &Outcome::Interrupted)
        .expect("finish");
    let file = store
        .task(&s.id, &TaskId::new("file").expect("id"))
        .expect("task");
    assert_eq!(
        file.blocked_by, None,
        "once `dir` let go of `src`, `file` waits for nobody, even before anyone claims again"
    );
    assert!(
        store
            .tasks(&s.id)
            .expect("tasks")
            .iter()
            .all(|t| t.blocked_by.is_none())
    );
    let dir = claim_task(&*store, &w4);
    assert_eq!(dir.lease.task_id.as_str(), "dir");
    let w5 = worker(&*store, None, Duration::from_secs(30));
    assert!(matches!(claim(&*store, &w5), Claim::Nothing));
    store
        .finish_attempt(&dir.lease, &Outcome::Succeeded)
        .expect("finish");
    assert_eq!(claim_task(&*store, &w5).lease.task_id.as_str(), "file");
    audit_lock_order(&session_events(&*store, &s.id)).expect("no overlapping locks");
}

pub fn lock_sets_are_taken_all_or_nothing(b: &dyn FreshStore) {
    let store = b.open();
    let holder = submit(&*store, plan("holder", vec![task("h", &[], &[])]));
    let s = submit(
        &*store,
        plan("p", vec![task("multi", &["a.txt", "b.txt", "c.txt"], &[])]),
    );
    assert_eq!(
        store
            .lock_paths(&holder.id, &[LockPath::parse("b.txt").expect("path")])
            .expect("lock"),
        LockOutcome::Acquired
    );
    let w = worker(&*store, Some(&s.id), Duration::from_secs(30));
    let req = ClaimRequest {
        worker: &w,
        session: Some(&s.id),
        log_dir: log_dir(),
        repo_id: None,
        remote_only: false,
    };
    assert!(matches!(
        store.claim_next_task(&req).expect("claim"),
        Claim::Nothing
    ));
    let locks = store.locks().expect("locks");
    assert_eq!(locks.len(), 1, "no partial lock set: {locks:?}");
    store.unlock_paths(&holder.id, None).expect("unlock");
    let Claim::Task(c) = store.claim_next_task(&req).expect("claim") else {
        panic!("free now")
    };
    let mut held: Vec<String> = store
        .locks()
        .expect("locks")
        .into_iter()
        .map(|l| l.path)
        .collect();
    held.sort();
    assert_eq!(held, ["a.txt", "b.txt", "c.txt"]);
    store
        .finish_attempt(&c.lease, &Outcome::Succeeded)
        .expect("finish");
    assert!(store.locks().expect("locks").is_empty());
}

pub fn manual_locks_conflict_name_the_holder_and_release(b: &dyn FreshStore) {
    let store = b.open();
    let a = submit(&*store, plan("a", vec![task("ta", &["shared.txt"], &[])]));
    let b2 = submit(&*store, plan("b", vec![task("tb", &[], &[])]));
    let p = |s: &str| LockPath::parse(s).expect("path");
    assert_eq!(
        store
            .lock_paths(&a.id, &[p("shared.txt"), p("docs")])
            .expect("lock"),
        LockOutcome::Acquired
    );
    // Locking again is a no-op, not a conflict with itself.
    assert_eq!(
        store.lock_paths(&a.id, &[p("docs")]).expect("lock"),
        LockOutcome::Acquired
    );
    assert_eq!(store.locks().expect("locks").len(), 2);
    let LockOutcome::Conflict(found) = store
        .lock_paths(&b2.id, &[p("free.txt"), p("docs/guide.md")])
        .expect("lock")
    else {
        panic!("expected a conflict")
    };
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].wanted, "docs/guide.md");
    assert_eq!(found[0].held.path, "docs");
    assert_eq!(found[0].held.session_id, a.id);
    assert_eq!(found[0].held.task_id, None);
    assert_eq!(
        store.locks().expect("locks").len(),
        2,
        "free.txt not taken: all or nothing"
    );
    // A session's own manual lock does not block its own task.
    let w = worker(&*store, Some(&a.id), Duration::from_secs(30));
    let c = store
        .claim_next_task(&ClaimRequest {
            worker: &w,
            session: Some(&a.id),
            log_dir: log_dir(),
            repo_id: None,
            remote_only: false,
        })
        .expect("claim");
    assert!(matches!(c, Claim::Task(_)), "{c:?}");
    let released = store
        .unlock_paths(&a.id, Some(&[p("docs")]))
        .expect("unlock");
    assert_eq!(released, ["docs"]);
    assert_eq!(
        store
            .lock_paths(&b2.id, &[p("docs/guide.md")])
            .expect("lock"),
        LockOutcome::Acquired
    );
    let k = kinds(&*store, &b2.id);
    assert!(k.contains(&EventKind::LockConflict) && k.contains(&EventKind::LockAcquired));
    let all = store.events(&EventFilter::default()).expect("events");
    audit_lock_order(&all).expect("lock order");
}

pub fn heartbeat_renews_the_lease(b: &dyn FreshStore) {
    let store = b.open();
    // A lease of 1 s, renewed every 100 ms for 2.5 s: it outlives itself only by renewal. The
    // margin between renewals (900 ms) is wide, so a loaded machine that stalls a round trip
    // does not let it expire (a 150 ms lease did, now and then, under a parallel build).
    let mut p = plan("p", vec![task("t", &[], &[])]);
    p.heartbeat_timeout = Duration::from_secs(1);
    let s = submit(&*store, p);
    let w = worker(&*store, None, Duration::from_secs(30));
    let c = claim_task(&*store, &w);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let hb = store.heartbeat(&w, Some(&c.lease)).expect("heartbeat");
        assert!(hb.lease_held && !hb.session_cancelled && !hb.stop_requested);
        assert_eq!(
            store.requeue_expired_leases().expect("requeue"),
            Expired::default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        store
            .finish_attempt(&c.lease, &Outcome::Succeeded)
            .expect("finish"),
        Finish::Recorded(TaskNext::Succeed)
    );
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
}

pub fn expired_lease_is_requeued_as_next_attempt(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(&*store, short_lease_plan("p", vec![task("t", &["x"], &[])]));
    let dead = worker(&*store, None, Duration::from_millis(150));
    let first = claim_task(&*store, &dead);
    let expired = poll_until("the lease to expire", || {
        let e = store.requeue_expired_leases().expect("requeue");
        (!e.leases.is_empty()).then_some(e)
    });
    assert_eq!(
        expired.leases,
        vec![(first.lease.clone(), TaskNext::Requeue)]
    );
    assert_eq!(expired.workers, vec![dead.clone()]);
    let dead_row = store.worker(&dead).expect("worker");
    assert_eq!(dead_row.status, WorkerStatus::Offline);
    assert_eq!(
        (dead_row.current_task, dead_row.attempt),
        (None, None),
        "an offline worker does not go on showing a task that will run elsewhere"
    );
    assert!(
        store.locks().expect("locks").is_empty(),
        "the dead lease's locks are released"
    );
    assert_eq!(
        store.requeue_expired_leases().expect("again"),
        Expired::default(),
        "idempotent"
    );
    let live = worker(&*store, None, Duration::from_secs(30));
    let second = claim_task(&*store, &live);
    assert_eq!(
        (second.lease.task_id.as_str(), second.lease.attempt),
        ("t", Attempt(2))
    );
    store
        .finish_attempt(&second.lease, &Outcome::Succeeded)
        .expect("finish");
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
    let attempts = store
        .attempts(&s.id, &TaskId::new("t").expect("id"))
        .expect("attempts");
    assert_eq!(attempts[0].outcome, Some(OutcomeKind::LeaseLost));
    let k = kinds(&*store, &s.id);
    assert!(k.contains(&EventKind::TaskRequeued));
    let offline = store
        .events(&EventFilter::default())
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == EventKind::WorkerOffline)
        .count();
    assert_eq!(offline, 1);
}

pub fn stale_result_is_rejected(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(&*store, short_lease_plan("p", vec![task("t", &["x"], &[])]));
    let zombie = worker(&*store, None, Duration::from_millis(150));
    let old = claim_task(&*store, &zombie);
    poll_until("the lease to expire", || {
        (!store
            .requeue_expired_leases()
            .expect("requeue")
            .leases
            .is_empty())
        .then_some(())
    });
    let live = worker(&*store, None, Duration::from_secs(30));
    let new = claim_task(&*store, &live);
    // The zombie wakes: its heartbeat says the lease is gone, and its result is refused.
    let hb = store
        .heartbeat(&zombie, Some(&old.lease))
        .expect("heartbeat");
    assert!(!hb.lease_held && hb.rejoined);
    assert_eq!(
        store
            .finish_attempt(&old.lease, &Outcome::Failed { exit_code: 9 })
            .expect("finish"),
        Finish::Stale
    );
    assert_eq!(
        store
            .task(&s.id, &TaskId::new("t").expect("id"))
            .expect("task")
            .state,
        Running
    );
    assert_eq!(
        store.locks().expect("locks").len(),
        1,
        "the live attempt keeps its lock"
    );
    store
        .finish_attempt(&new.lease, &Outcome::Succeeded)
        .expect("finish");
    let t = store
        .task(&s.id, &TaskId::new("t").expect("id"))
        .expect("task");
    assert_eq!(
        (t.state, t.attempts, t.worker_id.as_ref()),
        (Succeeded, 2, Some(&live))
    );
    let rejected: Vec<Event> = session_events(&*store, &s.id)
        .into_iter()
        .filter(|e| e.kind == EventKind::StaleResultRejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].worker_id.as_ref(), Some(&zombie));
    assert_eq!(rejected[0].attempt, Some(Attempt(1)));
    let zw = store.worker(&zombie).expect("worker");
    assert_eq!(
        (zw.status, zw.current_task.clone()),
        (WorkerStatus::Idle, None)
    );
    // Workers' own events (registered, offline, back) read back typed too.
    let all = store.events(&EventFilter::default()).expect("events");
    assert_details_typed(&all);
    let words = |kind: EventKind| -> Vec<String> {
        all.iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.detail.describe())
            .collect()
    };
    assert_eq!(
        words(EventKind::StaleResultRejected),
        ["late failed refused: the task is running at attempt 2"]
    );
    // Which the store noticed first, its silence or its lease, depends on timing.
    let offline = words(EventKind::WorkerOffline);
    assert!(
        offline == ["heartbeat timed out"] || offline == ["its lease on t expired"],
        "{offline:?}"
    );
    assert_eq!(
        words(EventKind::WorkerRegistered)
            .last()
            .map(String::as_str),
        Some("back after it was marked offline")
    );
}

pub fn lost_leases_are_bounded(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        short_lease_plan("p", vec![task("crasher", &[], &[])]),
    );
    let mut last = TaskNext::Requeue;
    for round in 1..=4u32 {
        let w = worker(&*store, None, Duration::from_secs(30));
        let c = claim_task(&*store, &w);
        assert_eq!(c.lease.attempt, Attempt(round));
        last = poll_until("the lease to expire", || {
            store
                .requeue_expired_leases()
                .expect("requeue")
                .leases
                .first()
                .map(|l| l.1)
        });
    }
    assert_eq!(last, TaskNext::Fail, "the fourth lost lease fails the task");
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Failed
    );
}

pub fn cancel_stops_waiting_tasks_and_fences_running_ones(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("run", &["r"], &[]),
                task("wait", &[], &["run"]),
                task("free", &[], &[]),
            ],
        ),
    );
    store
        .lock_paths(&s.id, &[LockPath::parse("manual").expect("path")])
        .expect("lock");
    let w = worker(&*store, None, Duration::from_secs(30));
    let running = claim_task(&*store, &w);
    let after = store
        .change_session(&s.id, SessionAction::Cancel)
        .expect("cancel");
    assert_eq!(after.status, SessionStatus::Cancelled);
    assert!(after.completed_at.is_none(), "a task is still running");
    assert_eq!(
        states(&*store, &s.id),
        [
            ("run".into(), Running),
            ("wait".into(), Cancelled),
            ("free".into(), Cancelled)
        ]
    );
    let held: Vec<String> = store
        .locks()
        .expect("locks")
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(
        held,
        ["r"],
        "the running task keeps its lock until its process is gone"
    );
    let hb = store
        .heartbeat(&w, Some(&running.lease))
        .expect("heartbeat");
    assert!(hb.session_cancelled && hb.lease_held);
    assert!(matches!(claim(&*store, &w), Claim::Nothing));
    let f = store
        .finish_attempt(&running.lease, &Outcome::Cancelled)
        .expect("finish");
    assert_eq!(f, Finish::Recorded(TaskNext::Cancel));
    let end = store.session(&s.id).expect("session");
    assert_eq!(
        (end.status, end.cancelled_tasks),
        (SessionStatus::Cancelled, 3)
    );
    assert!(end.completed_at.is_some());
    assert!(store.locks().expect("locks").is_empty());
    audit_terminal_once(&session_events(&*store, &s.id)).expect("terminal once");
}

pub fn pause_stops_claims_until_resume(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan("p", vec![task("a", &[], &[]), task("b", &[], &[])]),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let a = claim_task(&*store, &w);
    let paused = store
        .change_session(&s.id, SessionAction::Pause)
        .expect("pause");
    assert_eq!(paused.status, SessionStatus::Paused);
    let w2 = worker(&*store, None, Duration::from_secs(30));
    assert!(matches!(claim(&*store, &w2), Claim::Nothing));
    // A running task of a paused session finishes normally.
    store
        .finish_attempt(&a.lease, &Outcome::Succeeded)
        .expect("finish");
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Paused
    );
    store
        .change_session(&s.id, SessionAction::Resume)
        .expect("resume");
    let b2 = claim_task(&*store, &w2);
    store
        .finish_attempt(&b2.lease, &Outcome::Succeeded)
        .expect("finish");
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
    let k = kinds(&*store, &s.id);
    assert!(k.contains(&EventKind::SessionPaused) && k.contains(&EventKind::SessionResumed));
}

pub fn invalid_transitions_are_refused(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(&*store, plan("p", vec![task("a", &[], &[])]));
    let err = store
        .change_session(&s.id, SessionAction::Resume)
        .expect_err("not paused");
    assert!(matches!(err, StoreError::Transition(_)), "{err}");
    let w = worker(&*store, None, Duration::from_secs(30));
    let a = claim_task(&*store, &w);
    store
        .finish_attempt(&a.lease, &Outcome::Succeeded)
        .expect("finish");
    for action in [
        SessionAction::Pause,
        SessionAction::Resume,
        SessionAction::Cancel,
    ] {
        let err = store
            .change_session(&s.id, action)
            .expect_err("completed is final");
        assert!(err.to_string().ends_with("it is completed"), "{err}");
    }
    assert!(store.set_workers_wanted(&s.id, 3).is_err());
    assert!(
        store
            .lock_paths(&s.id, &[LockPath::parse("x").expect("path")])
            .is_err()
    );
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
    let missing = SessionId::from_string("000000000000");
    assert!(matches!(
        store.session(&missing),
        Err(StoreError::NoSuchSession(_))
    ));
}

pub fn sessions_resolve_by_id_prefix_and_name(b: &dyn FreshStore) {
    let store = b.open();
    // No pause between them: sessions created in the same millisecond still keep their order.
    let first = submit(&*store, plan("nightly", vec![task("a", &[], &[])]));
    let second = submit(&*store, plan("nightly", vec![task("a", &[], &[])]));
    let other = submit(&*store, plan("other", vec![task("a", &[], &[])]));
    assert_eq!(
        store.resolve_session(first.id.as_str()).expect("id").id,
        first.id
    );
    assert_eq!(
        store.resolve_session("nightly").expect("name").id,
        second.id,
        "latest by name"
    );
    assert_eq!(
        store
            .resolve_session(&other.id.as_str()[..8])
            .expect("prefix")
            .id,
        other.id
    );
    assert!(matches!(
        store.resolve_session("nope"),
        Err(StoreError::NoSuchSession(_))
    ));
    assert!(matches!(
        store.resolve_session("%"),
        Err(StoreError::NoSuchSession(_))
    ));
    let listed: Vec<SessionId> = store
        .list_sessions(&SessionFilter::default())
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        listed,
        [other.id.clone(), second.id.clone(), first.id.clone()],
        "newest first"
    );
    let limited = store
        .list_sessions(&SessionFilter {
            limit: Some(1),
            status: Some(SessionStatus::Created),
        })
        .expect("list");
    assert_eq!(limited.len(), 1);
}

pub fn scale_down_stops_idle_workers_first(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan("p", vec![task("a", &[], &[]), task("b", &[], &[])]),
    );
    let busy = worker(&*store, Some(&s.id), Duration::from_secs(30));
    let idle1 = worker(&*store, Some(&s.id), Duration::from_secs(30));
    let req = ClaimRequest {
        worker: &busy,
        session: Some(&s.id),
        log_dir: log_dir(),
        repo_id: None,
        remote_only: false,
    };
    let Claim::Task(c) = store.claim_next_task(&req).expect("claim") else {
        panic!("a task")
    };
    let idle2 = worker(&*store, Some(&s.id), Duration::from_secs(30));
    let mut chosen = store.request_worker_stops(&s.id, 2).expect("stops");
    chosen.sort();
    let mut want = vec![idle1.clone(), idle2.clone()];
    want.sort();
    assert_eq!(chosen, want, "idle workers leave first");
    let stop_req = ClaimRequest {
        worker: &idle1,
        session: Some(&s.id),
        log_dir: log_dir(),
        repo_id: None,
        remote_only: false,
    };
    assert!(matches!(
        store.claim_next_task(&stop_req).expect("claim"),
        Claim::Stop
    ));
    assert!(
        store
            .heartbeat(&idle2, None)
            .expect("heartbeat")
            .stop_requested
    );
    assert!(
        !store
            .heartbeat(&busy, Some(&c.lease))
            .expect("heartbeat")
            .stop_requested
    );
    let more = store.request_worker_stops(&s.id, 5).expect("stops");
    assert_eq!(more, vec![busy.clone()], "then busy ones, after their task");
    store.stop_worker(&idle1).expect("stop");
    store
        .stop_worker(&idle1)
        .expect("stopping twice is harmless");
    assert_eq!(
        store.worker(&idle1).expect("worker").status,
        WorkerStatus::Stopped
    );
}

pub fn stopping_a_worker_gives_its_task_back(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(&*store, plan("p", vec![task("a", &["lockme"], &[])]));
    let w = worker(&*store, None, Duration::from_secs(30));
    let c = claim_task(&*store, &w);
    store.stop_worker(&w).expect("stop");
    let t = store
        .task(&s.id, &TaskId::new("a").expect("id"))
        .expect("task");
    assert_eq!(
        (t.state, t.outcome),
        (Ready, Some(OutcomeKind::Interrupted))
    );
    assert!(store.locks().expect("locks").is_empty());
    assert_eq!(
        store
            .finish_attempt(&c.lease, &Outcome::Succeeded)
            .expect("finish"),
        Finish::Stale,
        "the stopped worker's lease is gone"
    );
    let w2 = worker(&*store, None, Duration::from_secs(30));
    let again = claim_task(&*store, &w2);
    assert_eq!(again.lease.attempt, Attempt(2));
    let k = store.events(&EventFilter::default()).expect("events");
    assert!(k.iter().any(|e| e.kind == EventKind::WorkerStopped));
    assert_details_typed(&k);
}

pub fn events_are_ordered_and_filtered(b: &dyn FreshStore) {
    let store = b.open();
    let a = submit(&*store, plan("a", vec![task("x", &[], &[])]));
    let b2 = submit(&*store, plan("b", vec![task("y", &[], &[])]));
    let all = store.events(&EventFilter::default()).expect("events");
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        store.last_seq().expect("last"),
        all.last().expect("some").seq
    );
    let only_b = session_events(&*store, &b2.id);
    assert!(only_b.iter().all(|e| e.session_id.as_ref() == Some(&b2.id)));
    let after = store
        .events(&EventFilter {
            after_seq: Some(all[1].seq),
            limit: Some(1),
            ..Default::default()
        })
        .expect("events");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, all[2].seq);
    let ev = store
        .append_event(&NewEvent {
            session_id: Some(a.id.clone()),
            task_id: Some(TaskId::new("x").expect("id")),
            worker_id: None,
            attempt: Some(Attempt(1)),
            detail: EventDetail::ScopeViolation(ScopeViolation {
                files: vec!["b.txt".into()],
            }),
        })
        .expect("append");
    assert_eq!(ev.kind, EventKind::ScopeViolation);
    assert!(ev.seq > all.last().expect("some").seq);
    assert_eq!(
        ev.detail,
        EventDetail::ScopeViolation(ScopeViolation {
            files: vec!["b.txt".into()]
        })
    );
    let json = serde_json::to_value(&ev).expect("json");
    for key in [
        "seq",
        "at",
        "kind",
        "session_id",
        "task_id",
        "worker_id",
        "attempt",
        "detail",
    ] {
        assert!(json.get(key).is_some(), "event JSON lacks {key}");
    }
    assert_eq!(json["kind"], "scope_violation");
}

pub fn summary_counts_everything(b: &dyn FreshStore) {
    let store = b.open();
    let empty = store.summary().expect("summary");
    assert_eq!(
        (
            empty.workers.total,
            empty.sessions.total,
            empty.tasks.queued
        ),
        (0, 0, 0)
    );
    // Oldest session first: `q` is claimed before `p`.
    let done = submit(&*store, plan("q", vec![task("z", &[], &[])]));
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("a", &[], &[]),
                task("b", &[], &[]),
                task("c", &[], &[]),
            ],
        ),
    );
    let w1 = worker(&*store, None, Duration::from_secs(30));
    let w2 = worker(&*store, None, Duration::from_secs(30));
    let z = claim_task(&*store, &w1);
    assert_eq!(z.lease.task_id.as_str(), "z");
    store
        .finish_attempt(&z.lease, &Outcome::Succeeded)
        .expect("finish");
    let a = claim_task(&*store, &w1);
    let b3 = claim_task(&*store, &w2);
    store
        .finish_attempt(&b3.lease, &Outcome::Failed { exit_code: 1 })
        .expect("finish");
    let sum = store.summary().expect("summary");
    assert_eq!(
        (
            sum.workers.total,
            sum.workers.idle,
            sum.workers.busy,
            sum.workers.offline
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(sum.workers.utilization, 0.5);
    assert_eq!((sum.sessions.active, sum.sessions.total), (1, 2));
    assert_eq!(
        (
            sum.tasks.queued,
            sum.tasks.running,
            sum.tasks.completed,
            sum.tasks.failed
        ),
        (1, 1, 1, 1)
    );
    let json = serde_json::to_value(&sum).expect("json");
    assert!(json["timestamp"].is_string());
    assert!(json["workers"]["utilization"].is_number());
    let _ = (a, s, done);
}

pub fn only_finished_sessions_are_deleted(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(&*store, plan("p", vec![task("a", &[], &[])]));
    assert!(matches!(
        store.delete_session(&s.id),
        Err(StoreError::Transition(_))
    ));
    store
        .change_session(&s.id, SessionAction::Cancel)
        .expect("cancel");
    store.delete_session(&s.id).expect("delete");
    assert!(matches!(
        store.session(&s.id),
        Err(StoreError::NoSuchSession(_))
    ));
    assert!(session_events(&*store, &s.id).is_empty());
}

pub fn wait_for_change_sees_other_handles(b: &dyn FreshStore) {
    let watcher = b.open();
    let writer = b.open();
    // The first call only starts watching.
    watcher
        .wait_for_change(Duration::from_millis(1))
        .expect("wait");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        submit(&*writer, plan("p", vec![task("a", &[], &[])]));
    });
    let started = Instant::now();
    watcher
        .wait_for_change(Duration::from_secs(10))
        .expect("wait");
    t.join().expect("writer thread");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woke on the write, not the timeout"
    );
    assert_eq!(
        watcher
            .list_sessions(&SessionFilter::default())
            .expect("list")
            .len(),
        1
    );
}

/// Several handles (like several worker processes) claim and finish a session whose tasks have
/// overlapping lock sets. Every task runs exactly once, and the event log proves that no two
/// running tasks ever held overlapping locks.
pub fn concurrent_workers_claim_each_task_once_without_lock_overlap(b: &dyn FreshStore) {
    let setup = b.open();
    let pool = ["a", "b", "c", "d", "e", "f"];
    let mut rng = fastrand::Rng::with_seed(7);
    let tasks: Vec<TaskSpec> = (0..120)
        .map(|i| {
            let files: Vec<String> = (0..rng.usize(1..3))
                .map(|_| {
                    let p = pool[rng.usize(..pool.len())];
                    if rng.bool() {
                        p.to_string()
                    } else {
                        format!("{p}/x")
                    }
                })
                .collect();
            let refs: Vec<&str> = files.iter().map(String::as_str).collect();
            task(&format!("t{i}"), &refs, &[])
        })
        .collect();
    let s = submit(&*setup, plan("stress", tasks));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = b.open();
            let session = s.id.clone();
            std::thread::spawn(move || {
                work_session(&*store, &session, Record::Apart, |_| {
                    std::thread::sleep(Duration::from_micros(300));
                    Outcome::Succeeded
                })
            })
        })
        .collect();
    let mut ran: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("worker thread"))
        .map(|(task, _)| task)
        .collect();
    ran.sort();
    let mut want: Vec<String> = (0..120).map(|i| format!("t{i}")).collect();
    want.sort();
    assert_eq!(ran, want, "every task ran exactly once");
    let end = setup.session(&s.id).expect("session");
    assert_eq!(
        (end.status, end.succeeded_tasks),
        (SessionStatus::Completed, 120)
    );
    let events = session_events(&*setup, &s.id);
    let checked = audit_lock_order(&events).expect("no overlapping locks");
    assert_eq!(checked, 120);
    audit_terminal_once(&events).expect("terminal once");
}

/// Sixteen handles at once (sixteen worker processes) on a session that mixes everything a
/// claim or a completion must get right side by side: tasks with overlapping lock sets and
/// tasks without files, dependencies, a pool of 2, first attempts that fail and are retried,
/// completions recorded alone or with the next claim. Every task ends exactly once, no two
/// running tasks ever held overlapping locks, the pool never ran 3, the counters add up, and a
/// reader that followed the event log by `seq` while it was written missed no event (`seq`
/// follows commit order).
pub fn sixteen_workers_at_once_keep_every_promise(b: &dyn FreshStore) {
    const TASKS: usize = 160;
    const WORKERS: usize = 16;
    let setup = b.open();
    let paths = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let mut rng = fastrand::Rng::with_seed(16);
    let specs: Vec<TaskSpec> = (0..TASKS)
        .map(|i| {
            let files: Vec<String> = match i % 3 {
                0 => Vec::new(),
                _ => (0..rng.usize(1..3))
                    .map(|_| {
                        let p = paths[rng.usize(..paths.len())];
                        if rng.bool() {
                            p.to_string()
                        } else {
                            format!("{p}/x")
                        }
                    })
                    .collect(),
            };
            let after: Vec<String> = if i >= 10 && i % 5 == 0 {
                vec![format!("t{}", rng.usize(..i))]
            } else {
                Vec::new()
            };
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            let after: Vec<&str> = after.iter().map(String::as_str).collect();
            let mut t = task(&format!("t{i}"), &files, &after);
            if i % 4 == 1 {
                t.pool = Some("p".into());
            }
            if i % 7 == 0 {
                t.retries = 1;
            }
            t
        })
        .collect();
    let pooled: std::collections::BTreeSet<String> = specs
        .iter()
        .filter(|t| t.pool.is_some())
        .map(|t| t.id.to_string())
        .collect();
    let s = submit(
        &*setup,
        with_pool(plan("sixteen", specs), "p", 2, Duration::from_secs(60)),
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    // One handle each, opened here: a FreshStore stays on this thread.
    let follower_store = b.open();
    let worker_stores: Vec<Box<dyn Store>> = (0..WORKERS).map(|_| b.open()).collect();
    let (followed, ran) = std::thread::scope(|scope| {
        // Pages through the log as the workers write it, as `br events --follow` does.
        let follower = scope.spawn(|| {
            let store = follower_store;
            let mut seen: Vec<i64> = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store
                    .events(&EventFilter {
                        after_seq: seen.last().copied(),
                        session: None,
                        limit: Some(50),
                    })
                    .expect("events");
                seen.extend(page.iter().map(|e| e.seq));
                if page.is_empty() {
                    if finished {
                        return seen;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let workers: Vec<_> = worker_stores
            .into_iter()
            .enumerate()
            .map(|(n, store)| {
                let session = s.id.clone();
                let record = if n % 2 == 0 {
                    Record::WithNextClaim
                } else {
                    Record::Apart
                };
                scope.spawn(move || {
                    work_session(&*store, &session, record, |t| {
                        let retried = t.lease.task_id.as_str()[1..]
                            .parse::<usize>()
                            .is_ok_and(|i| i % 7 == 0);
                        if retried && t.lease.attempt.0 == 1 {
                            Outcome::Failed { exit_code: 1 }
                        } else {
                            Outcome::Succeeded
                        }
                    })
                })
            })
            .collect();
        let ran: Vec<(String, u32)> = workers
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (follower.join().expect("follower"), ran)
    });
    // Every attempt ran once: first attempts of every task, second ones of the retried.
    let mut ran = ran;
    ran.sort();
    let mut want: Vec<(String, u32)> = (0..TASKS)
        .flat_map(|i| {
            let attempts = if i % 7 == 0 { 2 } else { 1 };
            (1..=attempts).map(move |a| (format!("t{i}"), a))
        })
        .collect();
    want.sort();
    assert_eq!(ran, want, "every attempt ran exactly once");
    let end = setup.session(&s.id).expect("session");
    assert_eq!(
        (
            end.status,
            end.succeeded_tasks,
            end.failed_tasks,
            end.running_tasks
        ),
        (SessionStatus::Completed, TASKS as u32, 0, 0),
        "the counters add up"
    );
    let events = setup.events(&EventFilter::default()).expect("every event");
    let all: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        followed, all,
        "a reader following by seq saw every event, in order"
    );
    let session_events: Vec<Event> = events
        .into_iter()
        .filter(|e| e.session_id.as_ref() == Some(&s.id))
        .collect();
    let locked_attempts: usize = (0..TASKS)
        .filter(|i| i % 3 != 0)
        .map(|i| if i % 7 == 0 { 2 } else { 1 })
        .sum();
    assert_eq!(
        audit_lock_order(&session_events).expect("no overlapping locks"),
        locked_attempts
    );
    audit_terminal_once(&session_events).expect("terminal once");
    // Replayed in commit order, the pool never runs more than its size.
    let mut running = 0;
    for e in &session_events {
        let Some(task) = e.task_id.as_ref().filter(|t| pooled.contains(t.as_str())) else {
            continue;
        };
        match e.kind {
            EventKind::TaskStarted => {
                running += 1;
                assert!(
                    running <= 2,
                    "pool p ran {running} at event {} ({task})",
                    e.seq
                );
            }
            EventKind::TaskSucceeded | EventKind::TaskFailed | EventKind::TaskRequeued => {
                running -= 1;
            }
            _ => {}
        }
    }
    let started = session_events
        .iter()
        .filter(|e| e.kind == EventKind::SessionStarted)
        .count();
    assert_eq!(started, 1, "the session started once");
}

pub fn attempt_reports_are_kept_and_scope_violations_recorded(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(&*store, plan("p", vec![task("a", &["a/**"], &[])]));
    let w = worker(&*store, None, Duration::from_secs(30));
    let c = claim_task(&*store, &w);
    let report = AttemptReport {
        commit: Some("c0ffee".into()),
        changed: vec!["a/x".into(), "b.txt".into()],
        scope_violations: vec!["b.txt".into()],
        output_bytes: Some(42),
        usage: None,
    };
    store
        .finish_attempt_with(&c.lease, &Outcome::Succeeded, &report)
        .expect("finish");
    let attempts = store
        .attempts(&s.id, &TaskId::new("a").expect("id"))
        .expect("attempts");
    assert_eq!(attempts[0].detail["commit"], "c0ffee");
    assert_eq!(attempts[0].detail["output_bytes"], 42);
    assert_eq!(
        attempts[0].detail["changed"],
        serde_json::json!(["a/x", "b.txt"])
    );
    let events = session_events(&*store, &s.id);
    let violation = events
        .iter()
        .find(|e| e.kind == EventKind::ScopeViolation)
        .expect("scope_violation recorded");
    assert_eq!(
        violation.detail,
        EventDetail::ScopeViolation(ScopeViolation {
            files: vec!["b.txt".into()]
        })
    );
    let succeeded = events
        .iter()
        .find(|e| e.kind == EventKind::TaskSucceeded)
        .expect("succeeded");
    assert!(
        matches!(&succeeded.detail, EventDetail::TaskSucceeded(d) if d.commit.as_deref() == Some("c0ffee")),
        "{:?}",
        succeeded.detail
    );
    assert!(violation.seq < succeeded.seq);
}

pub fn a_finished_task_can_be_requeued_on_a_new_base(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan("p", vec![task("a", &["x"], &[]), task("b", &[], &[])]),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    for _ in 0..2 {
        let c = claim_task(&*store, &w);
        store
            .finish_attempt(&c.lease, &Outcome::Succeeded)
            .expect("finish");
    }
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
    let a = TaskId::new("a").expect("id");
    let requeued = store
        .requeue_task(
            &s.id,
            &a,
            "1234abcd",
            "merge conflict with b",
            RunReason::Conflict,
        )
        .expect("requeue");
    assert_eq!(
        (requeued.state, requeued.base_commit.as_deref()),
        (Ready, Some("1234abcd"))
    );
    let again = store.session(&s.id).expect("session");
    assert_eq!(
        (again.status, again.succeeded_tasks, again.completed_at),
        (SessionStatus::Running, 1, None)
    );
    let c = claim_task(&*store, &w);
    assert_eq!(
        (c.lease.attempt, c.base_commit.as_deref()),
        (Attempt(2), Some("1234abcd"))
    );
    store
        .finish_attempt(&c.lease, &Outcome::Succeeded)
        .expect("finish");
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
    let words: Vec<String> = session_events(&*store, &s.id)
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SessionResumed | EventKind::TaskRequeued))
        .filter_map(|e| e.detail.describe())
        .collect();
    assert_eq!(
        words,
        [
            "was completed: merge conflict with b",
            "merge conflict with b; runs again from 1234abcd"
        ]
    );
    let pending = submit(&*store, plan("q", vec![task("z", &[], &[])]));
    let z = TaskId::new("z").expect("id");
    assert!(
        matches!(
            store.requeue_task(&pending.id, &z, "1234", "x", RunReason::Conflict),
            Err(StoreError::Transition(_))
        ),
        "only a finished task can be requeued"
    );
}

pub fn finishing_and_claiming_the_next_is_one_step(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("a", &["x"], &[]),
                task("b", &[], &["a"]),
                task("c", &["x"], &[]),
            ],
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let next = ClaimRequest {
        worker: &w,
        session: None,
        log_dir: log_dir(),
        repo_id: None,
        remote_only: false,
    };
    let a = claim_task(&*store, &w);
    assert_eq!(a.lease.task_id.as_str(), "a");
    // `a` succeeds: its lock on `x` is released and `b` becomes ready in the same transaction,
    // so the claim that follows sees both: plan order picks `b`.
    let (finish, claim) = store
        .finish_attempt_and_claim(
            &a.lease,
            &Outcome::Succeeded,
            &AttemptReport::default(),
            &next,
        )
        .expect("finish and claim");
    assert_eq!(finish, Finish::Recorded(TaskNext::Succeed));
    let Claim::Task(b_task) = claim else {
        panic!("expected b, got {claim:?}");
    };
    assert_eq!(b_task.lease.task_id.as_str(), "b");
    // A stale finish is refused and changes nothing, but the claim still happens.
    let (finish, claim) = store
        .finish_attempt_and_claim(
            &a.lease,
            &Outcome::Succeeded,
            &AttemptReport::default(),
            &next,
        )
        .expect("stale finish and claim");
    assert_eq!(finish, Finish::Stale);
    let Claim::Task(c_task) = claim else {
        panic!("expected c, got {claim:?}");
    };
    assert_eq!(c_task.lease.task_id.as_str(), "c");
    for t in [&b_task, &c_task] {
        let (_, claim) = store
            .finish_attempt_and_claim(
                &t.lease,
                &Outcome::Succeeded,
                &AttemptReport::default(),
                &next,
            )
            .expect("finish");
        assert!(!matches!(claim, Claim::Task(_)), "{claim:?}");
    }
    let done = store.session(&s.id).expect("session");
    assert_eq!(done.status, SessionStatus::Completed);
    let events = session_events(&*store, &s.id);
    audit_terminal_once(&events).expect("every task ended once");
    audit_lock_order(&events).expect("no overlapping locks");
}

pub fn workers_claim_only_their_repositorys_sessions(b: &dyn FreshStore) {
    let store = b.open();
    let submit_in = |repo: Option<&str>, name: &str| {
        store
            .create_session(&NewSession {
                plan: plan(name, vec![task("t", &[], &[])]),
                repo_root: PathBuf::from(format!("/{name}")),
                repo_id: repo.map(str::to_string),
                plan_path: None,
                base_commit: None,
                workers_wanted: 1,
            })
            .expect("create session")
    };
    let a = submit_in(Some("root:aaaa"), "a");
    let w = worker(&*store, None, Duration::from_secs(30));
    let claim_for = |repo: &str| {
        store
            .claim_next_task(&ClaimRequest {
                worker: &w,
                session: None,
                log_dir: log_dir(),
                repo_id: Some(repo),
                remote_only: false,
            })
            .expect("claim")
    };
    // A worker of repository B finds nothing: A's task stays ready.
    assert!(matches!(claim_for("root:bbbb"), Claim::Nothing));
    assert_eq!(
        store
            .task(&a.id, &TaskId::new("t").expect("id"))
            .expect("task")
            .state,
        TaskState::Ready
    );
    // A session that records no repository (an older store's) is anyone's.
    let old = submit_in(None, "old");
    let Claim::Task(t) = claim_for("root:bbbb") else {
        panic!("the unattributed session's task");
    };
    assert_eq!(t.lease.session_id, old.id);
    // A worker of A takes A's task.
    let Claim::Task(t) = claim_for("root:aaaa") else {
        panic!("A's task");
    };
    assert_eq!(t.lease.session_id, a.id);
    assert_eq!(
        store.session(&a.id).expect("session").repo_id.as_deref(),
        Some("root:aaaa")
    );
}

/// A worktree plan whose tasks land (`land = "auto"`), with a base commit to start from.
fn landing_plan(name: &str, tasks: Vec<TaskSpec>) -> Plan {
    let mut p = plan(name, tasks);
    p.isolation = Isolation::Worktree;
    p
}

fn submit_at_base(store: &dyn Store, plan: Plan) -> Session {
    store
        .create_session(&NewSession {
            plan,
            repo_root: PathBuf::from("/repo"),
            repo_id: None,
            plan_path: Some(PathBuf::from("/repo/br.toml")),
            base_commit: Some("base0".into()),
            workers_wanted: 2,
        })
        .expect("create session")
}

/// Finishes `c` as succeeded with its result at `commit`.
fn succeed_with(store: &dyn Store, c: &ClaimedTask, commit: &str) {
    let finish = store
        .finish_attempt_with(
            &c.lease,
            &Outcome::Succeeded,
            &AttemptReport {
                commit: Some(commit.into()),
                changed: vec!["x".into()],
                ..Default::default()
            },
        )
        .expect("finish");
    assert!(matches!(finish, Finish::Recorded(_)), "{finish:?}");
}

fn land_claim(store: &dyn Store, w: &WorkerId) -> LandingJob {
    match claim(store, w) {
        Claim::Land(job) => *job,
        other => panic!("expected the landing turn, got {other:?}"),
    }
}

fn next_item(store: &dyn Store, job: &LandingJob) -> LandingItem {
    match store.next_landing(job).expect("next landing") {
        NextLanding::Task(item) => *item,
        other => panic!("expected a task to land, got {other:?}"),
    }
}

pub fn landing_is_one_turn_at_a_time_and_decides_what_follows(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit_at_base(
        &*store,
        landing_plan(
            "land",
            vec![
                task("a", &["x"], &[]),
                TaskSpec {
                    prompt: Some("Make x say \"b\".".into()),
                    ..task("b", &["x"], &[])
                },
                task("c", &[], &["a"]),
            ],
        ),
    );
    let (w1, w2) = (
        worker(&*store, None, Duration::from_secs(30)),
        worker(&*store, None, Duration::from_secs(30)),
    );
    let a = claim_task(&*store, &w1);
    assert_eq!(
        (a.lease.task_id.as_str(), a.reason, a.base_commit.as_deref()),
        ("a", RunReason::First, Some("base0")),
        "the first attempt starts at the base: nothing landed yet"
    );
    succeed_with(&*store, &a, "c-a1");
    let task_a = TaskId::new("a").expect("id");
    let got = store.task(&s.id, &task_a).expect("task");
    assert_eq!(
        (got.state, got.landing),
        (Succeeded, Some(br_core::state::Landing::Waiting))
    );
    assert_eq!(
        store.history(&s.id).expect("history").waiting,
        std::slice::from_ref(&task_a)
    );
    // Waiting to land, `a` still holds `x` and `c` still waits for it.
    assert!(
        store
            .locks()
            .expect("locks")
            .iter()
            .any(|l| l.task_id.as_ref() == Some(&task_a)),
        "a keeps its lock until it lands"
    );
    assert_eq!(
        states(&*store, &s.id),
        [
            ("a".into(), Succeeded),
            ("b".into(), Ready),
            ("c".into(), Pending)
        ]
    );

    // One turn at a time: w2 takes it; w1 finds nothing (b waits for x, c for a).
    let job = land_claim(&*store, &w2);
    assert_eq!(job.base_commit.as_deref(), Some("base0"));
    assert!(matches!(claim(&*store, &w1), Claim::Nothing));
    let item = next_item(&*store, &job);
    assert_eq!(
        (
            item.task_id.as_str(),
            item.attempt,
            item.result_commit.as_deref()
        ),
        ("a", Attempt(1), Some("c-a1"))
    );
    assert_eq!(item.start_commit.as_deref(), Some("base0"));
    assert!(store.renew_landing(&job).expect("renew"));

    // Someone else's answer is refused: the turn is w2's.
    let mut impostor = job.clone();
    impostor.worker_id = w1.clone();
    assert_eq!(
        store
            .record_landing(
                &impostor,
                &task_a,
                Attempt(1),
                &LandingResult::Landed {
                    commit: "t-x".into()
                }
            )
            .expect("record"),
        LandingRecorded::Stale
    );

    // A conflict: repaired on the tip, told why.
    let conflict = LandingResult::Conflict {
        files: vec!["x".into()],
        with: vec!["other".into()],
        details: "<<<<<<<".into(),
        tip: "t1".into(),
    };
    assert_eq!(
        store
            .record_landing(&job, &task_a, Attempt(1), &conflict)
            .expect("record"),
        LandingRecorded::Repair
    );
    let got = store.task(&s.id, &task_a).expect("task");
    assert_eq!((got.state, got.landing, got.repairs), (Ready, None, 1));
    assert!(matches!(
        store.next_landing(&job).expect("next"),
        NextLanding::Done
    ));
    let again = claim_task(&*store, &w1);
    assert_eq!(
        (
            again.lease.task_id.as_str(),
            again.lease.attempt,
            again.reason,
            again.base_commit.as_deref()
        ),
        ("a", Attempt(2), RunReason::Conflict, Some("t1")),
        "the repair starts on the tip it conflicted with"
    );
    succeed_with(&*store, &again, "c-a2");

    // Landed: the lock goes, the dependent is ready, the session knows its tip.
    let job = land_claim(&*store, &w2);
    let item = next_item(&*store, &job);
    assert_eq!(
        (item.attempt, item.result_commit.as_deref()),
        (Attempt(2), Some("c-a2"))
    );
    assert_eq!(
        store
            .record_landing(
                &job,
                &task_a,
                Attempt(2),
                &LandingResult::Landed {
                    commit: "t2".into()
                }
            )
            .expect("record"),
        LandingRecorded::Landed
    );
    let got = store.task(&s.id, &task_a).expect("task");
    assert_eq!(
        (got.landing, got.landed_commit.as_deref()),
        (Some(br_core::state::Landing::Landed), Some("t2"))
    );
    let session = store.session(&s.id).expect("session");
    assert_eq!(
        (session.landed_tasks, session.integration_commit.as_deref()),
        (1, Some("t2"))
    );
    assert_eq!(states(&*store, &s.id)[2], ("c".into(), Ready));
    // The run page's history: both attempts of `a`, the conflict that reran it, its landing.
    let history = store.history(&s.id).expect("history");
    let attempts: Vec<_> = history
        .attempts
        .iter()
        .map(|a| (a.task_id.as_str(), a.attempt.0, a.reason))
        .collect();
    assert_eq!(
        attempts,
        [
            ("a", 1, Some(RunReason::First)),
            ("a", 2, Some(RunReason::Conflict))
        ]
    );
    let landing: Vec<_> = history
        .landing
        .iter()
        .map(|e| (e.kind, e.task_id.as_ref().map(TaskId::as_str)))
        .collect();
    assert_eq!(
        landing,
        [
            (EventKind::MergeConflict, Some("a")),
            (EventKind::TaskLanded, Some("a"))
        ]
    );
    assert!(history.waiting.is_empty(), "{:?}", history.waiting);
    // Its prompt is kept with the task; a command has none.
    assert_eq!(
        store
            .task_prompt(&s.id, &TaskId::new("b").expect("id"))
            .expect("prompt")
            .as_deref(),
        Some("Make x say \"b\".")
    );
    assert_eq!(store.task_prompt(&s.id, &task_a).expect("prompt"), None);
    // The turn goes back once nothing waits; later attempts start from the tip.
    assert!(matches!(
        store.next_landing(&job).expect("next"),
        NextLanding::Done
    ));
    let next = claim_task(&*store, &w1);
    assert_eq!(next.base_commit.as_deref(), Some("t2"));
    let kinds = kinds(&*store, &s.id);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::MergeConflict)
            .count(),
        1
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::TaskLanded)
            .count(),
        1
    );
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Running,
        "not complete while tasks have not landed"
    );
}

pub fn a_landing_turn_whose_holder_went_silent_passes_to_another_worker(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit_at_base(&*store, {
        let mut p = landing_plan("silent", vec![task("a", &[], &[])]);
        p.heartbeat_timeout = Duration::from_millis(300);
        p
    });
    let (w1, w2) = (
        worker(&*store, None, Duration::from_millis(300)),
        worker(&*store, None, Duration::from_millis(300)),
    );
    let a = claim_task(&*store, &w1);
    succeed_with(&*store, &a, "c-a1");
    let stale = land_claim(&*store, &w1);
    // w1 goes silent; its turn expires and w2 takes it.
    let job = poll_until("the turn to pass", || match claim(&*store, &w2) {
        Claim::Land(job) => Some(*job),
        _ => None,
    });
    assert!(!store.renew_landing(&stale).expect("renew"), "lost");
    assert!(matches!(
        store.next_landing(&stale).expect("next"),
        NextLanding::Lost
    ));
    let item = next_item(&*store, &job);
    let task_a = TaskId::new("a").expect("id");
    assert_eq!(
        store
            .record_landing(
                &stale,
                &task_a,
                item.attempt,
                &LandingResult::Landed {
                    commit: "t-stale".into()
                }
            )
            .expect("record"),
        LandingRecorded::Stale
    );
    assert_eq!(
        store
            .record_landing(
                &job,
                &task_a,
                item.attempt,
                &LandingResult::Landed {
                    commit: "t1".into()
                }
            )
            .expect("record"),
        LandingRecorded::Landed
    );
    assert!(matches!(
        store.next_landing(&job).expect("next"),
        NextLanding::Done
    ));
    let session = store.session(&s.id).expect("session");
    assert_eq!(
        (session.status, session.integration_commit.as_deref()),
        (SessionStatus::Completed, Some("t1"))
    );
}

pub fn a_task_out_of_repairs_fails_and_skips_its_dependents(b: &dyn FreshStore) {
    let store = b.open();
    let mut a = task("a", &[], &[]);
    a.max_repairs = 0;
    let s = submit_at_base(
        &*store,
        landing_plan("hopeless", vec![a, task("b", &[], &["a"])]),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let c = claim_task(&*store, &w);
    succeed_with(&*store, &c, "c-a1");
    let job = land_claim(&*store, &w);
    let item = next_item(&*store, &job);
    let refused = LandingResult::VerifyFailed {
        command: "make check".into(),
        exit_code: Some(2),
        reason: "exit code 2".into(),
        log_tail: "FAIL".into(),
        tip: "base0".into(),
    };
    let task_a = TaskId::new("a").expect("id");
    assert_eq!(
        store
            .record_landing(&job, &task_a, item.attempt, &refused)
            .expect("record"),
        LandingRecorded::Failed
    );
    let got = store.task(&s.id, &task_a).expect("task");
    assert_eq!(
        (got.state, got.landing),
        (Failed, Some(br_core::state::Landing::VerifyFailed))
    );
    assert_eq!(states(&*store, &s.id)[1], ("b".into(), Skipped));
    assert!(matches!(
        store.next_landing(&job).expect("next"),
        NextLanding::Done
    ));
    let session = store.session(&s.id).expect("session");
    assert_eq!(
        (session.status, session.landed_tasks),
        (SessionStatus::Failed, 0)
    );
    assert!(kinds(&*store, &s.id).contains(&EventKind::VerifyFailed));
}

/// Every check of `retry_tasks` that changes nothing: the store is as it was.
fn assert_refused_unchanged(store: &dyn Store, s: &SessionId, scope: RetryScope<'_>) -> String {
    let before = (
        store.session(s).expect("session"),
        store.tasks(s).expect("tasks"),
        store.last_seq().expect("seq"),
    );
    let err = store.retry_tasks(s, scope).expect_err("refused");
    let after = (
        store.session(s).expect("session"),
        store.tasks(s).expect("tasks"),
        store.last_seq().expect("seq"),
    );
    assert_eq!(before, after, "a refused retry changed something: {err}");
    err.to_string()
}

pub fn a_tasks_prompt_and_events_are_read_back(b: &dyn FreshStore) {
    let store = b.open();
    let mut asked = task("asked", &[], &[]);
    asked.prompt = Some("Greet the reader.".into());
    asked.retries = 1;
    let s = submit(&*store, plan("p", vec![asked, task("plain", &[], &[])]));
    let (asked, plain) = (
        TaskId::new("asked").expect("id"),
        TaskId::new("plain").expect("id"),
    );
    assert_eq!(
        store.task_prompt(&s.id, &asked).expect("prompt").as_deref(),
        Some("Greet the reader.")
    );
    assert_eq!(store.task_prompt(&s.id, &plain).expect("prompt"), None);
    let w = worker(&*store, None, Duration::from_secs(30));
    let first = claim_task(&*store, &w);
    assert_eq!(first.lease.task_id, asked);
    store
        .finish_attempt(&first.lease, &Outcome::Failed { exit_code: 3 })
        .expect("finish");
    let kinds: Vec<(EventKind, Option<u32>)> = store
        .task_events(&s.id, &asked)
        .expect("events")
        .iter()
        .map(|e| (e.kind, e.attempt.map(|a| a.0)))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::TaskReady, None),
            (EventKind::TaskStarted, Some(1)),
            // A failure with retries left is a requeue, not a `task_failed`.
            (EventKind::TaskRequeued, Some(1)),
        ],
        "the task's own events only, oldest first"
    );
    let missing = TaskId::new("nope").expect("id");
    assert!(store.task_prompt(&s.id, &missing).is_err());
    assert!(store.task_events(&s.id, &missing).is_err());
}

pub fn retry_reruns_ended_tasks_as_next_attempts(b: &dyn FreshStore) {
    let store = b.open();
    let mut a = task("a", &["x"], &[]);
    a.retries = 1;
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                a,
                task("b", &[], &["a"]),
                task("c", &[], &["b"]),
                task("d", &[], &[]),
            ],
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    for _ in 0..2 {
        let a = claim_task(&*store, &w);
        assert_eq!(a.lease.task_id.as_str(), "a");
        store
            .finish_attempt(&a.lease, &Outcome::Failed { exit_code: 3 })
            .expect("finish");
    }
    let d = claim_task(&*store, &w);
    store
        .finish_attempt(&d.lease, &Outcome::Succeeded)
        .expect("finish");
    let ended = store.session(&s.id).expect("session");
    assert_eq!(ended.status, SessionStatus::Failed);
    let from = store.last_seq().expect("seq");

    let names = ["a".to_string()];
    let retried = store
        .retry_tasks(&s.id, RetryScope::Named(&names))
        .expect("retry");
    let ids: Vec<(&str, TaskState)> = retried
        .tasks
        .iter()
        .map(|(t, from)| (t.as_str(), *from))
        .collect();
    assert_eq!(ids, [("a", Failed), ("b", Skipped), ("c", Skipped)]);
    let again = &retried.session;
    assert_eq!(
        (
            again.status,
            again.failed_tasks,
            again.skipped_tasks,
            again.succeeded_tasks,
            again.completed_at
        ),
        (SessionStatus::Running, 0, 0, 1, None)
    );
    assert_eq!(again.started_at, ended.started_at);
    assert_eq!(
        states(&*store, &s.id),
        [
            ("a".into(), Ready),
            ("b".into(), Pending),
            ("c".into(), Pending),
            ("d".into(), Succeeded)
        ]
    );
    let a_id = TaskId::new("a").expect("id");
    let a_now = store.task(&s.id, &a_id).expect("task");
    assert_eq!((a_now.attempts, a_now.finished_at), (2, None));
    let events = store
        .events(&EventFilter {
            after_seq: Some(from),
            session: Some(s.id.clone()),
            limit: None,
        })
        .expect("events");
    assert_details_typed(&events);
    let said: Vec<(EventKind, Option<&str>, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.task_id.as_ref().map(TaskId::as_str),
                e.detail.describe(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            (
                EventKind::SessionResumed,
                None,
                Some("was failed: retry".into())
            ),
            (
                EventKind::TaskRequeued,
                Some("a"),
                Some("retry asked for (it was failed); attempt 3 next".into())
            ),
            (EventKind::TaskReady, Some("a"), None),
            (
                EventKind::TaskRequeued,
                Some("b"),
                Some("retry asked for (it was skipped); attempt 1 next".into())
            ),
            (
                EventKind::TaskRequeued,
                Some("c"),
                Some("retry asked for (it was skipped); attempt 1 next".into())
            ),
        ]
    );

    // The retry runs as the next attempt, told why, with its retries back: a failure is
    // retried once more before the task fails.
    let third = claim_task(&*store, &w);
    assert_eq!(
        (
            third.lease.task_id.as_str(),
            third.lease.attempt,
            third.reason
        ),
        ("a", Attempt(3), RunReason::Retry)
    );
    let f = store
        .finish_attempt(&third.lease, &Outcome::Failed { exit_code: 3 })
        .expect("finish");
    assert_eq!(f, Finish::Recorded(TaskNext::Retry));
    let fourth = claim_task(&*store, &w);
    assert_eq!(
        (fourth.lease.attempt, fourth.reason),
        (Attempt(4), RunReason::Failed)
    );
    store
        .finish_attempt(&fourth.lease, &Outcome::Succeeded)
        .expect("finish");
    let b = claim_task(&*store, &w);
    assert_eq!(
        (b.lease.task_id.as_str(), b.lease.attempt, b.reason),
        ("b", Attempt(1), RunReason::Retry)
    );
    store
        .finish_attempt(&b.lease, &Outcome::Succeeded)
        .expect("finish");
    let c = claim_task(&*store, &w);
    assert_eq!(c.lease.task_id.as_str(), "c");
    store
        .finish_attempt(&c.lease, &Outcome::Succeeded)
        .expect("finish");
    let end = store.session(&s.id).expect("session");
    assert_eq!(
        (end.status, end.succeeded_tasks, end.failed_tasks),
        (SessionStatus::Completed, 4, 0)
    );
    let attempts: Vec<(u32, Option<RunReason>, Option<OutcomeKind>)> = store
        .attempts(&s.id, &a_id)
        .expect("attempts")
        .iter()
        .map(|a| (a.attempt.0, a.reason, a.outcome))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(RunReason::First), Some(OutcomeKind::Failed)),
            (2, Some(RunReason::Failed), Some(OutcomeKind::Failed)),
            (3, Some(RunReason::Retry), Some(OutcomeKind::Failed)),
            (4, Some(RunReason::Failed), Some(OutcomeKind::Succeeded)),
        ],
        "the attempts before the retry are kept"
    );
    let ends = audit_terminal_once(&session_events(&*store, &s.id))
        .expect("each task ended once since it was last queued again");
    assert!(ends.values().all(|k| *k == EventKind::TaskSucceeded));
    let err = assert_refused_unchanged(&*store, &s.id, RetryScope::All);
    assert!(
        err.contains("has nothing to retry: it is completed"),
        "{err}"
    );
}

pub fn retry_refuses_tasks_that_did_not_end_badly(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan(
            "p",
            vec![
                task("a", &[], &[]),
                task("b", &[], &["a"]),
                task("ok", &[], &[]),
                task("slow", &[], &[]),
            ],
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let a = claim_task(&*store, &w);
    store
        .finish_attempt(&a.lease, &Outcome::Failed { exit_code: 1 })
        .expect("finish");
    let ok = claim_task(&*store, &w);
    store
        .finish_attempt(&ok.lease, &Outcome::Succeeded)
        .expect("finish");
    let _slow = claim_task(&*store, &w);
    let names = |n: &[&str]| n.iter().map(ToString::to_string).collect::<Vec<_>>();
    let err = assert_refused_unchanged(&*store, &s.id, RetryScope::Named(&names(&["ok", "a"])));
    assert!(err.contains("task ok (succeeded)"), "{err}");
    let err = assert_refused_unchanged(&*store, &s.id, RetryScope::Named(&names(&["slow"])));
    assert!(err.contains("task slow (running)"), "{err}");
    let err = assert_refused_unchanged(&*store, &s.id, RetryScope::Named(&names(&["b"])));
    assert!(err.contains("it waits for a, which is failed"), "{err}");
    let missing = names(&["nope"]);
    assert!(matches!(
        store.retry_tasks(&s.id, RetryScope::Named(&missing)),
        Err(StoreError::NoSuchTask { .. })
    ));
    assert!(matches!(
        store.retry_tasks(&SessionId::from_string("000000000000"), RetryScope::All),
        Err(StoreError::NoSuchSession(_))
    ));
    // A session still running may retry what failed: it goes on running.
    let retried = store.retry_tasks(&s.id, RetryScope::All).expect("retry");
    assert_eq!(retried.session.status, SessionStatus::Running);
    assert_eq!(retried.tasks.len(), 2);
    let kinds = kinds(&*store, &s.id);
    assert!(!kinds.contains(&EventKind::SessionResumed), "{kinds:?}");
}

pub fn retry_runs_a_cancelled_session_again(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        plan("p", vec![task("x", &[], &[]), task("y", &[], &["x"])]),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let x = claim_task(&*store, &w);
    store
        .change_session(&s.id, SessionAction::Cancel)
        .expect("cancel");
    let err = assert_refused_unchanged(&*store, &s.id, RetryScope::All);
    assert!(err.contains("1 task(s) are still stopping"), "{err}");
    store
        .finish_attempt(&x.lease, &Outcome::Cancelled)
        .expect("finish");
    let names = ["y".to_string()];
    let err = assert_refused_unchanged(&*store, &s.id, RetryScope::Named(&names));
    assert!(err.contains("it waits for x, which is cancelled"), "{err}");
    let retried = store.retry_tasks(&s.id, RetryScope::All).expect("retry");
    assert_eq!(
        (
            retried.session.status,
            retried.session.cancelled_tasks,
            retried.session.completed_at
        ),
        (SessionStatus::Running, 0, None)
    );
    assert_eq!(
        states(&*store, &s.id),
        [("x".into(), Ready), ("y".into(), Pending)]
    );
    for (id, attempt) in [("x", 2), ("y", 1)] {
        let t = claim_task(&*store, &w);
        assert_eq!(
            (t.lease.task_id.as_str(), t.lease.attempt, t.reason),
            (id, Attempt(attempt), RunReason::Retry)
        );
        store
            .finish_attempt(&t.lease, &Outcome::Succeeded)
            .expect("finish");
    }
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Completed
    );
}

pub fn retry_forgets_what_did_not_land(b: &dyn FreshStore) {
    let store = b.open();
    let mut p = plan(
        "p",
        vec![task("t", &["f"], &[]), task("after", &[], &["t"])],
    );
    p.isolation = Isolation::Worktree;
    p.tasks[0].on_conflict = OnConflict::Fail;
    let s = submit(&*store, p);
    let w = worker(&*store, None, Duration::from_secs(30));
    let t = claim_task(&*store, &w);
    store
        .finish_attempt_with(
            &t.lease,
            &Outcome::Succeeded,
            &AttemptReport {
                commit: Some("c0ffee".into()),
                ..Default::default()
            },
        )
        .expect("finish");
    let job = match claim(&*store, &w) {
        Claim::Land(job) => job,
        other => panic!("expected the landing turn, got {other:?}"),
    };
    let item = match store.next_landing(&job).expect("next") {
        NextLanding::Task(item) => item,
        other => panic!("expected t to land, got {other:?}"),
    };
    let recorded = store
        .record_landing(
            &job,
            &item.task_id,
            item.attempt,
            &LandingResult::Conflict {
                files: vec!["f".into()],
                with: vec![],
                details: String::new(),
                tip: "1234".into(),
            },
        )
        .expect("record");
    assert_eq!(recorded, LandingRecorded::Failed);
    assert!(matches!(
        store.next_landing(&job).expect("next"),
        NextLanding::Done
    ));
    let failed = store
        .task(&s.id, &TaskId::new("t").expect("id"))
        .expect("task");
    assert_eq!(
        (failed.state, failed.landing),
        (Failed, Some(br_core::Landing::Conflict))
    );
    assert_eq!(
        store.session(&s.id).expect("session").status,
        SessionStatus::Failed
    );

    let retried = store.retry_tasks(&s.id, RetryScope::All).expect("retry");
    assert_eq!(retried.tasks.len(), 2);
    let t_now = store
        .task(&s.id, &TaskId::new("t").expect("id"))
        .expect("task");
    assert_eq!(
        (
            t_now.state,
            t_now.landing,
            t_now.landed_commit,
            t_now.repairs
        ),
        (Ready, None, None, 0)
    );
    let again = claim_task(&*store, &w);
    assert_eq!(
        (again.lease.attempt, again.reason),
        (Attempt(2), RunReason::Retry)
    );
}

fn pooled(id: &str, pool: &str) -> TaskSpec {
    let mut t = task(id, &[], &[]);
    t.pool = Some(pool.to_string());
    t
}

fn with_pool(mut p: Plan, name: &str, size: u32, backoff: Duration) -> Plan {
    p.pools
        .insert(name.to_string(), br_core::agent::PoolSpec { size, backoff });
    p
}

pub fn a_pool_caps_running_tasks_across_sessions(b: &dyn FreshStore) {
    let store = b.open();
    let backoff = Duration::from_secs(60);
    let one = submit(
        &*store,
        with_pool(
            plan(
                "one",
                vec![pooled("a", "p"), pooled("b", "p"), task("free", &[], &[])],
            ),
            "p",
            2,
            backoff,
        ),
    );
    let two = submit(
        &*store,
        with_pool(plan("two", vec![pooled("c", "p")]), "p", 2, backoff),
    );
    let workers: Vec<WorkerId> = (0..4)
        .map(|_| worker(&*store, None, Duration::from_secs(30)))
        .collect();
    let mut claimed = Vec::new();
    for w in &workers {
        if let Claim::Task(t) = claim(&*store, w) {
            claimed.push(t.lease.clone());
        }
    }
    let ids: Vec<&str> = claimed.iter().map(|l| l.task_id.as_str()).collect();
    assert_eq!(
        ids,
        ["a", "b", "free"],
        "two of pool p, then what is not in it"
    );
    assert_eq!(states(&*store, &two.id), [("c".into(), Ready)]);
    // One of the pool's tasks ends: the other session's may start.
    store
        .finish_attempt(&claimed[0], &Outcome::Succeeded)
        .expect("finish");
    let c = claim_task(&*store, &workers[3]);
    assert_eq!(
        (c.lease.session_id.as_str(), c.lease.task_id.as_str()),
        (two.id.as_str(), "c")
    );
    assert_eq!(c.pool.as_deref(), Some("p"));
    assert_eq!(
        store
            .task(&one.id, &TaskId::new("a").expect("id"))
            .expect("task")
            .pool
            .as_deref(),
        Some("p")
    );
}

pub fn a_rate_limit_spends_no_retry_and_parks_the_pool(b: &dyn FreshStore) {
    let store = b.open();
    let s = submit(
        &*store,
        with_pool(
            plan("limited", vec![pooled("a", "p"), pooled("b", "p")]),
            "p",
            5,
            Duration::from_millis(400),
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let a = claim_task(&*store, &w);
    let limited = Outcome::RateLimited {
        reason: "429 Too Many Requests".into(),
        resets_at_ms: None,
    };
    let finish = store.finish_attempt(&a.lease, &limited).expect("finish");
    assert_eq!(finish, Finish::Recorded(TaskNext::Requeue));
    let got = store
        .task(&s.id, &TaskId::new("a").expect("id"))
        .expect("task");
    assert_eq!(
        (got.state, got.outcome),
        (Ready, Some(OutcomeKind::RateLimited))
    );
    // Parked: neither of the pool's tasks is claimed, then both are, on their own.
    assert!(matches!(claim(&*store, &w), Claim::Nothing));
    let pools = store.pools().expect("pools");
    assert_eq!(
        (
            pools.len(),
            pools[0].name.as_str(),
            pools[0].size,
            pools[0].running,
            pools[0].parked_reason.as_deref()
        ),
        (1, "p", Some(5), 0, Some("429 Too Many Requests"))
    );
    assert!(pools[0].parked_until.is_some());
    let again = poll_until("the pool to resume", || match claim(&*store, &w) {
        Claim::Task(t) => Some(*t),
        _ => None,
    });
    assert_eq!(
        (
            again.lease.task_id.as_str(),
            again.lease.attempt,
            again.reason
        ),
        ("a", Attempt(2), RunReason::Interrupted)
    );
    store
        .finish_attempt(&again.lease, &Outcome::Succeeded)
        .expect("finish");
    let events = session_events(&*store, &s.id);
    let parked: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::PoolParked)
        .collect();
    assert_eq!(parked.len(), 1);
    let EventDetail::PoolParked(detail) = &parked[0].detail else {
        panic!("{:?}", parked[0].detail)
    };
    assert_eq!(
        (
            detail.pool.as_str(),
            detail.backoff_ms,
            detail.reason.as_str()
        ),
        ("p", 400, "429 Too Many Requests")
    );
    // No retry was spent: a plan with retries = 0 still ran it twice and it succeeded.
    assert_eq!(
        store
            .task(&s.id, &TaskId::new("a").expect("id"))
            .expect("task")
            .state,
        Succeeded
    );
}

pub fn usage_adds_up_per_attempt_task_session_and_store(b: &dyn FreshStore) {
    let store = b.open();
    let mut a = task("a", &[], &[]);
    a.retries = 1;
    let s = submit(&*store, plan("spend", vec![a, task("b", &[], &[])]));
    let w = worker(&*store, None, Duration::from_secs(30));
    let spent = |input, output, cost_micros| AttemptReport {
        usage: Some(br_core::agent::Usage {
            input_tokens: input,
            output_tokens: output,
            cost_micros,
        }),
        ..Default::default()
    };
    let a1 = claim_task(&*store, &w);
    store
        .finish_attempt_with(
            &a1.lease,
            &Outcome::Failed { exit_code: 1 },
            &spent(100, 10, 1_000),
        )
        .expect("finish");
    let b1 = claim_task(&*store, &w);
    store
        .finish_attempt_with(&b1.lease, &Outcome::Succeeded, &spent(5, 5, 50))
        .expect("finish");
    let b = claim_task(&*store, &w);
    assert_eq!(
        [
            a1.lease.task_id.as_str(),
            b1.lease.task_id.as_str(),
            b.lease.task_id.as_str()
        ],
        ["a", "a", "b"]
    );
    store
        .finish_attempt_with(&b.lease, &Outcome::Succeeded, &spent(200, 20, 2_000))
        .expect("finish");
    let a = store
        .task(&s.id, &TaskId::new("a").expect("id"))
        .expect("task");
    assert_eq!(
        (
            a.usage.input_tokens,
            a.usage.output_tokens,
            a.usage.cost_micros
        ),
        (105, 15, 1_050)
    );
    let session = store.session(&s.id).expect("session");
    assert_eq!(
        (
            session.usage.input_tokens,
            session.usage.output_tokens,
            session.usage.cost_micros
        ),
        (305, 35, 3_050)
    );
    let other = submit(&*store, plan("other", vec![task("z", &[], &[])]));
    let z = claim_task(&*store, &w);
    assert_eq!(z.lease.session_id, other.id);
    store
        .finish_attempt_with(&z.lease, &Outcome::Succeeded, &spent(1, 1, 1))
        .expect("finish");
    assert_eq!(store.summary().expect("summary").usage.cost_micros, 3_051);
}

pub fn a_rate_limit_that_names_its_reset_parks_until_then(b: &dyn FreshStore) {
    let store = b.open();
    submit(
        &*store,
        with_pool(
            plan("reset", vec![pooled("a", "p")]),
            "p",
            1,
            Duration::from_secs(60),
        ),
    );
    let w = worker(&*store, None, Duration::from_secs(30));
    let a = claim_task(&*store, &w);
    let resets = store.now().expect("now").millis() + 5_000;
    store
        .finish_attempt(
            &a.lease,
            &Outcome::RateLimited {
                reason: "usage limit reached".into(),
                resets_at_ms: Some(resets),
            },
        )
        .expect("finish");
    let pools = store.pools().expect("pools");
    assert_eq!(
        pools[0].parked_until.map(Timestamp::millis),
        Some(resets),
        "the named reset, not the 60 s backoff"
    );
}

/// Everything stored of an attempt's log from `from` on, read as a reader on another machine
/// does: piece after piece until nothing more comes.
fn read_all_log(store: &dyn Store, lease: &Lease, from: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let more = store
            .read_log(
                &lease.session_id,
                &lease.task_id,
                lease.attempt,
                from + out.len() as u64,
            )
            .expect("read log");
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

pub fn attempt_output_is_read_back_from_any_handle_in_pieces(b: &dyn FreshStore) {
    let writer = b.open();
    let reader = b.open();
    let s = submit(&*writer, plan("logs", vec![task("a", &[], &[])]));
    let w = worker(&*writer, None, Duration::from_secs(30));
    let c = claim_task(&*writer, &w);
    let lease = &c.lease;
    assert!(read_all_log(&*reader, lease, 0).is_empty(), "nothing yet");
    // Output need not be text: every byte value, then more pieces than one read returns.
    let first: Vec<u8> = (0..=255u8).collect();
    writer.append_log(lease, 0, &first).expect("append");
    assert_eq!(read_all_log(&*reader, lease, 0), first);
    // The same piece stored twice (a retry after a lost answer) is kept once.
    writer.append_log(lease, 0, &first).expect("append again");
    let mut whole = first.clone();
    for i in 0..100u32 {
        let piece = format!("line {i}\n").into_bytes();
        writer
            .append_log(lease, whole.len() as u64, &piece)
            .expect("append");
        whole.extend(piece);
    }
    assert_eq!(read_all_log(&*reader, lease, 0), whole);
    // A follower that has some of it asks for the rest, also from inside a piece.
    assert_eq!(read_all_log(&*reader, lease, 300), whole[300..].to_vec());
    // A piece not stored yet ends what can be read: no bytes out of order.
    let end = whole.len() as u64;
    writer
        .append_log(lease, end + 10, b"later")
        .expect("append");
    assert_eq!(read_all_log(&*reader, lease, 0), whole);
    // Another attempt's output is its own.
    let other = Lease {
        attempt: Attempt(2),
        ..lease.clone()
    };
    assert!(read_all_log(&*reader, &other, 0).is_empty());
    // Deleting the session deletes its output.
    writer
        .finish_attempt(lease, &Outcome::Succeeded)
        .expect("finish");
    writer.delete_session(&s.id).expect("delete");
    assert!(read_all_log(&*reader, lease, 0).is_empty());
}
