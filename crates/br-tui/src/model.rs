//! The dashboard's state and how it changes: [`Model`] (a snapshot plus what the user selected,
//! typed and opened), [`update`] (one message in, maybe one store action out) and [`perform`]
//! (carries an action out against the store).

use br_core::retry::RetryScope;
use br_core::state::SessionAction;
use br_core::{SessionId, TaskId};
use br_store::snapshot::{Snapshot, TaskRow};
use br_store::{Retried, Store};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::DashboardOptions;
use crate::diff::{DiffSource, DiffView};
use crate::follow::LogTail;
use crate::task::{LogSize, TaskView};

/// Which list the arrow keys move in. The workers and the locks take one line each unless they
/// have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Sessions,
    Tasks,
    Workers,
    Locks,
}

impl Focus {
    /// The next in Tab's cycle.
    fn next(self) -> Focus {
        match self {
            Focus::Sessions => Focus::Tasks,
            Focus::Tasks => Focus::Workers,
            Focus::Workers => Focus::Locks,
            Focus::Locks => Focus::Sessions,
        }
    }

    /// The one before, for Shift-Tab.
    fn previous(self) -> Focus {
        match self {
            Focus::Sessions => Focus::Locks,
            Focus::Tasks => Focus::Sessions,
            Focus::Workers => Focus::Tasks,
            Focus::Locks => Focus::Workers,
        }
    }
}

/// Whether the workers and locks panels take one line each unless focused (the live
/// dashboard: the task list gets the height), or show every row (a frame printed once, which
/// no key can open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panels {
    Collapsible,
    Expanded,
}

/// What the screen shows on top of (or instead of) the panels.
#[derive(Debug)]
pub enum Mode {
    Normal,
    /// The key overlay.
    Help,
    /// Typing the task filter after `/`.
    Filter,
    /// Waiting for y/n before cancelling a session.
    ConfirmCancel {
        session: SessionId,
        name: String,
    },
    /// A task's log, full screen.
    Log(LogTail),
    /// A task opened with Enter: its attempts, landing, prompt and the selected attempt's log.
    Task(Box<TaskView>),
    /// An attempt's diff against its start commit.
    Diff(DiffView),
}

/// Something that happened: a key was pressed, or the snapshot was refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Key(KeyEvent),
    /// `Model::snapshot` was brought up to date.
    Refreshed,
    /// Reading the store failed; the dashboard keeps the last snapshot and says why.
    StoreFailed(String),
}

/// A request to the store that a key asked for. The loop carries it out with [`perform`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ChangeSession {
        session: SessionId,
        action: SessionAction,
    },
    /// `br retry`: the named tasks (and the dependents they skipped), or with none, every task
    /// of the session that failed, was skipped or was cancelled.
    Retry {
        session: SessionId,
        tasks: Vec<TaskId>,
    },
}

/// The snapshot being shown and the user's state around it.
#[derive(Debug)]
pub struct Model {
    pub snapshot: Snapshot,
    pub compact: bool,
    pub color: bool,
    /// Whether the footer lists the keys: not in a frame printed once (`--once`), where no key
    /// does anything.
    pub hints: bool,
    pub panels: Panels,
    /// Makes the diffs `d` shows; none outside a repository.
    differ: Option<DiffSource>,
    focus: Focus,
    /// The first worker and lock shown when their panels are open.
    worker_offset: usize,
    lock_offset: usize,
    /// The session whose tasks the user wants; the snapshot follows it from the next refresh.
    selected_session: Option<SessionId>,
    /// The task under the cursor; `None` means the first visible one.
    selected_task: Option<TaskId>,
    filter: String,
    mode: Mode,
    /// The outcome of the last action, or a store error, for the footer.
    status: Option<String>,
    quit: bool,
    /// The user pressed Ctrl-C (rather than `q`).
    interrupted: bool,
}

/// How far PageUp / PageDown move.
const PAGE: isize = 10;

impl Model {
    pub fn new(snapshot: Snapshot, options: &DashboardOptions) -> Model {
        let selected_session = options
            .session
            .clone()
            .or_else(|| snapshot.selected.as_ref().map(|s| s.id.clone()));
        Model {
            snapshot,
            compact: options.compact,
            color: options.color,
            hints: true,
            panels: Panels::Collapsible,
            differ: options.differ.clone(),
            focus: Focus::Sessions,
            worker_offset: 0,
            lock_offset: 0,
            selected_session,
            selected_task: None,
            filter: String::new(),
            mode: Mode::Normal,
            status: None,
            quit: false,
            interrupted: false,
        }
    }

