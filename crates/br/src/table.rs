//! Plain aligned tables for terminal output: no colours, no trailing spaces, one row per line.
//! Every cell is escaped ([`esc`]) and cut to [`MAX_CELL_CHARS`], so that no value from the
//! store (a hostile plan's name, an older br's 70,000-character one) can break the table or the
//! terminal.

use crate::escape::esc;

/// The widest a cell is shown. Task ids (64 characters) and session names (128) fit whole; a
/// longer cell (a list of files, a name an older br accepted) ends with `…`, and `--json` has
/// all of it.
pub(crate) const MAX_CELL_CHARS: usize = 128;

#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; its cells are escaped and cut to size here, whatever they hold.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .iter()
                .map(|c| truncated(&esc(c).to_string(), MAX_CELL_CHARS))
                .collect(),
        );
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                // Padded by hand: a formatting width is limited to u16::MAX, and a width past
                // it panics (it did, for a name of 70,000 characters).
                let pad = widths.get(i).copied().unwrap_or(0);
                let len = cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad.saturating_sub(len)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` cut to at most `max` characters, the last of them `…` when anything was cut.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            let mut out = String::with_capacity(end + '…'.len_utf8());
            out.push_str(&text[..end]);
            out.push('…');
            out
        }
    }
}

/// `-` for a missing value.
pub(crate) fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATE", "NOTE"]);
        t.row(vec!["a".into(), "running".into(), "".into()]);
        t.row(vec!["longer-id".into(), "ok".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "ID         STATE    NOTE\na          running\nlonger-id  ok       x\n"
        );
    }

    #[test]
    fn huge_cells_are_cut_with_an_ellipsis_instead_of_panicking() {
        let mut t = Table::new(&["ID", "NAME", "STATUS"]);
        t.row(vec!["a".into(), "x".repeat(70_000), "failed".into()]);
        t.row(vec!["b".into(), "é".repeat(MAX_CELL_CHARS), "ok".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        let cut = format!("{}…", "x".repeat(MAX_CELL_CHARS - 1));
        assert_eq!(lines[1], format!("a   {cut}  failed"));
        // A cell of exactly the maximum is shown whole.
        assert_eq!(lines[2], format!("b   {}  ok", "é".repeat(MAX_CELL_CHARS)));
    }

    #[test]
    fn cells_are_escaped_before_they_are_measured() {
        let mut t = Table::new(&["NAME", "X"]);
        t.row(vec!["evil\u{1b}]0;owned\u{7}".into(), "1".into()]);
        t.row(vec!["two\nlines".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "NAME                     X\nevil\\u{1b}]0;owned\\u{7}  1\ntwo\\nlines               2\n"
        );
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncated("abc", 3), "abc");
        assert_eq!(truncated("abcd", 3), "ab…");
        assert_eq!(truncated("日本語です", 2), "日…");
        assert_eq!(truncated("", 0), "");
    }
}
