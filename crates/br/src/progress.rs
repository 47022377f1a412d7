//! Progress as a session runs: one plain, parseable line per state change when output is not a
//! terminal (`+1.234s task_failed task=api attempt=1 worker=w… — exit 2`), and on a terminal the
//! notable lines plus one status line redrawn in place.

use std::io::Write;

use br_core::{EventKind, Timestamp};
use br_store::{Event, Session};

use crate::escape::esc;

/// Where progress goes and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Every state change as a line; no escape codes.
    Lines,
    /// Notable changes as lines, and a status line redrawn in place.
    Terminal,
    /// Nothing (e.g. `--json`, where only the final JSON is printed).
    Quiet,
}

#[derive(Debug)]
pub(crate) struct Progress<W: Write> {
    out: W,
    style: Style,
    start: Option<Timestamp>,
    status_shown: bool,
}

impl<W: Write> Progress<W> {
    pub(crate) fn new(out: W, style: Style) -> Progress<W> {
        Progress {
            out,
            style,
            start: None,
            status_shown: false,
        }
    }

    /// Changes how progress is shown from now on (e.g. after the dashboard closes).
    pub(crate) fn set_style(&mut self, style: Style) {
        self.style = style;
    }

    pub(crate) fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        let start = *self.start.get_or_insert(ev.at);
        let notable = matches!(
            ev.kind,
            EventKind::TaskFailed
                | EventKind::TaskRequeued
                | EventKind::TaskSkipped
                | EventKind::StaleResultRejected
                | EventKind::MergeConflict
                | EventKind::ScopeViolation
                | EventKind::SessionCompleted
                | EventKind::SessionFailed
                | EventKind::SessionCancelled
                | EventKind::SessionPaused
                | EventKind::SessionResumed
        );
        let show = match self.style {
            Style::Quiet => false,
            Style::Lines => shown_as_line(ev.kind),
            Style::Terminal => notable,
        };
        if show {
            self.clear_status()?;
            writeln!(self.out, "{}", event_line(ev, start))?;
        }
        Ok(())
    }

    /// A note in words, one or more lines, each escaped ([`esc`]): notes name sessions, paths
    /// and errors that may hold anything.
    pub(crate) fn note(&mut self, text: &str) -> std::io::Result<()> {
        if self.style == Style::Quiet {
            return Ok(());
        }
        self.clear_status()?;
        for line in text.split('\n') {
            writeln!(self.out, "{}", esc(line))?;
        }
        Ok(())
    }

    pub(crate) fn status(&mut self, s: &Session, now: Timestamp) -> std::io::Result<()> {
        if self.style != Style::Terminal {
            return Ok(());
        }
        let elapsed = s.started_at.map(|t| now.since(t)).unwrap_or_default();
        let line = format!(
            "[{}/{}] {} running, {} queued, {} failed, {} skipped · {} · {}",
            s.finished_tasks(),
            s.total_tasks,
            s.running_tasks,
            s.queued_tasks,
            s.failed_tasks,
            s.skipped_tasks,
            s.status,
            br_core::time::short_duration(elapsed),
        );
        write!(self.out, "\r\x1b[2K{line}")?;
        self.status_shown = true;
        self.out.flush()
    }

    fn clear_status(&mut self) -> std::io::Result<()> {
        if self.status_shown {
            write!(self.out, "\r\x1b[2K")?;
            self.status_shown = false;
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        self.clear_status()?;
        self.out.flush()
    }
}

/// The kinds worth a line in plain progress: state changes, not lock bookkeeping.
fn shown_as_line(kind: EventKind) -> bool {
    !matches!(kind, EventKind::LockAcquired | EventKind::LockReleased)
}