    pub fn focus(&self) -> Focus {
        self.focus
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn mode_mut(&mut self) -> &mut Mode {
        &mut self.mode
    }

    pub fn worker_offset(&self) -> usize {
        self.worker_offset
    }

    pub fn lock_offset(&self) -> usize {
        self.lock_offset
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Whether the user left with Ctrl-C.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    pub fn selected_session(&self) -> Option<&SessionId> {
        self.selected_session.as_ref()
    }

    /// Position of the selected session in the snapshot's list.
    pub fn session_index(&self) -> Option<usize> {
        let id = self.selected_session.as_ref()?;
        self.snapshot
            .sessions
            .iter()
            .position(|s| &s.session.id == id)
    }

    /// The selected session's tasks that pass the filter (a case-insensitive substring of the
    /// task id or its state).
    pub fn visible_tasks(&self) -> Vec<&TaskRow> {
        let Some(selected) = &self.snapshot.selected else {
            return Vec::new();
        };
        if self.filter.is_empty() {
            return selected.tasks.iter().collect();
        }
        let needle = self.filter.to_lowercase();
        selected
            .tasks
            .iter()
            .filter(|t| {
                t.task.id.as_str().to_lowercase().contains(&needle)
                    || t.task.state.as_str().contains(&needle)
            })
            .collect()
    }

    /// Position of the task cursor among [`visible_tasks`](Self::visible_tasks).
    pub fn task_index(&self, visible: &[&TaskRow]) -> usize {
        self.selected_task
            .as_ref()
            .and_then(|id| visible.iter().position(|t| &t.task.id == id))
            .unwrap_or(0)
    }

    /// The task under the cursor.
    pub fn selected_task(&self) -> Option<&TaskRow> {
        let visible = self.visible_tasks();
        let i = self.task_index(&visible);
        visible.get(i).copied()
    }

    /// Reconciles the selection with a new snapshot: keeps the user's choice while it exists,
    /// else follows the session the snapshot shows.
    fn update_snapshot_selection(&mut self) {
        let exists = |id: &SessionId| self.snapshot.sessions.iter().any(|s| &s.session.id == id);
        if !self.selected_session.as_ref().is_some_and(exists) {
            self.selected_session = self
                .snapshot
                .selected
                .as_ref()
                .map(|s| s.id.clone())
                .or_else(|| self.snapshot.sessions.first().map(|s| s.session.id.clone()));
        }
        let seen = |session: &SessionId, task: &TaskId| {
            self.snapshot
                .selected
                .as_ref()
                .filter(|s| &s.id == session)
                .and_then(|s| s.tasks.iter().find(|t| &t.task.id == task))
        };
        match &mut self.mode {
            Mode::Log(tail) => {
                if let Some(row) = seen(tail.session(), tail.task())
                    && let Some(path) = &row.task.log_path
                {
                    // A new attempt writes a new log: follow the task, not the file.
                    tail.retarget(path.into(), row.task.attempts);
                }
            }
            Mode::Task(view) => {
                let row = seen(view.session(), view.task());
                view.refreshed(row.map(|r| &r.task));
            }
            _ => {}
        }
    }

    fn move_session(&mut self, delta: isize) {
        let n = self.snapshot.sessions.len();
        if n == 0 {
            return;
        }
        let from = self.session_index().unwrap_or(0);
        let to = step(from, delta, n);
        let id = self.snapshot.sessions[to].session.id.clone();
        if Some(&id) != self.selected_session.as_ref() {
            self.selected_session = Some(id);
            self.selected_task = None;
        }
    }

    fn move_task(&mut self, delta: isize) {
        let visible = self.visible_tasks();
        if visible.is_empty() {
            return;
        }
        let to = step(self.task_index(&visible), delta, visible.len());
        self.selected_task = Some(visible[to].task.id.clone());
    }

    fn move_cursor(&mut self, delta: isize) {
        match self.focus {
            Focus::Sessions => self.move_session(delta),
            Focus::Tasks => self.move_task(delta),
            Focus::Workers => {
                self.worker_offset = step(self.worker_offset, delta, self.snapshot.workers.len());
            }
            Focus::Locks => {
                self.lock_offset = step(self.lock_offset, delta, self.snapshot.locks.len());
            }
        }
    }

    fn selected_session_row(&self) -> Option<(SessionId, String)> {
        let i = self.session_index()?;
        let s = &self.snapshot.sessions[i].session;
        Some((s.id.clone(), s.name.clone()))
    }

    fn session_action(&mut self, action: SessionAction) -> Option<Action> {
        let Some((session, _)) = self.selected_session_row() else {
            self.status = Some("no session selected".into());
            return None;
        };
        Some(Action::ChangeSession { session, action })
    }

    /// `R`: with the tasks focused, the task under the cursor; else the whole session.
    fn retry(&mut self) -> Option<Action> {
        let Some((session, _)) = self.selected_session_row() else {
            self.status = Some("no session selected".into());
            return None;
        };
        let tasks = match self.focus {
            Focus::Sessions | Focus::Workers | Focus::Locks => Vec::new(),
            Focus::Tasks => match self.selected_task() {
                Some(row) => vec![row.task.id.clone()],
                None => {
                    self.status = Some("no task selected".into());
                    return None;
                }
            },
        };
        Some(Action::Retry { session, tasks })
    }

    /// Enter on a task: the task view.
    fn open_task(&mut self) {
        let Some((session, row)) = self.session_and_task() else {
            return;
        };
        self.mode = Mode::Task(Box::new(TaskView::new(session, row.task.id)));
    }

    /// The shown session and the task under the cursor; with none, the footer says so.
    fn session_and_task(&mut self) -> Option<(SessionId, TaskRow)> {
        let session = self.snapshot.selected.as_ref()?.id.clone();
        let row = self.selected_task().cloned();
        if row.is_none() {
            self.status = Some("no task selected".into());
        }
        Some((session, row?))
    }

    /// `d` on the task list: the diff of the task's landed attempt, else its latest.
    fn open_diff(&mut self) {
        let Some((session, row)) = self.session_and_task() else {
            return;
        };
        if row.task.attempts == 0 {
            self.status = Some(format!("task {} has not run: no diff yet", row.task.id));
            return;
        }
        self.mode = Mode::Diff(DiffView::new(session, row.task.id, None, None));
    }

    fn open_log(&mut self) {
        let Some((session, row)) = self.session_and_task() else {
            return;
        };
        match &row.task.log_path {
            Some(path) => {
                let tail =
                    LogTail::new(session, row.task.id.clone(), path.into(), row.task.attempts);
                self.mode = Mode::Log(tail);
            }
            None => {
                self.status = Some(format!("task {} has not started: no log yet", row.task.id));
            }
        }
    }
}

/// `from + delta`, kept within `0..len`.
fn step(from: usize, delta: isize, len: usize) -> usize {
    let last = len.saturating_sub(1);
    if delta == isize::MIN {
        return 0;
    }
    if delta == isize::MAX {
        return last;
    }
    from.saturating_add_signed(delta).min(last)
}

/// Applies one message to the model. Returns the store action it asks for, if any.
pub fn update(model: &mut Model, msg: Msg) -> Option<Action> {
    match msg {
        Msg::Refreshed => {
            model.update_snapshot_selection();
            None
        }
        Msg::StoreFailed(why) => {
            model.status = Some(format!("store: {why}"));
            None
        }
        Msg::Key(key) => on_key(model, key),
    }
}

fn on_key(model: &mut Model, key: KeyEvent) -> Option<Action> {
    // Terminals that report releases and repeats send them too; a press is what counts.
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        // In raw mode Ctrl-C is a key, not SIGINT: whoever runs the dashboard decides what it
        // means (`br run` stops the run, as the signal would).
        model.interrupted = true;
        model.quit = true;
        return None;
    }
    match &mut model.mode {
        Mode::Help => {
            model.mode = Mode::Normal;
            None
        }
        Mode::ConfirmCancel { session, .. } => {
            let session = session.clone();
            model.mode = Mode::Normal;
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                Some(Action::ChangeSession {
                    session,
                    action: SessionAction::Cancel,
                })
            } else {
                model.status = Some("not cancelled".into());
                None
            }
        }
        Mode::Log(tail) => {
            match key.code {
                KeyCode::Esc | KeyCode::Char('q') => model.mode = Mode::Normal,
                KeyCode::Up | KeyCode::Char('k') => tail.scroll_up(1),
                KeyCode::Down | KeyCode::Char('j') => tail.scroll_down(1),
                KeyCode::PageUp => tail.scroll_up(PAGE.unsigned_abs()),
                KeyCode::PageDown => tail.scroll_down(PAGE.unsigned_abs()),
                KeyCode::Home | KeyCode::Char('g') => tail.scroll_up(usize::MAX),
                KeyCode::End | KeyCode::Char('G' | 'f' | 'F') => tail.follow(),
                _ => {}
            }
            None
        }
        Mode::Task(view) => {
            match key.code {
                KeyCode::Esc | KeyCode::Char('q') => match view.log_size() {
                    LogSize::Full => view.toggle_log_size(),
                    LogSize::Pane => model.mode = Mode::Normal,
                },
                KeyCode::Up | KeyCode::Char('k' | '[') => view.previous_attempt(),
                KeyCode::Down | KeyCode::Char('j' | ']') => view.next_attempt(),
                KeyCode::PageUp => scroll_log(view, |t| t.scroll_up(PAGE.unsigned_abs())),
                KeyCode::PageDown => scroll_log(view, |t| t.scroll_down(PAGE.unsigned_abs())),
                KeyCode::Home | KeyCode::Char('g') => scroll_log(view, |t| t.scroll_up(usize::MAX)),
                KeyCode::End | KeyCode::Char('G' | 'f' | 'F') => scroll_log(view, LogTail::follow),
                KeyCode::Char('o' | 'z') => view.toggle_log_size(),
                KeyCode::Char('d') => {
                    let attempt = view.selected().map(|a| a.attempt.0);
                    if attempt.is_none() {
                        model.status =
                            Some(format!("task {} has not run: no diff yet", view.task()));
                        return None;
                    }
                    let Mode::Task(view) = std::mem::replace(&mut model.mode, Mode::Normal) else {
                        return None;
                    };
                    let (session, task) = (view.session().clone(), view.task().clone());
                    model.mode = Mode::Diff(DiffView::new(session, task, attempt, Some(view)));
                }
                _ => {}
            }
            None
        }
        Mode::Diff(diff) => {
            match key.code {
                KeyCode::Esc | KeyCode::Char('q') => {
                    model.mode = match diff.take_back() {
                        Some(mut view) => {
                            // What it showed may have changed meanwhile.
                            view.mark_stale();
                            Mode::Task(view)
                        }
                        None => Mode::Normal,
                    }
                }
                KeyCode::Up | KeyCode::Char('k') => diff.scroll_up(1),
                KeyCode::Down | KeyCode::Char('j') => diff.scroll_down(1),
                KeyCode::PageUp => diff.scroll_up(PAGE.unsigned_abs()),
                KeyCode::PageDown => diff.scroll_down(PAGE.unsigned_abs()),
                KeyCode::Home | KeyCode::Char('g') => diff.scroll_up(usize::MAX),
                KeyCode::End | KeyCode::Char('G') => diff.scroll_down(usize::MAX),
                _ => {}
            }
            None
        }
        Mode::Filter => {
            match key.code {
                KeyCode::Esc => {
                    model.filter.clear();
                    model.mode = Mode::Normal;
                }
                KeyCode::Enter => model.mode = Mode::Normal,
                KeyCode::Backspace => {
                    model.filter.pop();
                }
                KeyCode::Up => model.move_task(-1),
                KeyCode::Down => model.move_task(1),
                KeyCode::Char(c) if !c.is_control() => model.filter.push(c),
                _ => {}
            }
            None
        }
        Mode::Normal => on_normal_key(model, key),
    }
}

