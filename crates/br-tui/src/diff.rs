//! An attempt's diff against the commit it started from, full screen: made once, when opened, by
//! the [`Differ`] the dashboard was given (git is the CLI's to run, not this crate's), then
//! scrolled. Added and removed lines are coloured when colours are on.

use std::sync::Arc;

use br_core::{SessionId, TaskId};
use br_store::Store;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Borders, Paragraph};

use crate::follow::clean_line;
use crate::model::Model;
use crate::task::TaskView;
use crate::theme::Theme;
use crate::view::{Emphasis, block, key_hints};

/// Makes the unified diff of an attempt of a task (`None`: the landed one, else the latest), or
/// says in words why it cannot.
pub type Differ = dyn Fn(&dyn Store, &br_store::Session, &TaskId, Option<u32>) -> Result<Vec<u8>, String>
    + Send
    + Sync;

/// The differ the dashboard was given (a closure has no `Debug` or `Eq` of its own: two
/// sources are the same when they are the same closure).
#[derive(Clone)]
pub struct DiffSource(pub Arc<Differ>);

impl std::fmt::Debug for DiffSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiffSource")
    }
}

impl PartialEq for DiffSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DiffSource {}

/// The diff on screen, and where Esc goes back to.
#[derive(Debug)]
pub struct DiffView {
    session: SessionId,
    task: TaskId,
    /// `None`: the landed attempt, else the latest.
    attempt: Option<u32>,
    /// The diff's lines once made, or why it could not be.
    text: Option<Result<Vec<String>, String>>,
    /// The first line shown.
    scroll: usize,
    /// The task view it was opened from, if any.
    back: Option<Box<TaskView>>,
}

impl DiffView {
    pub fn new(
        session: SessionId,
        task: TaskId,
        attempt: Option<u32>,
        back: Option<Box<TaskView>>,
    ) -> DiffView {
        DiffView {
            session,
            task,
            attempt,
            text: None,
            scroll: 0,
            back,
        }
    }

    pub fn task(&self) -> &TaskId {
        &self.task
    }

    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// The diff's lines, once made.
    pub fn lines(&self) -> Option<&[String]> {
        self.text.as_ref()?.as_ref().ok().map(Vec::as_slice)
    }

    /// Why the diff could not be made.
    pub fn problem(&self) -> Option<&str> {
        self.text.as_ref()?.as_ref().err().map(String::as_str)
    }

    /// Gives up the task view it was opened from.
    pub(crate) fn take_back(&mut self) -> Option<Box<TaskView>> {
        self.back.take()
    }

    pub fn scroll_up(&mut self, n: usize) {
        self.scroll = self.scroll.saturating_sub(n);
    }

    /// Moves down; the drawing keeps the last page on screen.
    pub fn scroll_down(&mut self, n: usize) {
        let last = self.lines().map_or(0, |l| l.len().saturating_sub(1));
        self.scroll = self.scroll.saturating_add(n).min(last);
    }

    /// Makes the diff, the first time. Returns whether anything changed.
    pub fn poll(&mut self, store: &dyn Store, differ: Option<&DiffSource>) -> bool {
        if self.text.is_some() {
            return false;
        }
        let made = match differ {
            None => Err("no diffs here: the dashboard runs outside a repository".to_string()),
            Some(differ) => store
                .session(&self.session)
                .map_err(|e| e.to_string())
                .and_then(|s| (differ.0)(store, &s, &self.task, self.attempt)),
        };
        self.text = Some(made.map(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            let mut lines: Vec<String> = text.lines().map(clean_line).collect();
            if lines.is_empty() {
                lines.push("(no changes)".into());
            }
            lines
        }));
        true
    }
}

pub(crate) fn draw(frame: &mut Frame, area: Rect, diff: &DiffView, model: &Model, theme: Theme) {
    let session = model
        .snapshot
        .sessions
        .iter()
        .find(|s| s.session.id == diff.session)
        .map_or(diff.session.as_str(), |s| s.session.name.as_str());
    let which = match diff.attempt {
        Some(k) => format!("attempt {k}"),
        None => "landed or latest attempt".to_string(),
    };
    let body = area.height.saturating_sub(1);
    let main = Rect::new(area.x, area.y, area.width, body);
    let footer = Rect::new(area.x, area.y + body, area.width, area.height - body);
    let room = usize::from(main.height.saturating_sub(2));
    let (lines, position) = match (&diff.text, diff.lines()) {
        (None, _) => (
            vec![Line::styled("making the diff…", theme.label())],
            String::new(),
        ),
        (_, Some(all)) => {
            // The last page stays full: scrolling past it shows nothing new.
            let first = diff.scroll.min(all.len().saturating_sub(room));
            let shown: Vec<Line> = all
                .iter()
                .skip(first)
                .take(room)
                .map(|l| diff_line(l, theme))
                .collect();
            let position = if all.len() > room {
                format!(
                    "· lines {}–{} of {} ",
                    first + 1,
                    (first + room).min(all.len()),
                    all.len()
                )
            } else {
                String::new()
            };
            (shown, position)
        }
        (Some(_), None) => (
            vec![Line::styled(
                diff.problem().unwrap_or_default().to_string(),
                theme.warn(),
            )],
            String::new(),
        ),
    };
    let title = format!(
        " Diff of {session}/{} · {which} against its start commit {position}",
        diff.task
    );
    frame.render_widget(
        Paragraph::new(lines).block(block(title, theme, Borders::ALL, Emphasis::Focused)),
        main,
    );
    let back = if diff.back.is_some() {
        "back to the task"
    } else {
        "back"
    };
    frame.render_widget(
        Paragraph::new(key_hints(
            &[
                ("Esc/q", back),
                ("↑↓ PgUp PgDn", "scroll"),
                ("g/G", "top/end"),
            ],
            theme,
        )),
        footer,
    );
}

/// A line of a unified diff, coloured by what it is.
fn diff_line(line: &str, theme: Theme) -> Line<'static> {
    let style = if line.starts_with("+++") || line.starts_with("---") {
        theme.title()
    } else if line.starts_with('+') {
        theme.added()
    } else if line.starts_with('-') {
        theme.removed()
    } else if line.starts_with("@@") {
        theme.busy()
    } else if line.starts_with("diff ") || line.starts_with("index ") {
        theme.title()
    } else {
        ratatui::style::Style::new()
    };
    Line::from(Span::styled(line.to_string(), style))
}
