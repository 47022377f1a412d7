//! Drawing a [`Model`]: the full layout, the compact one that fits 80×24, a minimal one for
//! tiny terminals, the log view and the overlays. Drawing never changes the model and never
//! fails: every size down to 1×1 (and 0×0) gets something sensible.

use std::collections::HashMap;
use std::time::Duration;

use br_core::time::{ago, hms, short_duration};
use br_core::{OutcomeKind, SessionId, TaskState, Timestamp, WorkerStatus};
use br_store::snapshot::{LockRow, SessionRow, Snapshot, TaskRow, Waiting};
use br_store::{Event, Worker};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use crate::follow::LogTail;
use crate::model::{Focus, Mode, Model, Panels};
use crate::theme::Theme;

/// Below this the full layout does not fit and the compact one is used.
const FULL_MIN_WIDTH: u16 = 90;
const FULL_MIN_HEIGHT: u16 = 28;
/// Below this even the compact layout does not fit: a few lines of numbers are shown.
const TINY_WIDTH: u16 = 30;
const TINY_HEIGHT: u16 = 8;

/// `--once` frames stop growing here, so a 10,000-task session does not print 10,000 lines.
const ONCE_MAX_TASKS: usize = 1000;
const ONCE_MAX_EVENTS: usize = 12;

/// Draws the model on the frame.
pub fn view(model: &Model, frame: &mut Frame) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let theme = Theme::new(model.color);
    match model.mode() {
        Mode::Log(tail) => return draw_log(frame, area, tail, model, theme),
        Mode::Task(task) => return crate::task::draw(frame, area, task, model, theme),
        Mode::Diff(diff) => return crate::diff::draw(frame, area, diff, model, theme),
        Mode::Normal | Mode::Help | Mode::Filter | Mode::ConfirmCancel { .. } => {}
    }
    if area.width < TINY_WIDTH || area.height < TINY_HEIGHT {
        draw_tiny(frame, area, &model.snapshot);
    } else if model.compact || area.width < FULL_MIN_WIDTH || area.height < FULL_MIN_HEIGHT {
        draw_compact(frame, area, model, theme);
    } else {
        draw_full(frame, area, model, theme);
    }
    match model.mode() {
        Mode::Help => draw_help(frame, area, theme),
        Mode::ConfirmCancel { name, .. } => draw_confirm(frame, area, name, theme),
        Mode::Normal | Mode::Filter | Mode::Log(_) | Mode::Task(_) | Mode::Diff(_) => {}
    }
}

/// The height at which every row of `snapshot` shows (within the `--once` caps).
pub(crate) fn natural_height(snapshot: &Snapshot, compact: bool) -> u16 {
    let tasks = snapshot
        .selected
        .as_ref()
        .map_or(0, |s| s.tasks.len())
        .clamp(1, ONCE_MAX_TASKS);
    let sessions = snapshot.sessions.len().max(1);
    let workers = snapshot.workers.len().max(1);
    let events = snapshot.events.len().clamp(1, ONCE_MAX_EVENTS);
    let locks = snapshot.locks.len().max(1);
    let stats = stats_lines(snapshot);
    // Every panel open, as a frame printed once shows them.
    let h = if compact {
        // Stats, then each section: title, header, rows; events: title, rows; footer.
        stats + (2 + sessions) + (2 + workers) + (2 + tasks) + (2 + locks) + (1 + events) + 1
    } else {
        (2 + stats) + (3 + sessions) + (3 + workers) + (3 + tasks) + (3 + locks) + (2 + events) + 1
    };
    u16::try_from(h).unwrap_or(u16::MAX).max(FULL_MIN_HEIGHT)
}

/// Splits `area` into rows of the given heights, top to bottom; the last may be cut short.
pub(crate) fn rows_of(area: Rect, heights: &[u16]) -> Vec<Rect> {
    let mut y = area.y;
    let bottom = area.bottom();
    heights
        .iter()
        .map(|&h| {
            let h = h.min(bottom.saturating_sub(y));
            let r = Rect::new(area.x, y, area.width, h);
            y = y.saturating_add(h);
            r
        })
        .collect()
}

/// Shares `total` lines among panels that each want `(min, want, cap)`, giving every panel its
/// minimum, then more in the order `order` lists them, up to what each wants and (when not
/// everything fits) its cap; the flexible panel takes whatever is left. When everything fits,
/// every panel gets what it wants.
pub(crate) fn allot(
    total: u16,
    panels: &[(u16, u16, u16)],
    order: &[usize],
    flex: usize,
) -> Vec<u16> {
    let want_all: u32 = panels.iter().map(|p| u32::from(p.1)).sum();
    let mut heights: Vec<u16> = panels.iter().map(|p| p.0).collect();
    let mins: u16 = heights.iter().fold(0u16, |a, b| a.saturating_add(*b));
    let mut left = total.saturating_sub(mins);
    let fits = want_all <= u32::from(total);
    for &i in order {
        let Some(&(min, want, cap)) = panels.get(i) else {
            continue;
        };
        let goal = if fits { want } else { want.min(cap.max(min)) };
        let more = goal.saturating_sub(min).min(left);
        heights[i] += more;
        left -= more;
    }
    if let Some(h) = heights.get_mut(flex) {
        *h += left;
    }
    heights
}

fn pct_of(total: u16, percent: u16) -> u16 {
    u16::try_from(u32::from(total) * u32::from(percent) / 100).unwrap_or(total)
}

/// Whether `panel` (the workers or the locks) shows all its rows: when it has the keyboard,
/// or in a frame printed once; else it takes one line, and the task list the height.
fn is_open(model: &Model, panel: Focus) -> bool {
    model.panels == Panels::Expanded || model.focus() == panel
}

/// The order in which the panels (statistics, sessions, workers, tasks, locks, events) get more
/// than their minimum: live, the workers and locks first (one line each unless the user opened
/// one), sessions (up to their cap), then the tasks before the events; in a frame printed once,
/// the tasks before the workers and locks.
fn priority(model: &Model) -> [usize; 6] {
    match model.panels {
        Panels::Collapsible => [0, 2, 4, 1, 3, 5],
        Panels::Expanded => [0, 1, 3, 2, 4, 5],
    }
}

