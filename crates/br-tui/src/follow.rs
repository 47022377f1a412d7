//! Following a task's log as it grows: the tail of the attempt's file, read a little at a time,
//! never the whole file, and cleaned of terminal escape codes before it reaches the screen. An
//! attempt that ran on another machine (or whose file was removed) is read from the store,
//! where its worker shipped the output as it was written.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use br_core::{Attempt, SessionId, TaskId};
use br_store::Store;

/// Lines kept in memory; older ones scroll away.
const MAX_LINES: usize = 5000;

/// On opening a log, only its last bytes are read: a tail, not the whole file.
const TAIL_BYTES: u64 = 256 * 1024;

/// At most this much is read per poll, so a task that writes fast cannot stall the screen.
const MAX_READ: u64 = 1024 * 1024;

/// A long line is cut here: a log line longer than a screen is noise in a tail.
const MAX_LINE_BYTES: usize = 4096;

/// The tail of one task's log, kept up to date by [`poll`](Self::poll).
#[derive(Debug)]
pub struct LogTail {
    session: SessionId,
    task: TaskId,
    attempt: u32,
    path: PathBuf,
    lines: VecDeque<String>,
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
    /// How far into the file has been read.
    offset: u64,
    /// Lines scrolled back from the end; 0 follows the end.
    scroll: usize,
    /// Why the file cannot be read right now (it may not exist yet).
    problem: Option<String>,
}

impl LogTail {
    pub fn new(session: SessionId, task: TaskId, path: PathBuf, attempt: u32) -> LogTail {
        LogTail {
            session,
            task,
            attempt,
            path,
            lines: VecDeque::new(),
            partial: Vec::new(),
            offset: 0,
            scroll: 0,
            problem: None,
        }
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    pub fn task(&self) -> &TaskId {
        &self.task
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lines(&self) -> &VecDeque<String> {
        &self.lines
    }

    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    pub fn is_following(&self) -> bool {
        self.scroll == 0
    }

    /// Lines scrolled back from the end.
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    pub fn scroll_up(&mut self, n: usize) {
        self.scroll = self
            .scroll
            .saturating_add(n)
            .min(self.lines.len().saturating_sub(1));
    }

    pub fn scroll_down(&mut self, n: usize) {
        self.scroll = self.scroll.saturating_sub(n);
    }

    pub fn follow(&mut self) {
        self.scroll = 0;
    }

    /// Switches to another attempt's log, starting over.
    pub fn retarget(&mut self, path: PathBuf, attempt: u32) {
        if path != self.path {
            *self = LogTail::new(self.session.clone(), self.task.clone(), path, attempt);
        }
    }

    /// Reads what was appended since the last poll: from the file where this machine has it,
    /// else from the store (the attempt ran on another machine, or its file was removed).
    /// Returns whether anything changed.
    pub fn poll(&mut self, store: &dyn Store) -> bool {
        let read = match self.read_more() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.read_stored(store),
            other => other.map_err(|e| e.to_string()),
        };
        match read {
            Ok(changed) => {
                let was = self.problem.take();
                changed || was.is_some()
            }
            Err(why) => {
                let changed = self.problem.as_deref() != Some(why.as_str());
                self.problem = Some(why);
                changed
            }
        }
    }

    /// What the store has of the log beyond what was read (one bounded read per poll).
    fn read_stored(&mut self, store: &dyn Store) -> Result<bool, String> {
        let more = store
            .read_log(
                &self.session,
                &self.task,
                Attempt(self.attempt),
                self.offset,
            )
            .map_err(|e| format!("the store cannot be read: {e}"))?;
        if more.is_empty() && self.offset == 0 {
            return Err("no output yet".into());
        }
        self.offset += more.len() as u64;
        self.take_lines(&more);
        Ok(!more.is_empty())
    }

    fn read_more(&mut self) -> std::io::Result<bool> {
        let mut file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        if len < self.offset {
            // Truncated or replaced: start again from its tail.
            self.lines.clear();
            self.partial.clear();
            self.offset = 0;
        }
        if len == self.offset {
            return Ok(false);
        }
        let mut skip_partial_first_line = false;
        if self.offset == 0 && len > TAIL_BYTES {
            self.offset = len - TAIL_BYTES;
            skip_partial_first_line = true;
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        let read = file.take(MAX_READ).read_to_end(&mut buf)?;
        self.offset += read as u64;
        let mut chunk = buf.as_slice();
        if skip_partial_first_line {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => chunk = &chunk[i + 1..],
                None => chunk = &[],
            }
        }
        self.take_lines(chunk);
        Ok(read > 0)
    }

    /// Splits newly read bytes into lines, keeping an unfinished last line for later.
    fn take_lines(&mut self, chunk: &[u8]) {
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            if let Some(line) = piece.strip_suffix(b"\n") {
                self.partial.extend_from_slice(line);
                let line = std::mem::take(&mut self.partial);
                self.push_line(&line);
            } else {
                self.partial.extend_from_slice(piece);
                if self.partial.len() > MAX_LINE_BYTES {
                    let line = std::mem::take(&mut self.partial);
                    self.push_line(&line);
                }
            }
        }
    }