fn on_normal_key(model: &mut Model, key: KeyEvent) -> Option<Action> {
    model.status = None;
    match key.code {
        KeyCode::Char('q') => model.quit = true,
        KeyCode::Esc => model.filter.clear(),
        KeyCode::Char('?') => model.mode = Mode::Help,
        KeyCode::Tab => model.focus = model.focus.next(),
        KeyCode::BackTab => model.focus = model.focus.previous(),
        KeyCode::Left | KeyCode::Char('h') => model.focus = Focus::Sessions,
        KeyCode::Right | KeyCode::Char('l') => model.focus = Focus::Tasks,
        KeyCode::Up | KeyCode::Char('k') => model.move_cursor(-1),
        KeyCode::Down | KeyCode::Char('j') => model.move_cursor(1),
        KeyCode::PageUp => model.move_cursor(-PAGE),
        KeyCode::PageDown => model.move_cursor(PAGE),
        KeyCode::Home | KeyCode::Char('g') => model.move_cursor(isize::MIN),
        KeyCode::End | KeyCode::Char('G') => model.move_cursor(isize::MAX),
        KeyCode::Enter => match model.focus {
            Focus::Sessions => model.focus = Focus::Tasks,
            Focus::Tasks => model.open_task(),
            Focus::Workers | Focus::Locks => {}
        },
        KeyCode::Char('o') => model.open_log(),
        KeyCode::Char('d') => model.open_diff(),
        KeyCode::Char('/') => {
            model.focus = Focus::Tasks;
            model.mode = Mode::Filter;
        }
        KeyCode::Char('p') => return model.session_action(SessionAction::Pause),
        KeyCode::Char('r') => return model.session_action(SessionAction::Resume),
        KeyCode::Char('R') => return model.retry(),
        KeyCode::Char('c') => match model.selected_session_row() {
            Some((session, name)) => model.mode = Mode::ConfirmCancel { session, name },
            None => model.status = Some("no session selected".into()),
        },
        _ => {}
    }
    None
}