fn draw_full(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) {
    let snap = &model.snapshot;
    let tasks_visible = model.visible_tasks();
    let body = area.height.saturating_sub(1);
    let n = |len: usize| u16::try_from(len).unwrap_or(u16::MAX);
    let stats = n(stats_lines(snap)).saturating_add(2);
    let workers_open = is_open(model, Focus::Workers);
    let locks_open = is_open(model, Focus::Locks);
    let heights = allot(
        body,
        &[
            (stats, stats, stats),
            (
                4,
                n(snap.sessions.len().max(1)).saturating_add(3),
                pct_of(body, 28),
            ),
            if workers_open {
                (
                    4,
                    n(snap.workers.len().max(1)).saturating_add(3),
                    pct_of(body, 25),
                )
            } else {
                (1, 1, 1)
            },
            (5, n(tasks_visible.len().max(1)).saturating_add(3), u16::MAX),
            if locks_open {
                (
                    4,
                    n(snap.locks.len().max(1)).saturating_add(3),
                    pct_of(body, 25),
                )
            } else {
                (1, 1, 1)
            },
            (
                1,
                n(snap.events.len().clamp(1, ONCE_MAX_EVENTS)).saturating_add(2),
                8,
            ),
        ],
        &priority(model),
        3,
    );
    let mut all = heights.clone();
    all.push(1);
    let r = rows_of(area, &all);
    draw_stats(frame, r[0], snap, theme, Borders::ALL);
    draw_sessions(frame, r[1], model, theme, false);
    if workers_open {
        draw_workers(frame, r[2], model, theme, false);
    } else {
        draw_workers_line(frame, r[2], snap, theme);
    }
    draw_tasks(frame, r[3], model, &tasks_visible, theme, false);
    if locks_open {
        draw_locks(frame, r[4], model, theme, Borders::ALL);
    } else {
        draw_locks_line(frame, r[4], snap, theme);
    }
    draw_events(frame, r[5], snap, theme, Borders::ALL);
    draw_footer(frame, r[6], model, theme);
}

fn draw_compact(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) {
    let snap = &model.snapshot;
    let tasks_visible = model.visible_tasks();
    let body = area.height.saturating_sub(1);
    let n = |len: usize| u16::try_from(len).unwrap_or(u16::MAX);
    let stats = n(stats_lines(snap));
    let workers_open = is_open(model, Focus::Workers);
    let locks_open = is_open(model, Focus::Locks);
    let open = |rows: usize| (3, n(rows.max(1)).saturating_add(2), 5);
    let heights = allot(
        body,
        &[
            (stats, stats, stats),
            open(snap.sessions.len()),
            if workers_open {
                open(snap.workers.len())
            } else {
                (1, 1, 1)
            },
            (3, n(tasks_visible.len().max(1)).saturating_add(2), u16::MAX),
            if locks_open {
                open(snap.locks.len())
            } else {
                (1, 1, 1)
            },
            (
                1,
                n(snap.events.len().clamp(1, ONCE_MAX_EVENTS)).saturating_add(1),
                3,
            ),
        ],
        &priority(model),
        3,
    );
    let mut all = heights.clone();
    all.push(1);
    let r = rows_of(area, &all);
    draw_stats(frame, r[0], snap, theme, Borders::NONE);
    draw_sessions(frame, r[1], model, theme, true);
    if workers_open {
        draw_workers(frame, r[2], model, theme, true);
    } else {
        draw_workers_line(frame, r[2], snap, theme);
    }
    draw_tasks(frame, r[3], model, &tasks_visible, theme, true);
    if locks_open {
        draw_locks(frame, r[4], model, theme, Borders::TOP);
    } else {
        draw_locks_line(frame, r[4], snap, theme);
    }
    draw_events(frame, r[5], snap, theme, Borders::TOP);
    draw_footer(frame, r[6], model, theme);
}

/// A few lines of numbers for a terminal too small for tables.
fn draw_tiny(frame: &mut Frame, area: Rect, snap: &Snapshot) {
    let s = &snap.summary;
    let mut lines = vec![
        Line::raw(format!(
            "br {}/{} busy",
            s.workers.busy,
            s.workers.idle + s.workers.busy
        )),
        Line::raw(format!(
            "{} done {} run {} fail",
            s.tasks.completed, s.tasks.running, s.tasks.failed
        )),
    ];
    for row in &snap.sessions {
        lines.push(Line::raw(format!(
            "{} {:.0}% {}",
            row.session.name, row.session.progress_percent, row.session.status
        )));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// Whether a panel has the keyboard (or is a dialog that does): its border stands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Emphasis {
    Focused,
    Plain,
}

impl Emphasis {
    fn of(focused: bool) -> Emphasis {
        if focused {
            Emphasis::Focused
        } else {
            Emphasis::Plain
        }
    }
}

pub(crate) fn block<'a>(
    title: String,
    theme: Theme,
    borders: Borders,
    emphasis: Emphasis,
) -> Block<'a> {
    Block::new()
        .borders(borders)
        .border_style(theme.border(emphasis == Emphasis::Focused))
        .title(Span::styled(title, theme.title()))
}

