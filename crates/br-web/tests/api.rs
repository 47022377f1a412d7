//! The router against a real SQLite store in a temp dir, with sessions made through the `Store`
//! trait: every endpoint's status and JSON keys, the error JSON, the session actions, the page.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use br_core::agent::Usage;
use br_core::outcome::Outcome;
use br_core::{LockPath, Plan};
use br_store::sqlite::SqliteStore;
use br_store::{
    AttemptReport, Claim, ClaimRequest, ClaimedTask, NewSession, NewWorker, Session, Store,
};
use br_web::{
    ACTION_HEADER, Access, AppState, DEFAULT_TASK_PAGE, MAX_TASK_PAGE, Server, Token, router,
};
use futures_util::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    state: AppState,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(Access::Loopback { token: None })
    }

    fn with(access: Access) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("br.db")).expect("open the store"));
        let state = AppState::new(Arc::clone(&store), Duration::from_millis(100), access)
            .expect("app state");
        Fixture {
            _dir: dir,
            store,
            state,
        }
    }

    fn submit(&self, name: &str, tasks: &[&str]) -> Session {
        let mut text = format!("name = \"{name}\"\nisolation = \"shared\"\n");
        for (i, id) in tasks.iter().enumerate() {
            text.push_str(&format!(
                "[[task]]\nid = \"{id}\"\nrun = \"echo {id}\"\nfiles = [\"src/{id}.rs\"]\n"
            ));
            if i > 0 {
                text.push_str(&format!("after = [\"{}\"]\n", tasks[0]));
            }
        }
        let plan = Plan::parse(&text, Path::new("br.toml")).expect("valid plan");
        self.store
            .create_session(&NewSession {
                plan,
                repo_root: PathBuf::from("/repo"),
                repo_id: None,
                plan_path: Some(PathBuf::from("/repo/br.toml")),
                base_commit: None,
                workers_wanted: 1,
            })
            .expect("create session")
    }

    /// Runs every task of `session` to success with one worker, as a real worker would.
    fn complete(&self, session: &Session) {
        let worker = self
            .store
            .register_worker(&NewWorker {
                host: "test-host".into(),
                pid: 4242,
                session: Some(session.id.clone()),
                heartbeat_timeout: Duration::from_secs(30),
            })
            .expect("register worker");
        let logs = self._dir.path().join("logs");
        loop {
            let claim = self
                .store
                .claim_next_task(&ClaimRequest {
                    worker: &worker,
                    session: Some(&session.id),
                    log_dir: &logs,
                    repo_id: None,
                    remote_only: false,
                })
                .expect("claim");
            match claim {
                Claim::Task(task) => {
                    self.store
                        .finish_attempt(&task.lease, &Outcome::Succeeded)
                        .expect("finish");
                }
                Claim::Nothing | Claim::Stop | Claim::Land(_) => break,
            }
        }
        self.store.stop_worker(&worker).expect("stop worker");
    }

    async fn call(&self, request: Request<Body>) -> Response {
        router(self.state.clone())
            .oneshot(request)
            .await
            .expect("infallible")
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let response = self
            .call(Request::get(uri).body(Body::empty()).expect("request"))
            .await;
        json(response).await
    }

    async fn post(&self, uri: &str) -> (StatusCode, Value) {
        let request = Request::post(uri)
            .header(ACTION_HEADER, "test")
            .body(Body::empty())
            .expect("request");
        json(self.call(request).await).await
    }
}

impl Fixture {
    /// A session action with a JSON body, as the page sends a retry of named tasks.
    async fn post_json(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::post(uri)
            .header(ACTION_HEADER, "test")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        json(self.call(request).await).await
    }

    /// Claims the first ready task of `session` as a newly registered worker would.
    fn claim_first(&self, session: &Session) -> (br_core::WorkerId, ClaimedTask) {
        let worker = self
            .store
            .register_worker(&NewWorker {
                host: "test-host".into(),
                pid: 4242,
                session: Some(session.id.clone()),
                heartbeat_timeout: Duration::from_secs(30),
            })
            .expect("register worker");
        let logs = self._dir.path().join("logs");
        let claim = self
            .store
            .claim_next_task(&ClaimRequest {
                worker: &worker,
                session: Some(&session.id),
                log_dir: &logs,
                repo_id: None,
                remote_only: false,
            })
            .expect("claim");
        let Claim::Task(task) = claim else {
            panic!("expected a task, got {claim:?}")
        };
        (worker, *task)
    }

    /// Runs the first ready task of `session` to a failure, as a real worker would.
    fn fail_first(&self, session: &Session) {
        let (worker, task) = self.claim_first(session);
        self.store
            .finish_attempt(&task.lease, &Outcome::Failed { exit_code: 1 })
            .expect("finish");
        self.store.stop_worker(&worker).expect("stop worker");
    }
}

async fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(
        content_type.as_ref().and_then(|c| c.to_str().ok()),
        Some("application/json"),
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let value = serde_json::from_slice(&bytes).expect("a JSON body");
    (status, value)
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn has_keys(value: &Value, wanted: &[&str]) {
    let present = keys(value);
    for key in wanted {
        assert!(present.contains(key), "`{key}` missing from {value}");
    }
}

const SESSION_KEYS: &[&str] = &[
    "id",
    "name",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "progress_percent",
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "running_tasks",
    "queued_tasks",
];

const TASK_KEYS: &[&str] = &[
    "id",
    "state",
    "attempts",
    "worker_id",
    "branch",
    "exit_code",
    "started_at",
    "finished_at",
    "files",
    "after",
    "log_path",
];

#[tokio::test]
async fn every_endpoint_answers_with_the_cli_json_shapes() {
    let f = Fixture::new();
    let done = f.submit("done", &["one"]);
    f.complete(&done);
    let s = f.submit("build", &["schema", "api", "ui"]);
    f.store
        .lock_paths(&s.id, &[LockPath::parse("docs").expect("path")])
        .expect("lock");
    let worker = f
        .store
        .register_worker(&NewWorker {
            host: "test-host".into(),
            pid: 7,
            session: None,
            heartbeat_timeout: Duration::from_secs(30),
        })
        .expect("register");

    let (status, summary) = f.get("/api/summary").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        keys(&summary),
        ["sessions", "tasks", "timestamp", "usage", "workers"]
    );
    assert_eq!(
        keys(&summary["workers"]),
        ["busy", "idle", "offline", "total", "utilization"]
    );
    assert_eq!(keys(&summary["sessions"]), ["active", "total"]);
    assert_eq!(
        keys(&summary["tasks"]),
        ["completed", "failed", "queued", "running"]
    );
    assert_eq!(summary["sessions"]["total"], 2);
    assert_eq!(summary["tasks"]["completed"], 1);

    let (status, list) = f.get("/api/sessions").await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "build", "newest first");
    for s in list {
        has_keys(s, SESSION_KEYS);
        assert!(s.get("tasks").is_none(), "list has no tasks: {s}");
    }
    let (_, completed) = f.get("/api/sessions?status=completed").await;
    assert_eq!(completed.as_array().map(Vec::len), Some(1));

    // By id, by unique prefix and by name: the same session, as `br status --json`.
    for reference in [s.id.as_str(), &s.id.as_str()[..6], "build"] {
        let (status, one) = f.get(&format!("/api/sessions/{reference}")).await;
        assert_eq!(status, StatusCode::OK, "{reference}: {one}");
        has_keys(&one, SESSION_KEYS);
        assert_eq!(one["id"], s.id.as_str());
        let tasks = one["tasks"].as_array().expect("tasks");
        assert_eq!(tasks.len(), 3);
        for t in tasks {
            has_keys(t, TASK_KEYS);
        }
        assert_eq!(tasks[1]["after"][0], "schema");
    }

    let (status, workers) = f.get("/api/workers").await;
    assert_eq!(status, StatusCode::OK);
    let workers = workers.as_array().expect("an array");
    assert_eq!(
        workers.len(),
        1,
        "the stopped worker is not listed: {workers:?}"
    );
    has_keys(
        &workers[0],
        &[
            "id",
            "status",
            "host",
            "pid",
            "session_id",
            "current_task",
            "attempt",
            "tasks_completed",
            "tasks_failed",
            "last_heartbeat",
            "started_at",
        ],
    );
    assert_eq!(workers[0]["id"], worker.as_str());
    let (_, all) = f.get("/api/workers?all=true").await;
    assert_eq!(all.as_array().map(Vec::len), Some(2));

    let (status, locks) = f.get("/api/locks").await;
    assert_eq!(status, StatusCode::OK);
    let locks = locks.as_array().expect("an array");
    assert_eq!(locks.len(), 1);
    has_keys(&locks[0], &["path", "session_id", "task_id", "acquired_at"]);
    assert_eq!(locks[0]["path"], "docs");

    let (status, events) = f.get("/api/events").await;
    assert_eq!(status, StatusCode::OK);
    let events = events.as_array().expect("an array");
    assert!(events.len() > 3, "{events:?}");
    for e in events {
        assert_eq!(
            keys(e),
            [
                "at",
                "attempt",
                "detail",
                "kind",
                "seq",
                "session_id",
                "task_id",
                "worker_id"
            ]
        );
    }
    let second = events[1]["seq"].as_i64().expect("seq");
    let (status, page) = f.get(&format!("/api/events?after={second}&limit=2")).await;
    assert_eq!(status, StatusCode::OK);
    let page = page.as_array().expect("an array");
    assert_eq!(page.len(), 2);
    assert_eq!(page[0], events[2]);
    assert_eq!(page[1], events[3]);
    let (_, mine) = f.get("/api/events?session=build").await;
    assert!(
        mine.as_array()
            .expect("an array")
            .iter()
            .all(|e| e["session_id"] == s.id.as_str() || e["session_id"].is_null()),
        "{mine}"
    );

    // The published snapshot catches up with what was written since the state was made.
    let snapshot = poll_snapshot(&f, "/api/snapshot", |v| {
        v["summary"]["sessions"]["total"] == 2
    })
    .await;
    assert_eq!(
        keys(&snapshot),
        [
            "events",
            "last_seq",
            "locks",
            "now",
            "pools",
            "selected",
            "sessions",
            "summary",
            "throughput",
            "workers"
        ]
    );
    assert_eq!(
        snapshot["selected"]["id"],
        s.id.as_str(),
        "the active session"
    );
    for t in snapshot["selected"]["tasks"].as_array().expect("tasks") {
        has_keys(t, TASK_KEYS);
        assert!(t.get("waiting_for").is_some(), "{t}");
    }
    assert_eq!(
        snapshot["selected"]["tasks"][1]["waiting_for"],
        serde_json::json!({ "kind": "dependencies", "tasks": ["schema"] })
    );
    for row in snapshot["sessions"].as_array().expect("sessions") {
        has_keys(row, SESSION_KEYS);
        has_keys(
            row,
            &[
                "workers",
                "elapsed_ms",
                "remaining_ms",
                "usage",
                "spent_text",
            ],
        );
    }
    // The snapshot's events carry their detail in words (`text`), as the terminal dashboard
    // and progress lines say it; `/api/events` above is `br events --json`, nothing added.
    let notable = snapshot["events"].as_array().expect("events");
    for e in notable {
        assert_eq!(
            keys(e),
            [
                "at",
                "attempt",
                "detail",
                "kind",
                "seq",
                "session_id",
                "task_id",
                "text",
                "worker_id"
            ]
        );
    }
    let created = notable
        .iter()
        .find(|e| e["kind"] == "session_created" && e["session_id"] == s.id.as_str())
        .expect("session_created");
    assert_eq!(created["text"], "3 tasks, shared isolation");

    let (status, other) = f.get("/api/snapshot?session=done").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(other["selected"]["id"], done.id.as_str());
    assert_eq!(other["selected"]["tasks"][0]["state"], "succeeded");
}

