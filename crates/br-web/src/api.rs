//! The routes: the page, the JSON API (the same shapes as the CLI's `--json`), the live stream,
//! and the session actions. Handlers are thin: they read the store (off the async runtime) or
//! the published snapshot, and turn a user action (pause, resume, cancel, retry) into one store
//! request.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use br_core::retry::RetryScope;
use br_core::state::SessionAction;
use br_core::{SessionStatus, TaskId, TaskState, WorkerStatus};
use br_store::snapshot::build_snapshot;
use br_store::view::{
    EventView, HistoryView, LockListView, PoolListView, SessionListView, StatusView, SummaryView,
    TaskDetailView, WorkerListView, WorkerListing,
};
use br_store::{EventFilter, Session, SessionFilter, Store};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::query::SessionQuery;
use crate::serving::serving_workers;
use crate::state::{AppState, DiffFailure};
use crate::stream::stream;

/// The dashboard page: one file, inline CSS and JS, nothing fetched from elsewhere.
pub const PAGE: &str = include_str!("dashboard.html");

/// The header a state-changing request must carry. A page on another site cannot add it
/// without a CORS preflight, which this server never grants.
pub const ACTION_HEADER: &str = "x-br-action";

/// How many sessions `/api/sessions` lists by default (as `br list`).
const DEFAULT_SESSION_LIMIT: usize = 20;

/// The most of a log one `/log` request returns; ask again `from` where it ended for more.
const MAX_LOG_BYTES: usize = 4 * 1024 * 1024;

/// How many events `/api/events` returns by default, and at most.
const DEFAULT_EVENT_LIMIT: usize = 1000;
const MAX_EVENT_LIMIT: usize = 10_000;

/// The web dashboard's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/api/summary", get(summary))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}", get(session))
        .route("/api/sessions/{id}/pause", post(pause))
        .route("/api/sessions/{id}/resume", post(resume))
        .route("/api/sessions/{id}/cancel", post(cancel))
        .route("/api/sessions/{id}/retry", post(retry))
        .route("/api/sessions/{id}/history", get(history))
        .route("/api/sessions/{id}/tasks/{task}", get(task))
        .route("/api/sessions/{id}/tasks/{task}/log", get(task_log))
        .route("/api/sessions/{id}/tasks/{task}/diff", get(task_diff))
        .route("/api/workers", get(workers))
        .route("/api/locks", get(locks))
        .route("/api/pools", get(pools))
        .route("/api/events", get(events))
        .route("/api/stream", get(stream))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Refuses requests for hosts this server does not answer (DNS rebinding), requests without
/// the token when it has one, and cross-site state changes; marks every answer as not to be
/// framed, sniffed, or followed by a referrer.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(refused) = state.access.check_host(&parts) {
        return refused.into_response();
    }
    let request = Request::from_parts(parts, body);
    let mut response = match state.access.check_token(request.headers()) {
        // The page opened as `/?token=…` proves the token itself, and gets the cookie.
        Err(_) if page_with_token(&request).is_some() => next.run(request).await,
        Err(refused) => refused.into_response(),
        Ok(())
            if request.method() == Method::POST
                && !request.headers().contains_key(ACTION_HEADER) =>
        {
            ApiError::Forbidden(format!(
                "a session action needs the `{ACTION_HEADER}` header (the dashboard page sends it)"
            ))
            .into_response()
        }
        Ok(()) => next.run(request).await,
    };
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A token in the address must never travel on in a Referer.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The `token` of `GET /?token=…`, the page's way in when the server has a token.
fn page_with_token(request: &Request) -> Option<String> {
    if request.method() != Method::GET || request.uri().path() != "/" {
        return None;
    }
    let Query(q) = Query::<PageQuery>::try_from_uri(request.uri()).ok()?;
    q.token
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
}