fn draw_stats(frame: &mut Frame, area: Rect, snap: &Snapshot, theme: Theme, borders: Borders) {
    let compact = borders == Borders::NONE;
    let s = &snap.summary;
    let label = |t: &'static str| Span::styled(t, theme.label());
    let num = |v: u32, style: Style| Span::styled(v.to_string(), style);
    let alarm = |v: u32| if v > 0 { theme.bad() } else { Style::new() };
    let first = vec![
        label("Workers "),
        Span::raw(format!("{}: ", s.workers.total)),
        num(s.workers.busy, theme.busy()),
        Span::raw(" busy · "),
        num(s.workers.idle, Style::new()),
        Span::raw(" idle · "),
        num(s.workers.offline, alarm(s.workers.offline)),
        Span::raw(" offline · "),
        Span::raw(format!("util {:.0}%", s.workers.utilization * 100.0)),
        label("  Sessions "),
        Span::raw(format!("{}/{} active", s.sessions.active, s.sessions.total)),
        label(if compact { "  " } else { "  Throughput " }),
        Span::raw(format!("{:.1}/min", snap.throughput.per_minute)),
    ];
    // The selected session's tasks, not the store's: what a user watching one run wants to
    // count (the sessions panel has the others).
    let (queued, running, done, failed, skipped) = match snap.selected_session() {
        Some(row) => {
            let x = &row.session;
            (
                x.total_tasks
                    .saturating_sub(x.finished_tasks())
                    .saturating_sub(x.running_tasks),
                x.running_tasks,
                x.succeeded_tasks,
                x.failed_tasks,
                x.skipped_tasks,
            )
        }
        None => (
            s.tasks.queued,
            s.tasks.running,
            s.tasks.completed,
            s.tasks.failed,
            0,
        ),
    };
    let mut second = vec![
        label("Tasks "),
        num(queued, Style::new()),
        Span::raw(" queued · "),
        num(running, theme.busy()),
        Span::raw(" running · "),
        num(done, theme.good()),
        Span::raw(" done · "),
        num(failed, alarm(failed)),
        Span::raw(" failed"),
    ];
    if skipped > 0 {
        second.push(Span::raw(" · "));
        second.push(num(skipped, alarm(skipped)));
        second.push(Span::raw(" skipped"));
    }
    if let Some(row) = snap.selected_session() {
        second.push(Span::raw("  "));
        second.push(Span::styled(row.session.name.clone(), theme.title()));
        second.push(Span::raw(" "));
        let elapsed = if compact { "" } else { " elapsed" };
        second.push(Span::raw(match row.elapsed_ms {
            Some(ms) => format!("{}{elapsed}", short_duration(Duration::from_millis(ms))),
            None => "not started".to_string(),
        }));
        match (row.remaining_ms, row.session.status.is_terminal()) {
            (_, true) => {}
            (Some(ms), false) => second.push(Span::raw(format!(
                " · ~{} left",
                short_duration(Duration::from_millis(ms))
            ))),
            (None, false) => second.push(Span::raw(" · time left unknown")),
        }
    }
    let mut lines = vec![Line::from(first), Line::from(second)];
    if let Some(row) = snap.selected_session()
        && let Some(spent) = row.session.spent_words()
    {
        lines.push(Line::from(vec![
            Span::styled(row.session.name.clone(), theme.title()),
            Span::raw(format!(" {spent}")),
        ]));
    }
    if !snap.pools.is_empty() {
        lines.push(pools_line(snap, theme));
    }
    let text = if borders == Borders::NONE {
        Paragraph::new(lines)
    } else {
        let title = format!(" br · {} UTC ", hms(snap.now));
        Paragraph::new(lines).block(block(title, theme, borders, Emphasis::Plain))
    };
    frame.render_widget(text, area);
}

/// How many lines the statistics take: workers and tasks, then what the selected session spent
/// (when its attempts reported usage) and the pools (when the store has any).
fn stats_lines(snap: &Snapshot) -> usize {
    let spent = snap
        .selected_session()
        .is_some_and(|r| r.session.spent_words().is_some());
    2 + usize::from(spent) + usize::from(!snap.pools.is_empty())
}

/// Every pool on one line — a store has a handful — with its running tasks out of its size and
/// a parked one's park, which stands out; then what each parked pool's rate limit said, last, so
/// that a narrow terminal cuts those words (an agent's output line, of any length) first.
fn pools_line(snap: &Snapshot, theme: Theme) -> Line<'static> {
    let mut spans = vec![Span::styled("Pools ", theme.label())];
    for (i, row) in snap.pools.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" · "));
        }
        let pool = &row.pool;
        spans.push(Span::styled(pool.name.clone(), theme.title()));
        spans.push(Span::raw(format!(" {}", pool.running_words())));
        if let Some(parked) = &row.parked_text {
            spans.push(Span::styled(format!(", {parked}"), theme.warn()));
        }
    }
    for row in snap.pools.iter().filter(|p| p.parked()) {
        if let Some(reason) = &row.pool.parked_reason {
            spans.push(Span::styled(
                format!(" — {}: {reason}", row.pool.name),
                theme.label(),
            ));
        }
    }
    Line::from(spans)
}

/// How many rows of a table with `header_lines` and a block fit in `area`.
fn body_rows(area: Rect, chrome: u16) -> usize {
    usize::from(area.height.saturating_sub(chrome))
}

/// The first row to show so that `cursor` is on screen.
fn scroll_offset(cursor: usize, rows: usize) -> usize {
    if rows == 0 {
        return cursor;
    }
    (cursor + 1).saturating_sub(rows)
}

fn progress_bar(percent: f64, width: usize) -> String {
    let filled = ((percent / 100.0) * width as f64)
        .round()
        .clamp(0.0, width as f64) as usize;
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn draw_sessions(frame: &mut Frame, area: Rect, model: &Model, theme: Theme, compact: bool) {
    let snap = &model.snapshot;
    let focused = model.focus() == Focus::Sessions;
    let chrome = if compact { 2 } else { 3 };
    let rows_fit = body_rows(area, chrome);
    let cursor = model.session_index();
    let offset = scroll_offset(cursor.unwrap_or(0), rows_fit);
    let wide = area.width >= 120 && !compact;
    let bar = if compact { 10 } else { 14 };
    let rows: Vec<Row> = snap
        .sessions
        .iter()
        .enumerate()
        .skip(offset)
        .take(rows_fit)
        .map(|(i, row)| session_row(row, Some(i) == cursor, focused, theme, bar, wide))
        .collect();
    let empty = rows.is_empty();
    let mut widths = vec![
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(u16::try_from(bar).unwrap_or(10) + 7),
        Constraint::Length(12),
        Constraint::Length(3),
    ];
    let mut header = vec!["", "Session", "State", "Progress", "Done", "Wk"];
    if !compact {
        widths.push(Constraint::Length(7));
        header.push("Elapsed");
    }
    if wide {
        widths.push(Constraint::Length(12));
        header.push("Id");
    }
    let total = snap.sessions.len();
    let title = if total > rows_fit && rows_fit > 0 {
        format!(
            " Sessions ({}–{} of {total}) ",
            offset + 1,
            (offset + rows_fit).min(total)
        )
    } else {
        format!(" Sessions ({total}) ")
    };
    let borders = if compact { Borders::TOP } else { Borders::ALL };
    let mut rows = rows;
    if empty {
        rows.push(Row::new(vec![
            Cell::from(""),
            Cell::from("no sessions yet"),
        ]));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header()))
        .block(block(title, theme, borders, Emphasis::of(focused)));
    frame.render_widget(table, area);
}

