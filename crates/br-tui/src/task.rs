//! A task opened with Enter: its attempts (number, reason, outcome, exit code, worker, start,
//! duration, cost), where its work is, the conflicts and `verify` failures that sent it back,
//! its prompt, and the selected attempt's log, followed while it runs. Read from the store when
//! opened and again whenever the snapshot shows that the task changed.

use br_core::time::{hms, short_duration};
use br_core::{EventKind, SessionId, TaskId, Timestamp};
use br_store::{AttemptRecord, Event, Store, Task};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Borders, Cell, Paragraph, Row, Table, Wrap};

use crate::follow::LogTail;
use crate::model::Model;
use crate::theme::Theme;
use crate::view::{Emphasis, allot, block, draw_log_lines, event_detail, key_hints, short_id};

/// What the store says about one task.
#[derive(Debug, Clone)]
pub struct TaskDetail {
    pub task: Task,
    /// Oldest first.
    pub attempts: Vec<AttemptRecord>,
    pub prompt: Option<String>,
    /// The events that explain its attempts: why each ran again, conflicts, `verify` failures,
    /// where it landed. Oldest first.
    pub notes: Vec<Event>,
}

impl TaskDetail {
    pub fn read(
        store: &dyn Store,
        session: &SessionId,
        task: &TaskId,
    ) -> br_store::Result<TaskDetail> {
        let notes = store
            .task_events(session, task)?
            .into_iter()
            .filter(|e| is_note(e.kind))
            .collect();
        Ok(TaskDetail {
            task: store.task(session, task)?,
            attempts: store.attempts(session, task)?,
            prompt: store.task_prompt(session, task)?,
            notes,
        })
    }
}

/// Whether an event of the task says something its attempts table does not.
fn is_note(kind: EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        TaskRequeued
            | MergeConflict
            | VerifyFailed
            | TaskLanded
            | ScopeViolation
            | StaleResultRejected
            | TaskSkipped
            | TaskCancelled
            | PoolParked
    )
}

/// How much of the screen the log takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSize {
    /// Below the attempts, landing and prompt.
    Pane,
    /// All of it.
    Full,
}

/// The task on screen and what the user chose in it.
#[derive(Debug)]
pub struct TaskView {
    session: SessionId,
    task: TaskId,
    detail: Option<TaskDetail>,
    /// The store must be read again (the view was just opened, or the task changed).
    stale: bool,
    /// Why the store could not be read.
    problem: Option<String>,
    /// The attempt whose log shows; `None`: the latest, whichever it is as new ones start.
    chosen: Option<u32>,
    log: Option<LogTail>,
    log_size: LogSize,
}