/// `GET /`: the page. `GET /?token=T` checks T, keeps it in the cookie and sends the browser
/// on to `/`, so that the token does not stay in the address bar or the history.
async fn page(State(state): State<AppState>, request: Request) -> Response {
    if let Some(given) = page_with_token(&request)
        && state.access.has_token()
    {
        if !state.access.token_matches(&given) {
            return ApiError::Unauthorized(
                "this is not the server's token (the one given to `br serve` with --token or \
                 BR_SERVE_TOKEN)"
                    .into(),
            )
            .into_response();
        }
        let mut response = Redirect::to("/").into_response();
        let headers = response.headers_mut();
        if let Some(cookie) = state.access.token_cookie() {
            headers.insert(header::SET_COOKIE, cookie);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    page_html()
}

fn page_html() -> Response {
    let mut headers = HeaderMap::new();
    // The page loads nothing from anywhere else; say so, so that a bug cannot make it.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    (headers, Html(PAGE)).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", request.uri().path()))
}

/// A query string that does not parse is a 400 with the error JSON, like every other error.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// A JSON answer from text that is already JSON.
fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// `GET /api/snapshot[?session=S]`: what the dashboards show (as `br dashboard --once --json`),
/// whole: a one-off request, serialised for it off the runtime (a stream sends pages instead).
async fn snapshot(
    State(state): State<AppState>,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let latest = state.latest();
    let json = state
        .blocking(move |store| {
            let own;
            let snapshot = match (q.session, &latest.snapshot) {
                (None, Some(shared)) => shared,
                (Some(reference), Some(shared))
                    if latest.error.is_none()
                        && latest.selected() == Some(&store.resolve_session(&reference)?.id) =>
                {
                    shared
                }
                (reference, _) => {
                    let id = reference
                        .map(|r| store.resolve_session(&r))
                        .transpose()?
                        .map(|s| s.id);
                    own = build_snapshot(store, id.as_ref())?;
                    &own
                }
            };
            serde_json::to_string(snapshot).map_err(|e| ApiError::Internal(e.to_string()))
        })
        .await?;
    Ok(json_text(json))
}

/// `GET /api/summary`: as `br summary --json`.
async fn summary(State(state): State<AppState>) -> Result<Response, ApiError> {
    let s = state.blocking(|store| Ok(store.summary()?)).await?;
    Ok(Json(SummaryView::from(&s)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/sessions[?status=S&limit=N]`: as `br list --json`.
async fn sessions(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<SessionStatus>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let filter = SessionFilter {
        status,
        limit: Some(q.limit.unwrap_or(DEFAULT_SESSION_LIMIT)),
    };
    let list = state
        .blocking(move |store| Ok(SessionListView::read(store, &filter)?))
        .await?;
    Ok(Json(list).into_response())
}

/// `GET /api/sessions/{id}`: as `br status --json`, the session's fields plus `tasks`.
async fn session(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let status = state
        .blocking(move |store| {
            let s = store.resolve_session(&reference)?;
            Ok(StatusView::read(store, s)?)
        })
        .await?;
    Ok(Json(status).into_response())
}

async fn pause(state: State<AppState>, id: Path<String>) -> Result<Response, ApiError> {
    change(state, id, SessionAction::Pause).await
}

/// `POST /api/sessions/{id}/resume`: as `br resume --detach --json`, plus who will run it: a
/// resumed session is `running` in the store, but nothing runs until a worker serves it, and
/// the answer says so rather than let the page show a session at work.
async fn resume(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let resumed = state
        .blocking(move |store: &dyn Store| {
            let s = store.resolve_session(&reference)?;
            let s = store.change_session(&s.id, SessionAction::Resume)?;
            let workers_live = serving_workers(store, &s)?;
            Ok(Resumed::new(s, workers_live))
        })
        .await?;
    state.kick();
    Ok(Json(resumed).into_response())
}

/// The answer to a resume: the session (as `br resume --json`), how many live workers serve
/// it (as `br scale --json` counts them), and a warning when none does.
#[derive(Debug, Serialize)]
struct Resumed {
    #[serde(flatten)]
    session: Session,
    workers_live: usize,
    warning: Option<String>,
}

impl Resumed {
    fn new(session: Session, workers_live: usize) -> Resumed {
        let warning = (workers_live == 0).then(|| {
            format!(
                "no worker serves session {} ({}): it is running in the store, but nothing runs \
                 until a worker serves it; start one where the repository is with `br resume {}` \
                 (or `br worker --session {}`)",
                session.name, session.id, session.id, session.id
            )
        });
        Resumed {
            session,
            workers_live,
            warning,
        }
    }
}

/// What `POST /api/sessions/{id}/retry` may carry: the tasks to run again (with the dependents
/// they skipped). No body, or no tasks: every failed, skipped and cancelled task.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    #[serde(default)]
    tasks: Vec<String>,
}

/// A task a retry queued again, and the state it had.
#[derive(Debug, Serialize)]
struct RetriedTask {
    id: TaskId,
    from: TaskState,
}

/// The answer to a retry: as a resume's (the session, `workers_live`, `warning`), and which
/// tasks run again.
#[derive(Debug, Serialize)]
struct RetryAnswer {
    #[serde(flatten)]
    resumed: Resumed,
    retried: Vec<RetriedTask>,
}

/// `POST /api/sessions/{id}/retry` (body `{"tasks": [...]}`, optional): what `br retry
/// --detach` does — the store queues the tasks again and the session is running — and, as for
/// a resume, who will run them. Workers act on it: a dashboard never starts one.
async fn retry(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetryRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "a retry's body is {{\"tasks\": [\"ID\", …]}} or nothing: {e}"
            ))
        })?
    };
    let answer = state
        .blocking(move |store: &dyn Store| {
            let s = store.resolve_session(&reference)?;
            let scope = if request.tasks.is_empty() {
                RetryScope::All
            } else {
                RetryScope::Named(&request.tasks)
            };
            let retried = store.retry_tasks(&s.id, scope)?;
            let workers_live = serving_workers(store, &retried.session)?;
            Ok(RetryAnswer {
                resumed: Resumed::new(retried.session, workers_live),
                retried: retried
                    .tasks
                    .into_iter()
                    .map(|(id, from)| RetriedTask { id, from })
                    .collect(),
            })
        })
        .await?;
    state.kick();
    Ok(Json(answer).into_response())
}