fn session_row<'a>(
    row: &'a SessionRow,
    selected: bool,
    focused: bool,
    theme: Theme,
    bar: usize,
    wide: bool,
) -> Row<'a> {
    let s = &row.session;
    let style = theme.session(s.status);
    let bad = s.failed_tasks + s.skipped_tasks;
    let mut done = vec![Span::raw(format!(
        "{}/{}",
        s.finished_tasks(),
        s.total_tasks
    ))];
    if bad > 0 {
        done.push(Span::styled(format!(" ✗{bad}"), theme.bad()));
    }
    let mut cells = vec![
        Cell::from(if selected { "▶" } else { " " }),
        Cell::from(s.name.as_str()),
        Cell::from(Span::styled(s.status.as_str(), style)),
        Cell::from(Line::from(vec![
            Span::styled(progress_bar(s.progress_percent, bar), style),
            Span::raw(format!(" {:>5.1}%", s.progress_percent)),
        ])),
        Cell::from(Line::from(done)),
        Cell::from(row.workers.to_string()),
        Cell::from(
            row.elapsed_ms
                .map(|ms| short_duration(Duration::from_millis(ms)))
                .unwrap_or_default(),
        ),
    ];
    if wide {
        cells.push(Cell::from(s.id.as_str()));
    }
    let r = Row::new(cells);
    if selected {
        r.style(theme.cursor(focused))
    } else {
        r
    }
}

/// The workers, offline ones first: they are what needs attention.
fn workers_in_order(snap: &Snapshot) -> Vec<&Worker> {
    let mut workers: Vec<&Worker> = snap.workers.iter().collect();
    workers.sort_by_key(|w| w.status != WorkerStatus::Offline);
    workers
}

/// The workers in one line, for when the panel is closed: how many and in what state, then
/// each one's task while the width lasts.
fn draw_workers_line(frame: &mut Frame, area: Rect, snap: &Snapshot, theme: Theme) {
    let workers = workers_in_order(snap);
    let count = |status: WorkerStatus| workers.iter().filter(|w| w.status == status).count();
    let (busy, idle, offline) = (
        count(WorkerStatus::Busy),
        count(WorkerStatus::Idle),
        count(WorkerStatus::Offline),
    );
    let mut spans = vec![
        Span::styled("▸ Workers ", theme.title()),
        Span::raw(format!("{} ({busy} busy, {idle} idle", workers.len())),
    ];
    if offline > 0 {
        spans.push(Span::raw(", "));
        spans.push(Span::styled(format!("{offline} OFFLINE"), theme.bad()));
    }
    spans.push(Span::raw(")"));
    for w in workers.iter().filter(|w| w.status != WorkerStatus::Stopped) {
        let what = match (&w.current_task, w.status) {
            (_, WorkerStatus::Offline) => "OFFLINE".to_string(),
            (Some(t), _) => t.to_string(),
            (None, _) => w.status.as_str().to_string(),
        };
        spans.push(Span::styled(" · ", theme.label()));
        spans.push(Span::styled(
            format!("{} {what}", short_id(w.id.as_str())),
            theme.worker(w.status),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_workers(frame: &mut Frame, area: Rect, model: &Model, theme: Theme, compact: bool) {
    let snap = &model.snapshot;
    let focused = model.focus() == Focus::Workers;
    let chrome = if compact { 2 } else { 3 };
    let rows_fit = body_rows(area, chrome);
    let workers = workers_in_order(snap);
    let total = workers.len();
    let offline = workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Offline)
        .count();
    let offset = model.worker_offset().min(total.saturating_sub(rows_fit));
    let mut rows: Vec<Row> = workers
        .iter()
        .skip(offset)
        .take(rows_fit)
        .map(|w| worker_row(w, snap.now, theme, compact))
        .collect();
    if rows.is_empty() {
        rows.push(Row::new(vec![Cell::from("no workers")]));
    }
    let (widths, header) = if compact {
        (
            vec![
                Constraint::Length(13),
                Constraint::Length(7),
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(9),
            ],
            vec!["Worker", "State", "Task", "Elapsed", "Ok/Fail", "Heartbeat"],
        )
    } else {
        (
            vec![
                Constraint::Length(13),
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Fill(2),
                Constraint::Length(7),
                Constraint::Length(5),
                Constraint::Length(5),
                Constraint::Length(9),
            ],
            vec![
                "Worker",
                "Host",
                "State",
                "Task",
                "Elapsed",
                "Done",
                "Fail",
                "Heartbeat",
            ],
        )
    };
    let mut count = if total > rows_fit && rows_fit > 0 {
        format!(
            "{}–{} of {total}",
            offset + 1,
            (offset + rows_fit).min(total)
        )
    } else {
        total.to_string()
    };
    if offline > 0 {
        count.push_str(&format!(", {offline} OFFLINE"));
    }
    let title = format!(" Workers ({count}) ");
    let borders = if compact { Borders::TOP } else { Borders::ALL };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header()))
        .block(block(title, theme, borders, Emphasis::of(focused)));
    frame.render_widget(table, area);
}

fn worker_row<'a>(w: &'a Worker, now: Timestamp, theme: Theme, compact: bool) -> Row<'a> {
    let state = if w.status == WorkerStatus::Offline {
        "OFFLINE".to_string()
    } else {
        w.status.as_str().to_string()
    };
    let task = match (&w.current_task, w.attempt) {
        (Some(t), Some(a)) if a.0 > 1 => format!("{t} #{a}"),
        (Some(t), _) => t.to_string(),
        (None, _) => String::new(),
    };
    // An offline worker's task has been (or is about to be) taken back: its clock stopped.
    let elapsed = match (w.status, &w.current_task, w.task_started_at) {
        (WorkerStatus::Busy, Some(_), Some(at)) => short_duration(now.since(at)),
        _ => String::new(),
    };
    let heartbeat = ago(now.since(w.last_heartbeat));
    let style = theme.worker(w.status);
    let cells = if compact {
        vec![
            Cell::from(w.id.as_str()),
            Cell::from(state),
            Cell::from(task),
            Cell::from(elapsed),
            Cell::from(format!("{}/{}", w.tasks_completed, w.tasks_failed)),
            Cell::from(heartbeat),
        ]
    } else {
        vec![
            Cell::from(w.id.as_str()),
            Cell::from(w.host.as_str()),
            Cell::from(state),
            Cell::from(task),
            Cell::from(elapsed),
            Cell::from(w.tasks_completed.to_string()),
            Cell::from(w.tasks_failed.to_string()),
            Cell::from(heartbeat),
        ]
    };
    let row = Row::new(cells);
    if w.status == WorkerStatus::Offline {
        row.style(style)
    } else {
        row
    }
}