impl TaskView {
    pub fn new(session: SessionId, task: TaskId) -> TaskView {
        TaskView {
            session,
            task,
            detail: None,
            stale: true,
            problem: None,
            chosen: None,
            log: None,
            log_size: LogSize::Pane,
        }
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    pub fn task(&self) -> &TaskId {
        &self.task
    }

    /// What the store said, once read.
    pub fn detail(&self) -> Option<&TaskDetail> {
        self.detail.as_ref()
    }

    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The log of the selected attempt.
    pub fn log(&self) -> Option<&LogTail> {
        self.log.as_ref()
    }

    pub fn log_size(&self) -> LogSize {
        self.log_size
    }

    /// The attempt whose log shows: the chosen one, else the latest.
    pub fn selected(&self) -> Option<&AttemptRecord> {
        let attempts = &self.detail.as_ref()?.attempts;
        match self.chosen {
            Some(k) => attempts.iter().find(|a| a.attempt.0 == k),
            None => attempts.last(),
        }
    }

    /// Whether the view follows the latest attempt as new ones start.
    pub fn follows_latest(&self) -> bool {
        self.chosen.is_none()
    }

    /// Selects the attempt before the selected one.
    pub fn previous_attempt(&mut self) {
        if let Some(k) = self.selected().map(|a| a.attempt.0) {
            self.chosen = Some(k.saturating_sub(1).max(1));
        }
    }

    /// Selects the attempt after the selected one; past the last, the view follows the latest.
    pub fn next_attempt(&mut self) {
        let last = self
            .detail
            .as_ref()
            .and_then(|d| d.attempts.last())
            .map(|a| a.attempt.0);
        self.chosen = match (self.chosen, last) {
            (Some(k), Some(last)) if k + 1 < last => Some(k + 1),
            _ => None,
        };
    }

    pub fn toggle_log_size(&mut self) {
        self.log_size = match self.log_size {
            LogSize::Pane => LogSize::Full,
            LogSize::Full => LogSize::Pane,
        };
    }

    pub fn log_mut(&mut self) -> Option<&mut LogTail> {
        self.log.as_mut()
    }

    /// The snapshot was refreshed and shows the task as `seen`: read the store again if it
    /// changed (reading it at every refresh would cost a busy store for nothing).
    pub fn refreshed(&mut self, seen: Option<&Task>) {
        let shown = self.detail.as_ref().map(|d| &d.task);
        if seen.is_none() || shown != seen {
            self.stale = true;
        }
    }

    /// Asks for the store to be read again at the next poll.
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Reads the store if needed and what the selected attempt's log has appended. Returns
    /// whether anything changed.
    pub fn poll(&mut self, store: &dyn Store) -> bool {
        let mut changed = false;
        if self.stale {
            self.stale = false;
            changed = true;
            match TaskDetail::read(store, &self.session, &self.task) {
                Ok(detail) => {
                    self.detail = Some(detail);
                    self.problem = None;
                }
                Err(e) => self.problem = Some(e.to_string()),
            }
        }
        if let Some(a) = self.selected() {
            let attempt = a.attempt.0;
            // An attempt whose log this machine does not have is read from the store.
            let path = a.log_path.clone().unwrap_or_default();
            if self.log.as_ref().is_none_or(|l| l.attempt() != attempt) {
                self.log = Some(LogTail::new(
                    self.session.clone(),
                    self.task.clone(),
                    path.into(),
                    attempt,
                ));
                changed = true;
            }
        }
        if let Some(log) = &mut self.log {
            changed |= log.poll(store);
        }
        changed
    }
}

pub(crate) fn draw(frame: &mut Frame, area: Rect, view: &TaskView, model: &Model, theme: Theme) {
    let body = area.height.saturating_sub(1);
    let main = Rect::new(area.x, area.y, area.width, body);
    let footer = Rect::new(area.x, area.y + body, area.width, area.height - body);
    let hints = key_hints(
        &[
            ("Esc/q", "back"),
            ("↑↓ [ ]", "attempt"),
            ("PgUp PgDn", "scroll log"),
            ("G", "follow"),
            ("o", "full log"),
            ("d", "diff"),
        ],
        theme,
    );
    frame.render_widget(Paragraph::new(hints), footer);
    if view.log_size() == LogSize::Full {
        draw_log(frame, main, view, theme);
        return;
    }
    let session = model
        .snapshot
        .sessions
        .iter()
        .find(|s| &s.session.id == view.session())
        .map_or(view.session().as_str(), |s| s.session.name.as_str());
    let Some(detail) = view.detail() else {
        let words = view.problem().unwrap_or("reading the task…").to_string();
        frame.render_widget(
            Paragraph::new(Line::styled(words, theme.label())).block(block(
                format!(" Task {session}/{} ", view.task()),
                theme,
                Borders::ALL,
                Emphasis::Focused,
            )),
            main,
        );
        return;
    };
    let about = about_lines(detail, model, view, theme);
    let n = |len: usize| u16::try_from(len).unwrap_or(u16::MAX);
    let prompt_lines = detail.prompt.as_ref().map_or(0, |p| {
        // Wrapped at the panel's inner width: how many lines it takes, roughly.
        let width = usize::from(area.width.saturating_sub(2)).max(1);
        p.lines()
            .map(|l| l.chars().count().div_ceil(width).max(1))
            .sum::<usize>()
    });
    let prompt_want = if detail.prompt.is_some() {
        n(prompt_lines).saturating_add(2)
    } else {
        0
    };
    let heights = allot(
        main.height,
        &[
            (3, n(about.len()).saturating_add(2), 10),
            (3, n(detail.attempts.len().max(1)).saturating_add(3), 10),
            (prompt_want.min(3), prompt_want, 8),
            (3, u16::MAX, u16::MAX),
        ],
        &[0, 1, 2],
        3,
    );
    let r = crate::view::rows_of(main, &heights);
    let mut title = format!(" Task {session}/{} · {} ", view.task(), detail.task.state);
    if let Some(agent) = &detail.task.agent {
        title.push_str(&format!("· agent {agent} "));
    }
    frame.render_widget(
        Paragraph::new(about)
            .wrap(Wrap { trim: false })
            .block(block(title, theme, Borders::ALL, Emphasis::Plain)),
        r[0],
    );
    draw_attempts(frame, r[1], view, detail, model.snapshot.now, theme);
    if let Some(prompt) = &detail.prompt
        && r[2].height > 0
    {
        frame.render_widget(
            Paragraph::new(prompt.as_str())
                .wrap(Wrap { trim: false })
                .block(block(
                    " Prompt ".into(),
                    theme,
                    Borders::ALL,
                    Emphasis::Plain,
                )),
            r[2],
        );
    }
    draw_log(frame, r[3], view, theme);
}

/// The task's state in words: what it is and spent, where its work is, what its merge found,
/// and the events that explain its attempts.
fn about_lines(
    detail: &TaskDetail,
    model: &Model,
    view: &TaskView,
    theme: Theme,
) -> Vec<Line<'static>> {
    let task = &detail.task;
    let label = |t: &str| Span::styled(t.to_string(), theme.label());
    let mut first = vec![
        label("Attempts "),
        Span::raw(task.attempts.to_string()),
        label(" · retries "),
        Span::raw(task.retries.to_string()),
    ];
    if let Some(pool) = &task.pool {
        first.push(label(" · pool "));
        first.push(Span::raw(pool.clone()));
    }
    if !task.usage.is_zero() {
        first.push(label(" · spent "));
        first.push(Span::raw(task.usage.describe()));
    }
    if let Some(branch) = &task.branch {
        first.push(label(" · branch "));
        first.push(Span::raw(branch.clone()));
    }
    let mut lines = vec![Line::from(first)];
    let landing = model
        .snapshot
        .selected
        .as_ref()
        .filter(|s| &s.id == view.session())
        .and_then(|s| s.landing_words(task))
        .or_else(|| task.landing.map(|l| l.as_str().to_string()));
    if let Some(landing) = landing {
        let style = if landing.starts_with("landed") {
            theme.good()
        } else if landing.starts_with("not") {
            theme.bad()
        } else {
            theme.busy()
        };
        let mut spans = vec![label("Landing "), Span::styled(landing, style)];
        if task.repairs > 0 {
            spans.push(Span::raw(format!(
                " · run again {} time(s) to land",
                task.repairs
            )));
        }
        lines.push(Line::from(spans));
    }
    for note in task.merge_notes() {
        lines.push(Line::from(vec![
            label("Merge "),
            Span::styled(note, theme.warn()),
        ]));
    }
    for e in &detail.notes {
        let style = match e.kind {
            EventKind::MergeConflict | EventKind::VerifyFailed | EventKind::StaleResultRejected => {
                theme.bad()
            }
            EventKind::TaskLanded => theme.good(),
            _ => theme.warn(),
        };
        let attempt = e.attempt.map(|a| format!(" #{a}")).unwrap_or_default();
        lines.push(Line::from(vec![
            Span::styled(hms(e.at), theme.label()),
            Span::raw(attempt),
            Span::raw(" "),
            Span::styled(e.kind.as_str(), style),
            Span::raw(event_detail(e)),
        ]));
    }
    lines
}