async fn cancel(state: State<AppState>, id: Path<String>) -> Result<Response, ApiError> {
    change(state, id, SessionAction::Cancel).await
}

/// `POST /api/sessions/{id}/pause|resume|cancel`: the store transition `br pause`, `br resume`
/// and `br cancel` make; the answer is the session afterwards (as their `--json`). Workers act
/// on it: a dashboard never touches processes.
async fn change(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    action: SessionAction,
) -> Result<Response, ApiError> {
    let s = state
        .blocking(move |store: &dyn Store| {
            let s = store.resolve_session(&reference)?;
            Ok(store.change_session(&s.id, action)?)
        })
        .await?;
    state.kick();
    Ok(Json(s).into_response())
}

#[derive(Debug, Deserialize)]
struct WorkersQuery {
    status: Option<String>,
    /// Include stopped workers.
    all: Option<bool>,
}

/// `GET /api/workers[?status=S&all=true]`: as `br workers --json` (stopped workers only with
/// `all` or `status`).
async fn workers(
    State(state): State<AppState>,
    q: Result<Query<WorkersQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<WorkerStatus>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let listing = WorkerListing {
        status,
        include_stopped: q.all.unwrap_or(false),
    };
    let list = state
        .blocking(move |store| Ok(WorkerListView::read(store, listing)?))
        .await?;
    Ok(Json(list).into_response())
}

/// `GET /api/locks`: as `br locks --json`.
async fn locks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = state
        .blocking(|store| Ok(LockListView::read(store)?))
        .await?;
    Ok(Json(list).into_response())
}

/// `GET /api/pools`: as `br pools --json`.
async fn pools(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = state
        .blocking(|store| Ok(PoolListView::read(store)?))
        .await?;
    Ok(Json(list).into_response())
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Only events with a larger `seq`.
    after: Option<i64>,
    /// At most this many, oldest first.
    limit: Option<usize>,
    /// Only this session's events.
    session: Option<String>,
}

/// `GET /api/events[?after=SEQ&limit=N&session=S]`: the objects of `br events --json`, as one
/// array, oldest first; page through the log by passing the last `seq` as `after`.
async fn events(
    State(state): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_EVENT_LIMIT);
    if limit == 0 || limit > MAX_EVENT_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_EVENT_LIMIT}"
        )));
    }
    let list = state
        .blocking(move |store| {
            let session = q
                .session
                .as_deref()
                .map(|s| store.resolve_session(s))
                .transpose()?
                .map(|s| s.id);
            Ok(store.events(&EventFilter {
                after_seq: q.after,
                session,
                limit: Some(limit),
            })?)
        })
        .await?;
    let lines: Vec<EventView<'_>> = list.iter().map(EventView::from).collect();
    Ok(Json(lines).into_response())
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    /// Which attempt [default: the latest].
    attempt: Option<u32>,
    /// From this byte of the log on [default: 0]: how a page follows a running attempt.
    from: Option<u64>,
}