fn draw_tasks(
    frame: &mut Frame,
    area: Rect,
    model: &Model,
    visible: &[&TaskRow],
    theme: Theme,
    compact: bool,
) {
    let snap = &model.snapshot;
    let focused = model.focus() == Focus::Tasks;
    let chrome = if compact { 2 } else { 3 };
    let rows_fit = body_rows(area, chrome);
    let cursor = model.task_index(visible);
    let offset = scroll_offset(cursor, rows_fit);
    let names = session_names(snap);
    let selected = snap.selected.as_ref();
    let lands = selected.is_some_and(|s| s.lands);
    // The landing column takes the room the branches would have below 170 columns: where a
    // task's work went matters more than the branch it was made on.
    let branches = !compact && area.width >= if lands { 170 } else { 150 };
    let mut widths = vec![
        Constraint::Length(1),
        Constraint::Fill(2),
        Constraint::Length(9),
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let mut header = vec!["", "Task", "State", "Try", "Worker", "Elapsed"];
    // What each task's attempts spent, once any of the session's reported usage.
    let cost = snap
        .selected_session()
        .is_some_and(|r| !r.session.usage.is_zero());
    if cost {
        widths.push(Constraint::Length(8));
        header.push("Cost");
    }
    // Where each task's work is, when the session integrates as it runs; the compact layout
    // says it in the note instead.
    let landing_column = lands && !compact;
    if landing_column {
        widths.push(Constraint::Length(20));
        header.push("Landing");
    }
    if !compact {
        widths.push(Constraint::Fill(2));
        header.push("Files");
    }
    if branches {
        widths.push(Constraint::Fill(3));
        header.push("Branch");
    }
    widths.push(Constraint::Fill(if compact { 3 } else { 4 }));
    header.push("Waiting for / result");
    let columns = TaskColumns {
        cost,
        landing: if !lands {
            LandingColumn::None
        } else if compact {
            LandingColumn::InNote
        } else {
            LandingColumn::Own
        },
        files: !compact,
        branch: branches,
    };
    let rows: Vec<Row> = visible
        .iter()
        .enumerate()
        .skip(offset)
        .take(rows_fit)
        .map(|(i, t)| {
            let landing = selected.and_then(|s| s.landing_words(&t.task));
            let place = TaskPlace {
                selected: i == cursor,
                focused,
                landing,
            };
            task_row(t, snap.now, &names, &place, theme, columns)
        })
        .collect();
    let empty = rows.is_empty();
    let session = snap
        .selected_session()
        .map_or_else(|| "no session".to_string(), |s| s.session.name.clone());
    let all = snap.selected.as_ref().map_or(0, |s| s.tasks.len());
    let mut title = format!(" Tasks of {session} ");
    if let Some(row) = snap.selected_session()
        && lands
    {
        let s = &row.session;
        let tip = s
            .integration_commit
            .as_deref()
            .map(|c| format!(" at {}", &c[..c.len().min(7)]))
            .unwrap_or_default();
        title.push_str(&format!(
            "· landed {}/{} on br/{}/integration{tip} ",
            s.landed_tasks, s.total_tasks, s.slug
        ));
    } else if !branches
        && let Some(row) = snap.selected_session()
        && row.session.isolation == br_core::Isolation::Worktree
    {
        title.push_str(&format!("· branches br/{}/<task> ", row.session.slug));
    }
    if !model.filter().is_empty() {
        title.push_str(&format!(
            "[/{}: {} of {all}] ",
            model.filter(),
            visible.len()
        ));
    } else if visible.len() > rows_fit && rows_fit > 0 {
        title.push_str(&format!(
            "({}–{} of {all}) ",
            offset + 1,
            (offset + rows_fit).min(visible.len())
        ));
    } else {
        title.push_str(&format!("({all}) "));
    }
    let mut rows = rows;
    if empty {
        let why = if all > 0 {
            "no task matches the filter"
        } else {
            "no tasks"
        };
        rows.push(Row::new(vec![Cell::from(""), Cell::from(why)]));
    }
    let borders = if compact { Borders::TOP } else { Borders::ALL };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header()))
        .block(block(title, theme, borders, Emphasis::of(focused)));
    frame.render_widget(table, area);
}

/// The optional columns of the tasks table: what tasks spent, when any did, and those only
/// wide layouts have room for.
#[derive(Debug, Clone, Copy)]
struct TaskColumns {
    cost: bool,
    landing: LandingColumn,
    files: bool,
    branch: bool,
}

/// Where a task's landing shows, in a session that integrates as it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LandingColumn {
    None,
    Own,
    InNote,
}

