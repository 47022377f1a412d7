//! Text from the store made safe to print on a terminal: every control character is shown as a
//! Rust-style escape (`\u{1b}`, `\n`, `\t`), never sent to the terminal as itself.
//!
//! Names, task ids, commands, paths, environment values and event details all come from plans,
//! and a plan can be hostile: an ESC in a session name would otherwise let it retitle the user's
//! terminal, clear the screen or hide lines, and a newline would let it forge lines of br's own
//! output. Every text output of the CLI passes such values through [`esc`] (tables do it for each
//! cell); `--json` needs nothing more, since JSON escapes them itself, and `br logs` prints the
//! task's own output untouched, which is what it is for.

use std::fmt::{self, Write as _};

/// `value` as text, with every character that could control a terminal (see [`is_unsafe`])
/// escaped. Formatting flags such as a width are not applied: tables pad their cells themselves.
pub(crate) fn esc<T: fmt::Display>(value: T) -> Escaped<T> {
    Escaped(value)
}

/// What [`esc`] returns: displays the value escaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Escaped<T>(T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

/// Passes text on to `0`, escaping what must not reach a terminal as itself. Escaping as the
/// text goes through keeps a large value (a long command) from being copied first.
struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(is_unsafe) {
            self.0.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(c) = chars.next() {
                for e in c.escape_debug() {
                    self.0.write_char(e)?;
                }
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

/// The characters shown escaped: the control characters (C0, DEL and C1, which hold ESC, BEL,
/// backspace, carriage return, newline, and the single-byte CSI), and the bidirectional
/// overrides and isolates, which reorder what a terminal shows so that text reads as something
/// it is not.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        let cases = [
            ("plain name", "plain name"),
            ("évian 日本 → ok", "évian 日本 → ok"),
            ("evil\u{1b}]0;owned\u{7}", "evil\\u{1b}]0;owned\\u{7}"),
            ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
            ("nul\0del\u{7f}csi\u{9b}", "nul\\0del\\u{7f}csi\\u{9b}"),
            ("\u{202e}txt.exe", "\\u{202e}txt.exe"),
            ("back\\slash", "back\\slash"),
        ];
        for (raw, shown) in cases {
            assert_eq!(esc(raw).to_string(), shown, "{raw:?}");
        }
    }

    #[test]
    fn anything_displayable_is_escaped() {
        let path = std::path::Path::new("dir\u{1b}[2J/file");
        assert_eq!(esc(path.display()).to_string(), "dir\\u{1b}[2J/file");
        assert_eq!(esc(42).to_string(), "42");
    }
}