/// A rate-limited attempt that reported what it spent: `/api/pools` answers as `br pools
/// --json` with the pool parked, every shape that has `usage` carries it, and the snapshot
/// (what both dashboards show) has the park and the spend in words.
#[tokio::test]
async fn pools_and_usage_answer_as_the_cli_shapes_them() {
    let f = Fixture::new();
    let text = "name = \"agents\"\nisolation = \"shared\"\n\
                [pool.p]\nsize = 1\nbackoff = \"1h\"\n\
                [[task]]\nid = \"a\"\nrun = \"true\"\npool = \"p\"\n\
                [[task]]\nid = \"b\"\nrun = \"true\"\npool = \"p\"\n";
    let s = f
        .store
        .create_session(&NewSession {
            plan: Plan::parse(text, Path::new("br.toml")).expect("valid plan"),
            repo_root: PathBuf::from("/repo"),
            repo_id: None,
            plan_path: None,
            base_commit: None,
            workers_wanted: 1,
        })
        .expect("create session");
    let (status, pools) = f.get("/api/pools").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pools,
        serde_json::json!([{
            "name": "p", "size": 1, "running": 0, "backoff_ms": 3_600_000,
            "parked": false, "parked_until": null, "parked_reason": null
        }])
    );

    let worker = f
        .store
        .register_worker(&NewWorker {
            host: "test-host".into(),
            pid: 7,
            session: Some(s.id.clone()),
            heartbeat_timeout: Duration::from_secs(30),
        })
        .expect("register");
    let Claim::Task(a) = f
        .store
        .claim_next_task(&ClaimRequest {
            worker: &worker,
            session: Some(&s.id),
            log_dir: &f._dir.path().join("logs"),
            repo_id: None,
            remote_only: false,
        })
        .expect("claim")
    else {
        panic!("a task")
    };
    let (_, pools) = f.get("/api/pools").await;
    assert_eq!(pools[0]["running"], 1, "{pools}");
    f.store
        .finish_attempt_with(
            &a.lease,
            &Outcome::RateLimited {
                reason: "usage limit reached".into(),
                resets_at_ms: None,
            },
            &AttemptReport {
                usage: Some(Usage {
                    input_tokens: 100,
                    output_tokens: 10,
                    cost_micros: 10_000,
                }),
                ..AttemptReport::default()
            },
        )
        .expect("finish");

    let (_, pools) = f.get("/api/pools").await;
    let p = &pools[0];
    assert_eq!(
        (&p["running"], &p["parked"], &p["parked_reason"]),
        (
            &serde_json::json!(0),
            &Value::Bool(true),
            &serde_json::json!("usage limit reached")
        ),
        "{pools}"
    );
    assert!(p["parked_until"].is_string(), "{pools}");

    let usage = serde_json::json!({"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.01});
    let (_, status) = f.get(&format!("/api/sessions/{}", s.id)).await;
    assert_eq!(status["usage"], usage);
    let task = &status["tasks"][0];
    assert_eq!(
        (&task["id"], &task["pool"], &task["agent"], &task["usage"]),
        (
            &serde_json::json!("a"),
            &serde_json::json!("p"),
            &Value::Null,
            &usage
        )
    );
    let (_, summary) = f.get("/api/summary").await;
    assert_eq!(summary["usage"], usage);
    let (_, list) = f.get("/api/sessions").await;
    assert_eq!(list[0]["usage"], usage);

    let snapshot = poll_snapshot(&f, "/api/snapshot", |v| {
        v["pools"][0]["parked"] == Value::Bool(true)
    })
    .await;
    let pool = &snapshot["pools"][0];
    assert_eq!(pool["name"], "p");
    let parked = pool["parked_text"].as_str().expect("parked_text");
    assert!(
        parked.starts_with("parked until ") && parked.contains(" (in "),
        "{parked}"
    );
    // Both tasks are ready and wait for the parked pool, in the words both dashboards show.
    for t in snapshot["selected"]["tasks"].as_array().expect("tasks") {
        assert_eq!(t["waiting_for"]["kind"], "pool", "{t}");
        let words = t["waiting_for"]["text"].as_str().expect("text");
        assert!(
            words.starts_with("waiting: pool p parked until "),
            "{words}"
        );
    }
    assert_eq!(
        snapshot["sessions"][0]["spent_text"],
        "spent $0.0100 · 100 in / 10 out tokens"
    );
    assert!(
        snapshot["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "pool_parked"),
        "a rate limit is notable"
    );
}

/// Reads `uri` until `ok` holds for it (the publisher refreshes in the background).
async fn poll_snapshot(f: &Fixture, uri: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, value) = f.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        if ok(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {uri}: {value}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_unknown_session_is_a_404_with_the_error_json() {
    let f = Fixture::new();
    f.submit("build", &["a"]);
    for uri in [
        "/api/sessions/nope",
        "/api/snapshot?session=nope",
        "/api/events?session=nope",
        "/api/stream?session=nope",
    ] {
        let (status, body) = f.get(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(
            body,
            serde_json::json!({ "error": "no session matches `nope`" }),
            "{uri}"
        );
    }
    let (status, body) = f.post("/api/sessions/nope/pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(keys(&body), ["error"]);
    let (status, body) = f.get("/api/no/such/thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(keys(&body), ["error"]);
}

#[tokio::test]
async fn a_bad_query_is_a_400_with_the_error_json() {
    let f = Fixture::new();
    for uri in [
        "/api/events?after=soon",
        "/api/events?limit=0",
        "/api/sessions?status=sleeping",
        "/api/workers?status=asleep",
    ] {
        let (status, body) = f.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(keys(&body), ["error"], "{uri}");
    }
}

#[tokio::test]
async fn resuming_a_completed_session_is_refused_with_409() {
    let f = Fixture::new();
    let s = f.submit("build", &["a", "b"]);
    f.complete(&s);
    assert_eq!(
        f.store.session(&s.id).expect("session").status.to_string(),
        "completed"
    );
    for action in ["resume", "pause", "cancel"] {
        let (status, body) = f.post(&format!("/api/sessions/build/{action}")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {body}");
        let message = body["error"].as_str().expect("an error message");
        assert!(message.contains("completed"), "{message}");
    }
    assert_eq!(
        f.store.session(&s.id).expect("session").status.to_string(),
        "completed",
        "nothing changed"
    );
}

#[tokio::test]
async fn pause_then_resume_changes_the_stored_status() {
    let f = Fixture::new();
    let s = f.submit("build", &["a", "b"]);
    let stored = || f.store.session(&s.id).expect("session").status.to_string();

    let (status, body) = f.post(&format!("/api/sessions/{}/pause", s.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    has_keys(&body, SESSION_KEYS);
    assert_eq!(body["status"], "paused");
    assert_eq!(stored(), "paused");
    // The live snapshot shows it too.
    poll_snapshot(&f, "/api/snapshot", |v| {
        v["sessions"][0]["status"] == "paused"
    })
    .await;

    let (status, body) = f.post(&format!("/api/sessions/{}/resume", s.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["status"], "paused");
    assert_ne!(stored(), "paused");

    let (status, body) = f.post("/api/sessions/build/cancel").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stored(), "cancelled");
}

#[tokio::test]
async fn retrying_queues_what_failed_and_a_refused_retry_changes_nothing() {
    let f = Fixture::new();
    let s = f.submit("build", &["a", "b"]);
    f.fail_first(&s);
    let stored = || f.store.session(&s.id).expect("session");
    assert_eq!(stored().status.to_string(), "failed");
    let before = (stored(), f.store.tasks(&s.id).expect("tasks"));
    let retry = format!("/api/sessions/{}/retry", s.id);

    for (body, status, says) in [
        (
            r#"{"tasks": ["b"]}"#,
            StatusCode::CONFLICT,
            "it waits for a, which is failed",
        ),
        (
            r#"{"tasks": ["nope"]}"#,
            StatusCode::NOT_FOUND,
            "no task `nope`",
        ),
        (
            r#"{"task": ["a"]}"#,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        ("{oops", StatusCode::BAD_REQUEST, "a retry's body is"),
    ] {
        let (got, answer) = f.post_json(&retry, body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(keys(&answer), ["error"], "{body}");
        let message = answer["error"].as_str().expect("a message");
        assert!(message.contains(says), "{body}: {message}");
    }
    // What a form on another site could send: no custom header.
    let request = Request::post(&retry).body(Body::empty()).expect("request");
    let (status, _) = json(f.call(request).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        (stored(), f.store.tasks(&s.id).expect("tasks")),
        before,
        "nothing changed"
    );

    let (status, body) = f.post_json(&retry, r#"{"tasks": ["a"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    has_keys(&body, SESSION_KEYS);
    assert_eq!(body["status"], "running");
    assert_eq!(
        body["retried"],
        serde_json::json!([{"id": "a", "from": "failed"}, {"id": "b", "from": "skipped"}])
    );
    // Nobody serves it: as for a resume, the answer says that nothing runs until a worker does.
    assert_eq!(body["workers_live"], 0);
    assert!(
        body["warning"]
            .as_str()
            .is_some_and(|w| w.contains("no worker serves")),
        "{body}"
    );
    let tasks = f.store.tasks(&s.id).expect("tasks");
    let states: Vec<String> = tasks.iter().map(|t| t.state.to_string()).collect();
    assert_eq!(states, ["ready", "pending"]);
    poll_snapshot(&f, "/api/snapshot", |v| {
        v["sessions"][0]["status"] == "running" && v["sessions"][0]["failed_tasks"] == 0
    })
    .await;

    // Nothing failed any more: nothing to retry, with or without a body.
    let (status, body) = f.post(&retry).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing to retry")),
        "{body}"
    );
    f.complete(&s);
    assert_eq!(stored().status.to_string(), "completed");
    let (status, _) = f.post("/api/sessions/build/retry").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_session_that_lands_as_it_runs_shows_where_each_tasks_work_is() {
    let f = Fixture::new();
    let plan = Plan::parse(
        "name = \"lands\"\non_conflict = \"fail\"\n\
         [[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"a\"]\n\
         [[task]]\nid = \"b\"\nrun = \"true\"\nfiles = [\"b\"]\n",
        Path::new("br.toml"),
    )
    .expect("valid plan");
    let s = f
        .store
        .create_session(&NewSession {
            plan,
            repo_root: PathBuf::from("/repo"),
            repo_id: None,
            plan_path: None,
            base_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            workers_wanted: 1,
        })
        .expect("create session");
    let worker = f
        .store
        .register_worker(&NewWorker {
            host: "test-host".into(),
            pid: 4242,
            session: Some(s.id.clone()),
            heartbeat_timeout: Duration::from_secs(30),
        })
        .expect("register worker");
    let logs = f._dir.path().join("logs");
    let claim = || {
        f.store
            .claim_next_task(&ClaimRequest {
                worker: &worker,
                session: Some(&s.id),
                log_dir: &logs,
                repo_id: None,
                remote_only: false,
            })
            .expect("claim")
    };
    // Both run and succeed; then a lands, and b conflicts with it and may not be repaired.
    let running: Vec<_> = (0..2)
        .map(|_| match claim() {
            Claim::Task(task) => task,
            other => panic!("a task to run, not {other:?}"),
        })
        .collect();
    for task in running {
        f.store
            .finish_attempt_with(
                &task.lease,
                &Outcome::Succeeded,
                &br_store::AttemptReport {
                    commit: Some(format!("{}0000000", task.lease.task_id)),
                    ..Default::default()
                },
            )
            .expect("finish");
    }
    let Claim::Land(job) = claim() else {
        panic!("the landing turn")
    };
    let words = |v: &Value| -> Vec<Value> {
        v["selected"]["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| t["landing_text"].clone())
            .collect()
    };
    let uri = format!("/api/snapshot?session={}", s.id);
    let snapshot = poll_snapshot(&f, &uri, |v| v["selected"]["landing_task"] == "a").await;
    assert_eq!(snapshot["selected"]["lands"], true);
    assert_eq!(words(&snapshot), ["landing", "waiting"]);
    let tip = "fedcba9876543210fedcba9876543210fedcba98".to_string();
    let a = br_core::TaskId::new("a").expect("id");
    let b = br_core::TaskId::new("b").expect("id");
    f.store
        .record_landing(
            &job,
            &a,
            br_core::Attempt(1),
            &br_store::LandingResult::Landed {
                commit: tip.clone(),
            },
        )
        .expect("land a");
    f.store
        .record_landing(
            &job,
            &b,
            br_core::Attempt(1),
            &br_store::LandingResult::Conflict {
                files: vec!["shared".into()],
                with: vec!["a".into()],
                details: String::new(),
                tip,
            },
        )
        .expect("b conflicts");
    let snapshot = poll_snapshot(&f, &uri, |v| v["sessions"][0]["status"] == "failed").await;
    assert_eq!(words(&snapshot), ["landed fedcba9", "not landed: conflict"]);
    let session = &snapshot["sessions"][0];
    assert_eq!(
        (
            &session["landed_tasks"],
            &session["completed_tasks"],
            &session["failed_tasks"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "a task that did not land is failed, not succeeded"
    );
    assert_eq!(snapshot["selected"]["tasks"][1]["state"], "failed");
}

#[tokio::test]
async fn actions_need_the_action_header_and_a_local_host() {
    let f = Fixture::new();
    let s = f.submit("build", &["a"]);
    // What a form on another site could send: no custom header.
    let request = Request::post(format!("/api/sessions/{}/cancel", s.id))
        .body(Body::empty())
        .expect("request");
    let (status, body) = json(f.call(request).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_ne!(
        f.store.session(&s.id).expect("session").status.to_string(),
        "cancelled"
    );
    // A name that resolves to 127.0.0.1 (DNS rebinding) is not this server's.
    let request = Request::get("/api/summary")
        .header(header::HOST, "attacker.example:7878")
        .body(Body::empty())
        .expect("request");
    let (status, _) = json(f.call(request).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let request = Request::get("/api/summary")
        .header(header::HOST, "localhost:7878")
        .body(Body::empty())
        .expect("request");
    let (status, _) = json(f.call(request).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_page_is_self_contained_html() {
    let f = Fixture::new();
    let response = f
        .call(Request::get("/").body(Body::empty()).expect("request"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let page = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("new EventSource("), "it follows the stream");
    let lower = page.to_lowercase();
    for external in ["http://", "https://", "//cdn", "src=\"//", "@import"] {
        assert!(!lower.contains(external), "the page refers to `{external}`");
    }
    assert!(
        !page.contains(".innerHTML"),
        "text from the store is never parsed as HTML"
    );
}

#[tokio::test]
async fn the_stream_starts_with_the_current_snapshot() {
    let f = Fixture::new();
    let s = f.submit("build", &["a", "b"]);
    let other = f.submit("other", &["x"]);
    // The shared snapshot is published in the background; wait until it has both sessions.
    poll_snapshot(&f, "/api/snapshot", |v| {
        v["summary"]["sessions"]["total"] == 2
    })
    .await;
    for (uri, selected) in [
        ("/api/stream".to_string(), &other.id),
        (format!("/api/stream?session={}", s.id), &s.id),
    ] {
        let response = f
            .call(Request::get(&uri).body(Body::empty()).expect("request"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Frames arrive in pieces; read until one whole event is in.
        while !text.contains("\n\n") {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .expect("a chunk");
            text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
        let event = text.split("\n\n").next().expect("an event");
        assert!(event.starts_with("event: snapshot\n"), "{event}");
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data");
        let snapshot: Value = serde_json::from_str(data).expect("snapshot JSON");
        assert_eq!(snapshot["selected"]["id"], selected.as_str(), "{uri}");
    }
    // Stopping the server ends every stream, so a graceful shutdown does not wait on them.
    let response = f
        .call(
            Request::get("/api/stream")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    let mut body = response.into_body().into_data_stream();
    f.state.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            chunk.expect("a chunk");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
}

#[tokio::test]
async fn resuming_a_session_that_no_worker_serves_says_so() {
    let f = Fixture::new();
    let plan = Plan::parse(
        "name = \"build\"\nisolation = \"shared\"\nheartbeat_timeout = \"1s\"\n\
         [[task]]\nid = \"a\"\nrun = \"true\"\n",
        Path::new("br.toml"),
    )
    .expect("valid plan");
    let s = f
        .store
        .create_session(&NewSession {
            plan,
            repo_root: PathBuf::from("/repo"),
            plan_path: None,
            base_commit: None,
            workers_wanted: 1,
            repo_id: None,
        })
        .expect("create session");

    // Nobody serves it: the session is running in the store, and the answer says that nothing
    // will run until a worker does.
    let body = pause_then_resume(&f).await;
    assert_eq!(body["workers_live"], 0, "{body}");
    let warning = body["warning"].as_str().expect("a warning");
    assert!(warning.contains("no worker serves"), "{warning}");
    assert!(
        warning.contains(&format!("br resume {}", s.id)),
        "{warning}"
    );

    // A live worker of the session serves it.
    let worker = f
        .store
        .register_worker(&NewWorker {
            host: "test-host".into(),
            pid: 4242,
            session: Some(s.id.clone()),
            heartbeat_timeout: Duration::from_secs(1),
        })
        .expect("register worker");
    let body = pause_then_resume(&f).await;
    assert_eq!(body["workers_live"], 1, "{body}");
    assert!(body["warning"].is_null(), "{body}");

    // One whose heartbeat is older than the session's timeout died without leaving (nobody
    // marked it offline yet): it serves nothing.
    let heard = f.store.worker(&worker).expect("worker").last_heartbeat;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while f.store.now().expect("now").0 <= heard.0 + 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the store clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = pause_then_resume(&f).await;
    assert_eq!(body["workers_live"], 0, "{body}");
    assert!(body["warning"].is_string(), "{body}");
}

/// Pauses the session `build`, then resumes it as the page's buttons do; the resume's answer.
async fn pause_then_resume(f: &Fixture) -> Value {
    let (status, body) = f.post("/api/sessions/build/pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = f.post("/api/sessions/build/resume").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    has_keys(&body, SESSION_KEYS);
    assert_eq!(body["status"], "running");
    body
}

const TOKEN: &str = "s3cret-Token_for.br";

fn token() -> Token {
    Token::new(TOKEN).expect("a valid token")
}

/// `method uri` with these headers.
fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn with_a_token_every_route_needs_it() {
    for access in [
        Access::Network { token: token() },
        Access::Loopback {
            token: Some(token()),
        },
    ] {
        let f = Fixture::with(access);
        let s = f.submit("build", &["a"]);
        let cancel = format!("/api/sessions/{}/cancel", s.id);
        let retry = format!("/api/sessions/{}/retry", s.id);
        let routes = [
            ("GET", "/"),
            ("GET", "/?token=wrong"),
            ("GET", "/api/snapshot"),
            ("GET", "/api/summary"),
            ("GET", "/api/sessions"),
            ("GET", "/api/sessions/build"),
            ("GET", "/api/workers"),
            ("GET", "/api/locks"),
            ("GET", "/api/pools"),
            ("GET", "/api/events"),
            ("GET", "/api/stream"),
            ("GET", "/api/no/such/thing"),
            ("POST", cancel.as_str()),
            ("POST", retry.as_str()),
        ];
        let bearer = format!("Bearer {TOKEN}");
        let cookie = format!("other=1; br_token={TOKEN}");
        for (method, uri) in routes {
            for refused in [
                vec![],
                vec![("authorization", "Bearer wrong")],
                vec![("authorization", "Bearer ")],
                vec![("authorization", TOKEN)],
                vec![("cookie", "br_token=wrong")],
                // A prefix of the token, and the token with more after it.
                vec![("authorization", &bearer[..bearer.len() - 1])],
                vec![("cookie", "br_token=s3cret-Token_for.brX")],
            ] {
                let mut headers = refused.clone();
                headers.push((ACTION_HEADER, "test"));
                let response = f.call(request(method, uri, &headers)).await;
                assert_eq!(
                    response
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .map(axum::http::HeaderValue::as_bytes),
                    Some(&b"Bearer"[..]),
                    "{method} {uri} {refused:?}"
                );
                let (status, body) = json(response).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} {refused:?}"
                );
                assert_eq!(keys(&body), ["error"]);
            }
        }
        assert_ne!(
            f.store.session(&s.id).expect("session").status.to_string(),
            "cancelled",
            "nothing was done"
        );
        for (method, uri) in routes {
            if uri.contains("token") || method == "POST" {
                continue;
            }
            for accepted in [
                ("authorization", bearer.as_str()),
                ("cookie", cookie.as_str()),
            ] {
                let response = f.call(request(method, uri, &[accepted])).await;
                let status = response.status();
                let wanted = if uri == "/api/no/such/thing" {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                assert_eq!(status, wanted, "{method} {uri} {accepted:?}");
            }
        }
        let response = f
            .call(request(
                "POST",
                &cancel,
                &[("authorization", &bearer), (ACTION_HEADER, "test")],
            ))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn opening_the_page_with_the_token_sets_a_strict_cookie_and_drops_it_from_the_address() {
    let f = Fixture::with(Access::Network { token: token() });
    let response = f
        .call(request("GET", &format!("/?token={TOKEN}"), &[]))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .expect("ASCII")
        .to_string();
    let mut parts: Vec<&str> = cookie.split("; ").collect();
    assert_eq!(parts.remove(0), format!("br_token={TOKEN}"), "{cookie}");
    parts.sort_unstable();
    assert_eq!(parts, ["HttpOnly", "Path=/", "SameSite=Strict"], "{cookie}");

    // The cookie alone opens the page and the stream.
    let pair = format!("br_token={TOKEN}");
    for uri in ["/", "/api/stream", "/api/summary"] {
        let response = f.call(request("GET", uri, &[("cookie", &pair)])).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn every_host_header_is_checked() {
    for access in [
        Access::Loopback { token: None },
        Access::Network { token: token() },
    ] {
        let f = Fixture::with(access);
        let bearer = format!("Bearer {TOKEN}");
        let auth = ("authorization", bearer.as_str());
        // Two Host headers: refused whatever they say, the first alone is not what counts.
        for hosts in [
            ["localhost:7878", "attacker.example"],
            ["attacker.example", "localhost:7878"],
            ["localhost:7878", "localhost:7878"],
        ] {
            let request = Request::get("/api/summary")
                .header(header::HOST, hosts[0])
                .header(header::HOST, hosts[1])
                .header(auth.0, auth.1)
                .body(Body::empty())
                .expect("request");
            let (status, body) = json(f.call(request).await).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{hosts:?}: {body}");
            assert!(
                body["error"].as_str().is_some_and(|e| e.contains("Host")),
                "{body}"
            );
        }
        // Not a host name at all.
        for bad in ["local host", "localhost:port", "[::1", "a/b"] {
            let (status, body) = json(
                f.call(request("GET", "/api/summary", &[("host", bad), auth]))
                    .await,
            )
            .await;
            assert!(status.is_client_error(), "{bad}: {status} {body}");
        }
        // A request whose target names another host than its Host header.
        let (status, body) = json(
            f.call(request(
                "GET",
                "http://attacker.example/api/summary",
                &[("host", "localhost:7878"), auth],
            ))
            .await,
        )
        .await;
        assert!(status.is_client_error(), "{status} {body}");
        let (status, body) = json(
            f.call(request(
                "GET",
                "/api/summary",
                &[("host", "localhost:7878"), auth],
            ))
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[test]
fn a_token_is_printable_text_that_fits_a_header_and_a_cookie() {
    for ok in [TOKEN, "0123456789abcdef", "a+b/c=", "~x"] {
        assert!(Token::new(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "has space",
        "semi;colon",
        "comma,",
        "quote\"",
        "back\\slash",
        "é",
    ] {
        assert!(Token::new(bad).is_err(), "{bad:?}");
    }
    assert!(
        !format!("{:?}", token()).contains(TOKEN),
        "Debug does not show the token"
    );
}

/// The first event of a stream's answer: its kind and its data as JSON.
async fn first_event(response: Response) -> (String, Value) {
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Frames arrive in pieces; read until one whole event is in.
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("a chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
    let event = text.split("\n\n").next().expect("an event");
    let kind = event
        .lines()
        .find_map(|l| l.strip_prefix("event: "))
        .expect("a kind");
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data");
    (kind.to_string(), serde_json::from_str(data).expect("JSON"))
}

fn task_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:04}")).collect()
}

#[tokio::test]
async fn a_stream_sends_one_page_of_a_large_sessions_tasks() {
    let f = Fixture::new();
    let ids = task_ids(450);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let s = f.submit("big", &refs);
    let whole = poll_snapshot(&f, "/api/snapshot", |v| {
        v["selected"]["id"] == s.id.as_str()
    })
    .await;
    assert_eq!(
        whole["selected"]["tasks"].as_array().map(Vec::len),
        Some(450)
    );

    for (query, offset, len) in [
        (String::new(), 0, DEFAULT_TASK_PAGE),
        (format!("?session={}", s.id), 0, DEFAULT_TASK_PAGE),
        ("?session=big&offset=400".to_string(), 400, 50),
        ("?offset=10&limit=5".to_string(), 10, 5),
        ("?offset=9999".to_string(), 450, 0),
    ] {
        let uri = format!("/api/stream{query}");
        let response = f
            .call(Request::get(&uri).body(Body::empty()).expect("request"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let (kind, page) = first_event(response).await;
        assert_eq!(kind, "snapshot");
        // The snapshot's keys, and in `selected` where the page lies among the tasks.
        assert_eq!(keys(&page), keys(&whole), "{uri}");
        assert_eq!(
            keys(&page["selected"]),
            [
                "id",
                "landing_task",
                "lands",
                "tasks",
                "tasks_offset",
                "tasks_total"
            ]
        );
        assert_eq!(page["selected"]["tasks_total"], 450, "{uri}");
        assert_eq!(page["selected"]["tasks_offset"], offset, "{uri}");
        let tasks = page["selected"]["tasks"].as_array().expect("tasks");
        assert_eq!(tasks.len(), len, "{uri}");
        for (i, task) in tasks.iter().enumerate() {
            assert_eq!(task, &whole["selected"]["tasks"][offset + i], "{uri}");
        }
        assert_eq!(page["sessions"], whole["sessions"], "{uri}");
        assert!(
            page["events"].as_array().is_some_and(|e| e.len() <= 50),
            "{uri}"
        );
    }
    for bad in [
        "?limit=0",
        &format!("?limit={}", MAX_TASK_PAGE + 1),
        "?offset=-1",
    ] {
        let (status, body) = f.get(&format!("/api/stream{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn streams_beyond_the_cap_are_refused_with_503_until_one_ends() {
    let f = Fixture::new();
    f.submit("build", &["a"]);
    let state = f.state.clone().with_max_streams(2);
    let open = || async {
        router(state.clone())
            .oneshot(
                Request::get("/api/stream")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible")
    };
    let first = open().await;
    let second = open().await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(state.live_streams(), 2);
    let refused = open().await;
    assert_eq!(refused.headers()[header::RETRY_AFTER], "5");
    let (status, body) = json(refused).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("2 live streams")),
        "{body}"
    );

    // A client that goes gives its place back.
    drop(first);
    assert_eq!(state.live_streams(), 1);
    let third = open().await;
    assert_eq!(third.status(), StatusCode::OK);
    drop((second, third));
    assert_eq!(state.live_streams(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_stops_reading_is_dropped_and_a_reading_one_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let f = Fixture::new();
    let ids = task_ids(1000);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let s = f.submit("big", &refs);
    let server = Server::bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind")
        .with_write_stall(Duration::from_secs(1));
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(f.state.clone(), async move {
        let _ = stop_rx.await;
    }));

    // Keeps the session changing, so that every stream has something new to send.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changer = {
        let (store, done, dir) = (
            Arc::clone(&f.store),
            Arc::clone(&done),
            f._dir.path().join("logs"),
        );
        let session = s.id.clone();
        std::thread::spawn(move || {
            let worker = store
                .register_worker(&NewWorker {
                    host: "test-host".into(),
                    pid: 4242,
                    session: Some(session.clone()),
                    heartbeat_timeout: Duration::from_secs(30),
                })
                .expect("register");
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match store
                    .claim_next_task(&ClaimRequest {
                        worker: &worker,
                        session: Some(&session),
                        log_dir: &dir,
                        repo_id: None,
                        remote_only: false,
                    })
                    .expect("claim")
                {
                    Claim::Task(task) => {
                        store
                            .finish_attempt(&task.lease, &Outcome::Succeeded)
                            .expect("finish");
                    }
                    Claim::Nothing | Claim::Stop | Claim::Land(_) => break,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let request = format!(
        "GET /api/stream?session=big&limit={MAX_TASK_PAGE} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    );
    let mut stuck = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stuck.write_all(request.as_bytes()).await.expect("send");
    let mut reading = tokio::net::TcpStream::connect(addr).await.expect("connect");
    reading.write_all(request.as_bytes()).await.expect("send");
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match reading.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        received.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        })
    };

    // Both are served first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while f.state.live_streams() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the streams did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stuck client fills what the kernel and the server buffer, then makes no progress
    // for a second: the server drops it and gives its place back.
    while f.state.live_streams() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck client was not dropped ({} live streams)",
            f.state.live_streams()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What it had been sent ends: the server closed the connection.
    let mut buf = vec![0; 64 * 1024];
    let mut drained_bytes = 0;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    drained_bytes += n;
                }
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the connection was not closed: {drained_bytes} bytes drained; the reader got {} and {}",
        received.load(std::sync::atomic::Ordering::SeqCst),
        if reader.is_finished() {
            "ended"
        } else {
            "goes on"
        }
    );

    // The reading client is still served.
    let before = received.load(std::sync::atomic::Ordering::SeqCst);
    assert!(before > 0);
    while received.load(std::sync::atomic::Ordering::SeqCst) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reading client got nothing more"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.state.live_streams(), 1);

    done.store(true, std::sync::atomic::Ordering::SeqCst);
    changer.join().expect("changer");
    let _ = stop_tx.send(());
    serving.await.expect("joined").expect("served");
    reader.await.expect("reader");
}

/// The body of a text response, with the headers a log reader pages by.
async fn text(response: Response) -> (StatusCode, String, String, String) {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().expect("ascii").to_string())
    };
    let (next, complete) = (header("x-br-log-next"), header("x-br-log-complete"));
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        next,
        complete,
    )
}

#[tokio::test]
async fn a_task_log_is_read_from_the_store_while_it_runs_and_after() {
    let f = Fixture::new();
    let s = f.submit("logs", &["build"]);
    let (_, task) = f.claim_first(&s);
    let get = |uri: String| {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        async { text(f.call(request).await).await }
    };
    let uri = format!("/api/sessions/{}/tasks/build/log", s.id);
    // Shipped so far, by a worker this server has no file of.
    f.store
        .append_log(&task.lease, 0, b"compiling\n")
        .expect("ship");
    assert_eq!(
        get(uri.clone()).await,
        (
            StatusCode::OK,
            "compiling\n".into(),
            "10".into(),
            "false".into()
        )
    );
    f.store
        .append_log(&task.lease, 10, b"done\n")
        .expect("ship");
    f.store
        .finish_attempt(&task.lease, &Outcome::Succeeded)
        .expect("finish");
    // A follower asks from where it was; the attempt has ended, so nothing follows.
    assert_eq!(
        get(format!("{uri}?from=10")).await,
        (StatusCode::OK, "done\n".into(), "15".into(), "true".into())
    );
    assert_eq!(get(format!("{uri}?attempt=1")).await.1, "compiling\ndone\n");
    let (status, body, ..) = get(format!("{uri}?attempt=2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no attempt 2"), "{body}");
    let (status, ..) = get(format!("/api/sessions/{}/tasks/nope/log", s.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, ..) = get(format!("{uri}?attempt=x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_task_answers_with_its_attempts() {
    let f = Fixture::new();
    let s = f.submit("attempts", &["build"]);
    f.fail_first(&s);
    let (status, task) = f.get(&format!("/api/sessions/{}/tasks/build", s.id)).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    has_keys(&task, TASK_KEYS);
    let attempts = task["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{task}");
    let first = &attempts[0];
    has_keys(
        first,
        &[
            "attempt",
            "reason",
            "outcome",
            "exit_code",
            "worker_id",
            "started_at",
            "finished_at",
            "duration_ms",
            "ref",
            "usage",
        ],
    );
    assert_eq!(
        (
            &first["attempt"],
            &first["reason"],
            &first["outcome"],
            &first["exit_code"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!("first"),
            &serde_json::json!("failed"),
            &serde_json::json!(1)
        )
    );
    assert!(
        first["duration_ms"].as_i64().is_some_and(|d| d >= 0),
        "{first}"
    );
    assert_eq!(first["ref"], Value::Null, "it kept no commit");
    let (status, _) = f.get(&format!("/api/sessions/{}/tasks/nope", s.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