/// A task row's place in the table: under the cursor, in the focused panel, and where its work
/// is ([`SelectedSession::landing_words`](br_store::snapshot::SelectedSession::landing_words)).
struct TaskPlace {
    selected: bool,
    focused: bool,
    landing: Option<String>,
}

fn task_row<'a>(
    t: &'a TaskRow,
    now: Timestamp,
    names: &HashMap<&SessionId, &str>,
    place: &TaskPlace,
    theme: Theme,
    columns: TaskColumns,
) -> Row<'a> {
    let (selected, focused) = (place.selected, place.focused);
    let task = &t.task;
    let blocked = t.waiting_for.is_some() && task.state == TaskState::Ready;
    let state = match &t.waiting_for {
        Some(Waiting::Pool {
            parked_until: Some(_),
            ..
        }) if blocked => "parked",
        _ if blocked => "blocked",
        _ => task.state.as_str(),
    };
    let elapsed = match (task.state, task.started_at, task.finished_at) {
        (TaskState::Running, Some(start), _) => short_duration(now.since(start)),
        (s, Some(start), Some(end)) if s.is_terminal() => short_duration(end.since(start)),
        _ => String::new(),
    };
    let worker = match task.state {
        TaskState::Pending | TaskState::Ready => "",
        _ => task.worker_id.as_ref().map_or("", |w| short_id(w.as_str())),
    };
    let mut note = task_note(t, names);
    let landing = place.landing.clone().unwrap_or_default();
    let landing_style = if landing.starts_with("landed") {
        theme.good()
    } else if landing.starts_with("not") {
        theme.bad()
    } else {
        theme.busy()
    };
    if columns.landing == LandingColumn::InNote && !landing.is_empty() {
        note = if note.is_empty() {
            landing.clone()
        } else {
            format!("{landing}; {note}")
        };
    }
    let note_style = match (&t.waiting_for, task.state) {
        (Some(Waiting::Lock { .. } | Waiting::Pool { .. }), _) => theme.warn(),
        (_, TaskState::Failed) => theme.bad(),
        _ if !task.conflicts.is_empty() || !task.scope_violations.is_empty() => theme.warn(),
        _ => Style::new(),
    };
    let mut cells = vec![
        Cell::from(if selected { "▶" } else { " " }),
        Cell::from(task.id.as_str()),
        Cell::from(Span::styled(state, theme.task(task.state, blocked))),
        Cell::from(if task.attempts > 0 {
            task.attempts.to_string()
        } else {
            String::new()
        }),
        Cell::from(worker),
        Cell::from(elapsed),
    ];
    if columns.cost {
        cells.push(Cell::from(if task.usage.is_zero() {
            String::new()
        } else {
            task.usage.cost()
        }));
    }
    if columns.landing == LandingColumn::Own {
        cells.push(Cell::from(Span::styled(landing, landing_style)));
    }
    if columns.files {
        cells.push(Cell::from(task.files.join(" ")));
    }
    if columns.branch {
        cells.push(Cell::from(task.branch.clone().unwrap_or_default()));
    }
    cells.push(Cell::from(Span::styled(note, note_style)));
    let row = Row::new(cells);
    if selected {
        row.style(theme.cursor(focused))
    } else {
        row
    }
}

/// What a task waits for, or how it ended when that needs saying.
fn task_note(t: &TaskRow, names: &HashMap<&SessionId, &str>) -> String {
    match &t.waiting_for {
        Some(Waiting::Dependencies { tasks }) => format!("after {}", tasks.join(", ")),
        // The task's own paths are in the Files column; what matters here is who holds them.
        Some(Waiting::Lock { held_by, .. }) => {
            let holders: Vec<String> = held_by
                .iter()
                .map(|h| {
                    let who = match &h.task_id {
                        Some(task) => task.to_string(),
                        None => format!(
                            "session {} (br lock)",
                            names
                                .get(&h.session_id)
                                .copied()
                                .unwrap_or(h.session_id.as_str())
                        ),
                    };
                    match &h.worker_id {
                        Some(w) => format!("{} held by {who} on {}", h.path, short_id(w.as_str())),
                        None => format!("{} held by {who}", h.path),
                    }
                })
                .collect();
            format!("lock {}", holders.join("; "))
        }
        // In the snapshot's words, which the web page shows too.
        Some(Waiting::Pool { text, .. }) => text.clone(),
        None => match (t.task.state, t.task.outcome, t.task.exit_code) {
            (TaskState::Failed, Some(OutcomeKind::Failed), Some(code)) => format!("exit {code}"),
            (TaskState::Failed, Some(outcome), _) => outcome.words(),
            (TaskState::Skipped, _, _) => "a dependency failed".to_string(),
            (TaskState::Ready, Some(outcome), _) if t.task.attempts > 0 => {
                format!("retry after {}", outcome.words())
            }
            (TaskState::Ready, _, _) => "waiting for a worker".to_string(),
            _ => finished_note(&t.task),
        },
    }
}

fn finished_note(task: &br_store::Task) -> String {
    task.merge_notes().join("; ")
}

fn session_names(snap: &Snapshot) -> HashMap<&SessionId, &str> {
    snap.sessions
        .iter()
        .map(|s| (&s.session.id, s.session.name.as_str()))
        .collect()
}