    fn push_line(&mut self, raw: &[u8]) {
        let raw = &raw[..raw.len().min(MAX_LINE_BYTES)];
        self.lines
            .push_back(clean_line(&String::from_utf8_lossy(raw)));
        if self.lines.len() > MAX_LINES {
            self.lines.pop_front();
        }
        if self.scroll > 0 {
            // Keep the same lines on screen while the user reads back.
            self.scroll = (self.scroll + 1).min(self.lines.len().saturating_sub(1));
        }
    }

    /// The complete lines the screen shows, `height` at most, ending `scroll` lines back.
    pub fn visible(&self, height: usize) -> Vec<&str> {
        let end = self.lines.len().saturating_sub(self.scroll);
        let start = end.saturating_sub(height);
        self.lines.range(start..end).map(String::as_str).collect()
    }

    /// The unfinished last line, if the task is in the middle of writing one.
    pub fn partial(&self) -> Option<String> {
        (!self.partial.is_empty()).then(|| clean_line(&String::from_utf8_lossy(&self.partial)))
    }
}

/// Removes ANSI escape sequences (colours, cursor moves) and other control characters, and
/// expands tabs, so a log line cannot move the cursor or recolour the dashboard.
pub(crate) fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {
                    chars.next();
                }
            },
            '\t' => {
                let pad = 4 - out.chars().count() % 4;
                out.extend(std::iter::repeat_n(' ', pad));
            }
            // A carriage return redraws the line (progress bars): keep what came after it. A
            // last one is a CRLF line ending.
            '\r' => {
                if chars.peek().is_some() {
                    out.clear();
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use br_store::Lease;
    use br_store::sqlite::SqliteStore;

    fn empty_store(dir: &Path) -> SqliteStore {
        SqliteStore::open(&dir.join("br.db")).unwrap()
    }

    fn tail(path: &Path) -> LogTail {
        LogTail::new(
            SessionId::from_string("abc"),
            TaskId::new("t").unwrap(),
            path.to_path_buf(),
            1,
        )
    }

    #[test]
    fn escape_codes_and_control_characters_are_removed() {
        assert_eq!(clean_line("\u{1b}[1;31merror\u{1b}[0m: x"), "error: x");
        assert_eq!(clean_line("a\tb"), "a   b");
        assert_eq!(clean_line("10%\r50%\r100%"), "100%");
        assert_eq!(clean_line("windows\r"), "windows");
        assert_eq!(clean_line("\u{1b}]0;title\u{7}text\u{7}"), "text");
        assert_eq!(clean_line("bell\u{7}"), "bell");
    }

    #[test]
    fn follows_a_growing_file_and_waits_for_one_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.1.log");
        let store = empty_store(dir.path());
        let store = &store;
        let mut t = tail(&path);
        assert!(t.poll(store), "the problem is news");
        assert_eq!(t.problem(), Some("no output yet"));
        assert!(!t.poll(store), "the same problem is not");
        let mut f = File::create(&path).unwrap();
        write!(f, "one\ntwo\nthr").unwrap();
        assert!(t.poll(store));
        assert_eq!(t.problem(), None);
        assert_eq!(t.visible(10), ["one", "two"]);
        assert_eq!(t.partial().as_deref(), Some("thr"));
        write!(f, "ee\nfour\n").unwrap();
        assert!(t.poll(store));
        assert_eq!(t.visible(2), ["three", "four"]);
        assert!(!t.poll(store), "nothing new");
        t.scroll_up(1);
        assert_eq!(t.visible(2), ["two", "three"]);
        writeln!(f, "five").unwrap();
        t.poll(store);
        assert_eq!(t.visible(2), ["two", "three"], "reading back holds still");
        t.follow();
        assert_eq!(t.visible(2), ["four", "five"]);
    }

    #[test]
    fn a_big_log_is_read_from_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let store = empty_store(dir.path());
        let store = &store;
        let mut f = File::create(&path).unwrap();
        for i in 0..100_000 {
            writeln!(f, "line {i}").unwrap();
        }
        let mut t = tail(&path);
        t.poll(store);
        assert!(t.lines().len() <= MAX_LINES);
        assert_eq!(t.visible(1), ["line 99999"]);
        assert!(t.lines()[0].starts_with("line "), "no torn first line");
        // Truncation starts over.
        File::create(&path).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        t.poll(store);
        assert_eq!(t.visible(5), ["fresh"]);
    }

    #[test]
    fn a_log_this_machine_does_not_have_is_read_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = empty_store(dir.path());
        let mut t = tail(&dir.path().join("elsewhere.log"));
        let lease = Lease {
            session_id: t.session().clone(),
            task_id: t.task().clone(),
            attempt: Attempt(1),
            worker_id: br_core::WorkerId::from_string("w"),
        };
        store.append_log(&lease, 0, b"one\ntw").unwrap();
        assert!(t.poll(&store));
        assert_eq!(
            (t.visible(5), t.partial()),
            (vec!["one"], Some("tw".into()))
        );
        store.append_log(&lease, 6, b"o\nthree\n").unwrap();
        assert!(t.poll(&store));
        assert_eq!(t.visible(5), ["one", "two", "three"]);
        assert!(!t.poll(&store), "nothing new");
    }
}