/// `GET /api/sessions/{id}/tasks/{task}/log[?attempt=K&from=BYTE]`: the attempt's output as
/// text, from the store (where workers on every machine ship it as it is written), at most
/// [`MAX_LOG_BYTES`] of it. `X-Br-Log-Next` says the byte to ask `from` next, and
/// `X-Br-Log-Complete: true` that the attempt has ended and nothing follows.
async fn task_log(
    State(state): State<AppState>,
    Path((reference, task)): Path<(String, String)>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let task = TaskId::new(task).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let from = q.from.unwrap_or(0);
    let (bytes, complete) = state
        .blocking(move |store| {
            let s = store.resolve_session(&reference)?;
            let attempts = store.attempts(&s.id, &task)?;
            let attempt = match q.attempt {
                Some(k) => attempts.iter().find(|a| a.attempt.0 == k),
                None => attempts.last(),
            };
            let Some(attempt) = attempt else {
                return Err(ApiError::NotFound(match q.attempt {
                    Some(k) => format!("task {task} has no attempt {k}"),
                    None => format!("task {task} has not run yet"),
                }));
            };
            // Asked before reading: an attempt seen ended had all of its output stored.
            let ended = attempt.finished_at.is_some();
            let mut bytes = Vec::new();
            while bytes.len() < MAX_LOG_BYTES {
                let more =
                    store.read_log(&s.id, &task, attempt.attempt, from + bytes.len() as u64)?;
                if more.is_empty() {
                    break;
                }
                bytes.extend(more);
            }
            bytes.truncate(MAX_LOG_BYTES);
            let complete = ended && bytes.len() < MAX_LOG_BYTES;
            Ok((bytes, complete))
        })
        .await?;
    let next = from + bytes.len() as u64;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-br-log-next", HeaderValue::from(next));
    headers.insert(
        "x-br-log-complete",
        HeaderValue::from_static(if complete { "true" } else { "false" }),
    );
    Ok(response)
}

/// `GET /api/sessions/{id}/history`: the session's attempts and landing record, for the run
/// page's timeline and landing view.
async fn history(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let json = state
        .blocking(move |store| {
            let s = store.resolve_session(&reference)?;
            let view = HistoryView::read(store, &s.id)?;
            serde_json::to_string(&view).map_err(|e| ApiError::Internal(e.to_string()))
        })
        .await?;
    Ok(json_text(json))
}

/// `GET /api/sessions/{id}/tasks/{task}`: the task as in `br status --json`, plus `attempts`
/// (`attempt`, `reason`, `outcome`, `exit_code`, `worker_id`, `started_at`, `finished_at`,
/// `duration_ms`, `ref`, `usage`, `start_commit`), oldest first, and its `prompt`.
async fn task(
    State(state): State<AppState>,
    Path((reference, task)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let task = TaskId::new(task).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let detail = state
        .blocking(move |store| {
            let s = store.resolve_session(&reference)?;
            Ok(TaskDetailView::read(store, &s.id, &task)?)
        })
        .await?;
    Ok(Json(detail).into_response())
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    /// Which attempt [default: the one that landed, else the latest].
    attempt: Option<u32>,
}

/// `GET /api/sessions/{id}/tasks/{task}/diff[?attempt=K]`: what the attempt changed against the
/// commit it started from, as a unified diff (as `br diff`).
async fn task_diff(
    State(state): State<AppState>,
    Path((reference, task)): Path<(String, String)>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let task = TaskId::new(task).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(differ) = state.differ.clone() else {
        return Err(ApiError::NotFound(
            "this server runs outside a repository: it has no diffs to show".into(),
        ));
    };
    let diff = state
        .blocking(move |store| {
            let s = store.resolve_session(&reference)?;
            (differ.0)(store, &s, &task, q.attempt).map_err(|e| match e {
                DiffFailure::Missing(why) => ApiError::NotFound(why),
                DiffFailure::Store(e) => ApiError::Store(e),
                DiffFailure::Failed(why) => ApiError::Internal(why),
            })
        })
        .await?;
    let mut response = diff.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