/// The locks in one line, for when the panel is closed: how many and who holds them, then each
/// path while the width lasts.
fn draw_locks_line(frame: &mut Frame, area: Rect, snap: &Snapshot, theme: Theme) {
    let names = session_names(snap);
    let mut holders: Vec<String> = Vec::new();
    for l in &snap.locks {
        let who = lock_holder(l, &names);
        if !holders.contains(&who) {
            holders.push(who);
        }
    }
    let mut spans = vec![Span::styled("▸ Locks ", theme.title())];
    if snap.locks.is_empty() {
        spans.push(Span::raw("none held"));
    } else {
        let tasks = snap.locks.iter().all(|l| l.lock.task_id.is_some());
        let by = match (holders.len(), tasks) {
            (1, true) => "1 task".to_string(),
            (n, true) => format!("{n} tasks"),
            (1, false) => "1 holder".to_string(),
            (n, false) => format!("{n} holders"),
        };
        spans.push(Span::raw(format!("{} held by {by}", snap.locks.len())));
        for l in &snap.locks {
            spans.push(Span::styled(" · ", theme.label()));
            let task = l
                .lock
                .task_id
                .as_ref()
                .map_or_else(|| lock_holder(l, &names), ToString::to_string);
            spans.push(Span::raw(format!("{} ({task})", l.lock.path)));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Who holds a lock: its task (and the task's session, in words), or a session's `br lock`.
fn lock_holder(l: &LockRow, names: &HashMap<&SessionId, &str>) -> String {
    let session = names
        .get(&l.lock.session_id)
        .copied()
        .unwrap_or(l.lock.session_id.as_str());
    match &l.lock.task_id {
        Some(t) => format!("{session}/{t}"),
        None => format!("{session} (br lock)"),
    }
}

fn draw_locks(frame: &mut Frame, area: Rect, model: &Model, theme: Theme, borders: Borders) {
    let snap = &model.snapshot;
    let focused = model.focus() == Focus::Locks;
    let names = session_names(snap);
    let chrome = if borders == Borders::ALL { 3 } else { 2 };
    let rows_fit = body_rows(area, chrome);
    let total = snap.locks.len();
    let offset = model.lock_offset().min(total.saturating_sub(rows_fit));
    let mut rows: Vec<Row> = snap
        .locks
        .iter()
        .skip(offset)
        .take(rows_fit)
        .map(|l| lock_row(l, snap.now, &names))
        .collect();
    if rows.is_empty() {
        rows.push(Row::new(vec![Cell::from("none held")]));
    }
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(vec!["Path", "Held by", "Since"]).style(theme.header()))
    .block(block(
        if total > rows_fit && rows_fit > 0 {
            format!(
                " Locks ({}–{} of {total}) ",
                offset + 1,
                (offset + rows_fit).min(total)
            )
        } else {
            format!(" Locks ({total}) ")
        },
        theme,
        borders,
        Emphasis::of(focused),
    ));
    frame.render_widget(table, area);
}

fn lock_row<'a>(l: &'a LockRow, now: Timestamp, names: &HashMap<&SessionId, &str>) -> Row<'a> {
    let session = names
        .get(&l.lock.session_id)
        .copied()
        .unwrap_or(l.lock.session_id.as_str());
    let holder = match (&l.lock.task_id, &l.worker_id) {
        (Some(t), Some(w)) => format!("{t} on {}", short_id(w.as_str())),
        (Some(t), None) => t.to_string(),
        (None, _) => format!("{session} (br lock)"),
    };
    Row::new(vec![
        Cell::from(l.lock.path.as_str()),
        Cell::from(holder),
        Cell::from(ago(now.since(l.lock.acquired_at))),
    ])
}

fn draw_events(frame: &mut Frame, area: Rect, snap: &Snapshot, theme: Theme, borders: Borders) {
    let names = session_names(snap);
    let chrome = if borders == Borders::ALL { 2 } else { 1 };
    // Too short for its frame (the tasks took the height): the latest events alone.
    let framed = area.height > chrome;
    let fit = usize::from(if framed {
        area.height - chrome
    } else {
        area.height
    });
    let start = snap.events.len().saturating_sub(fit);
    let mut lines: Vec<Line> = snap.events[start..]
        .iter()
        .map(|e| event_line(e, &names, theme))
        .collect();
    if lines.is_empty() {
        lines.push(Line::styled("nothing notable yet", theme.label()));
    }
    let p = Paragraph::new(lines);
    let p = if framed {
        p.block(block(
            " Recent events ".to_string(),
            theme,
            borders,
            Emphasis::Plain,
        ))
    } else {
        p
    };
    frame.render_widget(p, area);
}

fn event_line<'a>(e: &'a Event, names: &HashMap<&SessionId, &str>, theme: Theme) -> Line<'a> {
    use br_core::EventKind::*;
    let style = match e.kind {
        TaskFailed | SessionFailed | WorkerOffline | StaleResultRejected | MergeConflict
        | ScopeViolation => theme.bad(),
        TaskRequeued | LockConflict | SessionPaused | SessionCancelled | PoolParked => theme.warn(),
        SessionCompleted => theme.good(),
        _ => Style::new(),
    };
    let mut subject = String::new();
    if let Some(s) = &e.session_id {
        subject.push_str(names.get(s).copied().unwrap_or(s.as_str()));
    }
    if let Some(t) = &e.task_id {
        subject.push('/');
        subject.push_str(t.as_str());
    }
    if let Some(a) = e.attempt {
        subject.push_str(&format!(" #{a}"));
    }
    if let (Some(w), None) = (&e.worker_id, &e.session_id) {
        subject.push_str(w.as_str());
    }
    Line::from(vec![
        Span::styled(hms(e.at), theme.label()),
        Span::raw(" "),
        Span::styled(e.kind.as_str(), style),
        Span::raw(" "),
        Span::raw(subject),
        Span::raw(event_detail(e)),
    ])
}

/// The event's detail in words ([`br_core::EventDetail::describe`], as progress lines and the
/// web page say it), with a leading separator.
pub(crate) fn event_detail(e: &Event) -> String {
    e.detail
        .describe()
        .map(|d| format!(" — {d}"))
        .unwrap_or_default()
}