fn draw_attempts(
    frame: &mut Frame,
    area: Rect,
    view: &TaskView,
    detail: &TaskDetail,
    now: Timestamp,
    theme: Theme,
) {
    let selected = view.selected().map(|a| a.attempt);
    let rows_fit = usize::from(area.height.saturating_sub(3));
    let cursor = detail
        .attempts
        .iter()
        .position(|a| Some(a.attempt) == selected)
        .unwrap_or(0);
    let offset = (cursor + 1).saturating_sub(rows_fit);
    let mut rows: Vec<Row> = detail
        .attempts
        .iter()
        .skip(offset)
        .take(rows_fit.max(1))
        .map(|a| attempt_row(a, Some(a.attempt) == selected, now, theme))
        .collect();
    if rows.is_empty() {
        rows.push(Row::new(vec![Cell::from(""), Cell::from("not run yet")]));
    }
    let following = if view.follows_latest() {
        "· the latest is followed "
    } else {
        ""
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(3),
            Constraint::Length(13),
            Constraint::Length(13),
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new(vec![
            "", "#", "Reason", "Outcome", "Exit", "Worker", "Start", "Duration", "Cost",
        ])
        .style(theme.header()),
    )
    .block(block(
        format!(" Attempts ({}) {following}", detail.attempts.len()),
        theme,
        Borders::ALL,
        Emphasis::Focused,
    ));
    frame.render_widget(table, area);
}

