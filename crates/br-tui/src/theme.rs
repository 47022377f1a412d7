//! Styles: one place that decides colours, so `NO_COLOR` (or `--color never`) removes every one
//! of them and leaves only what works without colour (bold, reverse, text).

use br_core::{SessionStatus, TaskState, WorkerStatus};
use ratatui::style::{Color, Modifier, Style};

/// The dashboard's styles, with or without colour.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Theme {
    color: bool,
}

impl Theme {
    pub(crate) fn new(color: bool) -> Theme {
        Theme { color }
    }

    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    pub(crate) fn session(self, s: SessionStatus) -> Style {
        match s {
            SessionStatus::Created => self.fg(Color::Gray),
            SessionStatus::Running => self.fg(Color::Cyan),
            SessionStatus::Paused => self.fg(Color::Yellow),
            SessionStatus::Completed => self.fg(Color::Green),
            SessionStatus::Failed => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            SessionStatus::Cancelled => self.fg(Color::Magenta),
        }
    }

    pub(crate) fn task(self, s: TaskState, blocked: bool) -> Style {
        match s {
            TaskState::Pending => self.fg(Color::DarkGray),
            TaskState::Ready if blocked => self.fg(Color::Yellow),
            TaskState::Ready => Style::new(),
            TaskState::Running => self.fg(Color::Cyan),
            TaskState::Succeeded => self.fg(Color::Green),
            TaskState::Failed => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            TaskState::Skipped => self.fg(Color::DarkGray),
            TaskState::Cancelled => self.fg(Color::Magenta),
        }
    }

    pub(crate) fn worker(self, s: WorkerStatus) -> Style {
        match s {
            WorkerStatus::Idle => Style::new(),
            WorkerStatus::Busy => self.fg(Color::Cyan),
            // Offline workers must stand out even without colour.
            WorkerStatus::Offline => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            WorkerStatus::Stopped => self.fg(Color::DarkGray),
        }
    }

    /// The row under the cursor: reversed in the focused panel, bold elsewhere.
    pub(crate) fn cursor(self, focused: bool) -> Style {
        if focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        }
    }

    pub(crate) fn border(self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            self.fg(Color::DarkGray)
        }
    }

    pub(crate) fn title(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub(crate) fn header(self) -> Style {
        self.fg(Color::Gray).add_modifier(Modifier::BOLD)
    }

    pub(crate) fn label(self) -> Style {
        self.fg(Color::DarkGray)
    }

    pub(crate) fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    pub(crate) fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }

    pub(crate) fn good(self) -> Style {
        self.fg(Color::Green)
    }

    pub(crate) fn busy(self) -> Style {
        self.fg(Color::Cyan)
    }

    /// A line a diff adds.
    pub(crate) fn added(self) -> Style {
        self.fg(Color::Green)
    }

    /// A line a diff removes.
    pub(crate) fn removed(self) -> Style {
        self.fg(Color::Red)
    }

    pub(crate) fn key(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }
}