/// `+1.234s task_failed task=api attempt=1 worker=w… — exit 2`: the time since the first
/// event, the kind, who it is about as `key=value` pairs, then the detail in words
/// ([`br_core::EventDetail::describe`], as the dashboards say it) after ` — `. The line is
/// escaped ([`esc`]): a detail may quote anything a plan or a task wrote.
pub(crate) fn event_line(ev: &Event, start: Timestamp) -> String {
    let offset = ev.at.millis() - start.millis();
    let mut line = format!(
        "+{}.{:03}s {}",
        offset / 1000,
        offset.rem_euclid(1000),
        ev.kind
    );
    let mut field = |key: &str, value: &str| {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&quote(value));
    };
    if let Some(t) = &ev.task_id {
        field("task", t.as_str());
    }
    if let Some(a) = ev.attempt {
        field("attempt", &a.to_string());
    }
    if let Some(w) = &ev.worker_id {
        field("worker", w.as_str());
    }
    if let Some(text) = ev.detail.describe() {
        line.push_str(" — ");
        line.push_str(&text);
    }
    esc(line).to_string()
}

/// Quotes a value that would not survive whitespace splitting.
fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
        return v.to_string();
    }
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use br_core::detail::{HeldLock, LockConflict, LockPaths, ScopeViolation, TaskFailed};
    use br_core::{Attempt, EventDetail, Outcome, SessionId, TaskId, WorkerId};

    use super::*;

    fn ev(at: i64, detail: EventDetail) -> Event {
        Event {
            seq: 1,
            at: Timestamp(at),
            kind: detail.kind(),
            session_id: Some(SessionId::from_string("abc")),
            task_id: Some(TaskId::new("api").expect("id")),
            worker_id: Some(WorkerId::from_string("w1")),
            attempt: Some(Attempt(2)),
            detail,
        }
    }

    #[test]
    fn lines_name_the_event_then_say_its_detail_in_words() {
        let line = event_line(
            &ev(
                2_345,
                EventDetail::TaskFailed(TaskFailed::of(&Outcome::Failed { exit_code: 2 })),
            ),
            Timestamp(1_000),
        );
        assert_eq!(
            line,
            "+1.345s task_failed task=api attempt=2 worker=w1 — exit 2"
        );
        let conflict = event_line(
            &ev(
                1_000,
                EventDetail::LockConflict(LockConflict {
                    paths: vec!["src/a.rs".into()],
                    held_by: vec![HeldLock {
                        path: "src/a.rs".into(),
                        session_id: SessionId::from_string("abc"),
                        task_id: Some(TaskId::new("dir").expect("id")),
                        attempt: None,
                    }],
                }),
            ),
            Timestamp(1_000),
        );
        assert!(
            conflict.ends_with(" — waits for src/a.rs held by dir"),
            "{conflict}"
        );
    }

    #[test]
    fn what_a_detail_quotes_is_escaped() {
        // Git allows any byte but NUL and `/` in a file name: a task can make one that clears
        // the screen, and a scope check quotes it.
        let line = event_line(
            &ev(
                1_000,
                EventDetail::ScopeViolation(ScopeViolation {
                    files: vec!["a\u{1b}[2J\nb".into()],
                }),
            ),
            Timestamp(1_000),
        );
        assert_eq!(
            line,
            "+0.000s scope_violation task=api attempt=2 worker=w1 — changed outside its files: \
             a\\u{1b}[2J\\nb"
        );
        let mut out = Vec::new();
        let mut p = Progress::new(&mut out, Style::Lines);
        p.note("session evil\u{7} (1)\nnext line").expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "session evil\\u{7} (1)\nnext line\n"
        );
    }

    #[test]
    fn plain_style_has_no_escape_codes() {
        let mut out = Vec::new();
        let mut p = Progress::new(&mut out, Style::Lines);
        p.event(&ev(10, EventDetail::TaskReady)).expect("write");
        p.event(&ev(
            10,
            EventDetail::LockAcquired(LockPaths {
                paths: vec!["x".into()],
            }),
        ))
        .expect("write");
        p.finish().expect("flush");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text, "+0.000s task_ready task=api attempt=2 worker=w1\n");
    }
}