fn attempt_row(a: &AttemptRecord, selected: bool, now: Timestamp, theme: Theme) -> Row<'_> {
    let (outcome, style) = match (a.outcome, a.finished_at) {
        (Some(o), _) => {
            let style = match o {
                br_core::OutcomeKind::Succeeded => theme.good(),
                br_core::OutcomeKind::RateLimited | br_core::OutcomeKind::Interrupted => {
                    theme.warn()
                }
                _ => theme.bad(),
            };
            (o.as_str().to_string(), style)
        }
        (None, None) => ("running".to_string(), theme.busy()),
        (None, Some(_)) => ("ended".to_string(), Style::new()),
    };
    let duration = match a.finished_at {
        Some(end) => short_duration(end.since(a.started_at)),
        None => short_duration(now.since(a.started_at)),
    };
    let row = Row::new(vec![
        Cell::from(if selected { "▶" } else { " " }),
        Cell::from(a.attempt.0.to_string()),
        Cell::from(a.reason.map_or("", |r| r.as_str())),
        Cell::from(Span::styled(outcome, style)),
        Cell::from(a.exit_code.map(|c| c.to_string()).unwrap_or_default()),
        Cell::from(short_id(a.worker_id.as_str()).to_string()),
        Cell::from(hms(a.started_at)),
        Cell::from(duration),
        Cell::from(if a.usage.is_zero() {
            String::new()
        } else {
            a.usage.cost()
        }),
    ]);
    if selected {
        row.style(theme.cursor(true))
    } else {
        row
    }
}

fn draw_log(frame: &mut Frame, area: Rect, view: &TaskView, theme: Theme) {
    let Some(tail) = view.log() else {
        frame.render_widget(
            Paragraph::new(Line::styled("no attempt has started", theme.label())).block(block(
                " Log ".into(),
                theme,
                Borders::ALL,
                Emphasis::Plain,
            )),
            area,
        );
        return;
    };
    let mode = if tail.is_following() {
        "following".to_string()
    } else {
        format!("{} lines back", tail.scroll())
    };
    let title = format!(" Log of attempt {} · {mode} ", tail.attempt());
    draw_log_lines(frame, area, tail, title, theme);
}