/// Scrolls the task view's log, once it has one.
fn scroll_log(view: &mut TaskView, scroll: impl FnOnce(&mut LogTail)) {
    if let Some(tail) = view.log_mut() {
        scroll(tail);
    }
}

/// Reads what the screen follows: the open log's new lines, the task view's task and log, or
/// the diff, the first time. Returns whether anything changed (the loop then draws again).
pub fn poll(store: &dyn Store, model: &mut Model) -> bool {
    let differ = model.differ.clone();
    match &mut model.mode {
        Mode::Log(tail) => tail.poll(store),
        Mode::Task(view) => view.poll(store),
        Mode::Diff(diff) => diff.poll(store, differ.as_ref()),
        Mode::Normal | Mode::Help | Mode::Filter | Mode::ConfirmCancel { .. } => false,
    }
}

/// Carries out `action` against the store and says in the footer how it went. A refused
/// transition (resuming a completed session) is a message, not a failure of the dashboard.
pub fn perform(store: &dyn Store, model: &mut Model, action: Action) {
    match action {
        Action::ChangeSession { session, action } => {
            model.status = Some(match store.change_session(&session, action) {
                Ok(s) => format!("{} session {}", done_verb(action), s.name),
                Err(e) => e.to_string(),
            });
        }
        Action::Retry { session, tasks } => {
            let names: Vec<String> = tasks.iter().map(ToString::to_string).collect();
            let scope = if names.is_empty() {
                RetryScope::All
            } else {
                RetryScope::Named(&names)
            };
            model.status = Some(match store.retry_tasks(&session, scope) {
                Ok(retried) => retried_words(model, &retried),
                Err(e) => e.to_string(),
            });
        }
    }
}

/// What the footer says after a retry: which tasks run again, and — since a dashboard starts no
/// worker — how to get one when none serves the session.
fn retried_words(model: &Model, retried: &Retried) -> String {
    let s = &retried.session;
    let tasks: Vec<&str> = retried.tasks.iter().map(|(t, _)| t.as_str()).collect();
    let mut words = format!("retrying {} of session {}", tasks.join(", "), s.name);
    let serving = model
        .snapshot
        .sessions
        .iter()
        .find(|row| row.session.id == s.id)
        .map_or(0, |row| row.workers);
    if serving == 0 {
        words.push_str(&format!("; no worker serves it: run `br resume {}`", s.id));
    }
    words
}

fn done_verb(action: SessionAction) -> &'static str {
    match action {
        SessionAction::Pause => "paused",
        SessionAction::Resume => "resumed",
        SessionAction::Cancel => "cancelled",
    }
}