fn draw_footer(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) {
    let line = if let Mode::Filter = model.mode() {
        Line::from(vec![
            Span::styled("/", theme.key()),
            Span::raw(format!(" filter tasks: {}▏", model.filter())),
            Span::styled("   Enter keep · Esc clear", theme.label()),
        ])
    } else if let Some(status) = model.status() {
        Line::styled(status.to_string(), theme.warn())
    } else if !model.hints {
        return;
    } else {
        let gap = if area.width >= 90 { "  " } else { " " };
        let mut keys = FOOTER_KEYS.to_vec();
        let width = |keys: &[(&str, &str, u8)]| {
            keys.iter()
                .map(|(key, what, _)| Line::raw(format!("{key} {what}{gap}")).width())
                .sum::<usize>()
        };
        // What does not fit goes, least needed first: the help lists every key.
        while width(&keys) > usize::from(area.width) {
            let Some(least) = keys
                .iter()
                .enumerate()
                .filter(|(_, k)| k.2 > 0)
                .max_by_key(|(_, k)| k.2)
                .map(|(i, _)| i)
            else {
                break;
            };
            keys.remove(least);
        }
        let mut spans = Vec::new();
        for (key, what, _) in keys {
            spans.push(Span::styled(key, theme.key()));
            spans.push(Span::raw(format!(" {what}{gap}")));
        }
        if !model.filter().is_empty() {
            spans.push(Span::styled(
                format!("[filter: {}]", model.filter()),
                theme.warn(),
            ));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The footer's keys: key, what it does, and how readily it is left out when the line is too
/// narrow (0: never; the highest goes first).
const FOOTER_KEYS: [(&str, &str, u8); 12] = [
    ("q", "quit", 0),
    ("?", "help", 0),
    ("↑↓", "select", 5),
    ("Tab", "focus", 1),
    ("Enter", "task", 1),
    ("d", "diff", 3),
    ("o", "log", 4),
    ("p", "pause", 0),
    ("r", "resume", 0),
    ("c", "cancel", 0),
    ("R", "retry", 0),
    ("/", "filter", 0),
];

/// A box of `width`×`height` in the middle of `area`, never larger than it.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move in the focused list"),
    ("PgUp PgDn g G", "page, first, last"),
    ("Tab", "focus sessions, tasks, workers, locks"),
    ("", "  (workers and locks open when focused)"),
    ("← →  h l", "focus sessions / tasks"),
    ("Enter", "tasks: open the task: attempts, landing,"),
    ("", "  prompt, the selected attempt's live log"),
    ("", "  (↑↓ or [ ] attempt, o full log, Esc back)"),
    ("d", "the selected task's diff (in a task: the"),
    ("", "  attempt's) against its start commit"),
    ("o", "tasks: the task's live log, full screen"),
    ("p / r", "pause / resume the selected session"),
    ("c", "cancel the selected session (asks first)"),
    ("R", "retry failed, skipped and cancelled tasks"),
    ("", "  of the session, or the selected one (Tab)"),
    ("/", "filter tasks by id or state; Esc clears"),
    ("?", "this help; any key closes it"),
    ("q  Ctrl-C", "quit"),
];

fn draw_help(frame: &mut Frame, area: Rect, theme: Theme) {
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<15}"), theme.key()),
                Span::raw(*what),
            ])
        })
        .collect();
    let height = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let r = centered(area, 62, height);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines).block(block(
            " Keys ".into(),
            theme,
            Borders::ALL,
            Emphasis::Focused,
        )),
        r,
    );
}

fn draw_confirm(frame: &mut Frame, area: Rect, name: &str, theme: Theme) {
    let text = Text::from(vec![
        Line::from(vec![
            Span::raw("Cancel session "),
            Span::styled(name.to_string(), theme.title()),
            Span::raw("?"),
        ]),
        Line::raw("Waiting tasks are cancelled; running ones are stopped."),
        Line::from(vec![
            Span::styled("y", theme.key()),
            Span::raw(" cancel it   "),
            Span::styled("n", theme.key()),
            Span::raw(" keep it running"),
        ]),
    ]);
    let r = centered(area, 60, 5);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: true }).block(block(
            " Confirm ".into(),
            theme,
            Borders::ALL,
            Emphasis::Focused,
        )),
        r,
    );
}

fn draw_log(frame: &mut Frame, area: Rect, tail: &LogTail, model: &Model, theme: Theme) {
    let session = model
        .snapshot
        .sessions
        .iter()
        .find(|s| &s.session.id == tail.session())
        .map_or(tail.session().as_str(), |s| s.session.name.as_str());
    let mode = if tail.is_following() {
        "following".to_string()
    } else {
        format!("{} lines back", tail.scroll())
    };
    let title = format!(
        " Log of {session}/{} · attempt {} · {mode} ",
        tail.task(),
        tail.attempt()
    );
    let body = area.height.saturating_sub(1);
    let [main, footer] = [
        Rect::new(area.x, area.y, area.width, body),
        Rect::new(area.x, area.y + body, area.width, area.height - body),
    ];
    draw_log_lines(frame, main, tail, title, theme);
    let hints = key_hints(
        &[
            ("Esc/q", "back"),
            ("↑↓ PgUp PgDn", "scroll"),
            ("g", "top"),
            ("G/f", "follow"),
        ],
        theme,
    );
    frame.render_widget(Paragraph::new(hints), footer);
}

/// A log in a frame titled `title`: the lines that fit (the end while following), the line
/// being written, and why the log cannot be read, if it cannot.
pub(crate) fn draw_log_lines(
    frame: &mut Frame,
    area: Rect,
    tail: &LogTail,
    title: String,
    theme: Theme,
) {
    let inner_height = usize::from(area.height.saturating_sub(2));
    let partial = tail.partial().filter(|_| tail.is_following());
    let room = inner_height.saturating_sub(usize::from(partial.is_some()));
    let mut lines: Vec<Line> = tail.visible(room).into_iter().map(Line::raw).collect();
    if let Some(p) = partial {
        lines.push(Line::raw(p));
    }
    if let Some(problem) = tail.problem() {
        lines.push(Line::styled(
            format!("({problem}: {})", tail.path().display()),
            theme.label(),
        ));
    }
    let b = block(title, theme, Borders::ALL, Emphasis::Focused).title_bottom(Span::styled(
        format!(" {} ", tail.path().display()),
        theme.label(),
    ));
    frame.render_widget(Paragraph::new(lines).block(b), area);
}

/// A footer of keys and what they do.
pub(crate) fn key_hints(keys: &[(&str, &str)], theme: Theme) -> Line<'static> {
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(key.to_string(), theme.key()));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// A worker id cut to its first seven characters, like a short git hash: enough to tell the
/// workers of one store apart, and the full id is in the workers table.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..7).unwrap_or(id)
}
