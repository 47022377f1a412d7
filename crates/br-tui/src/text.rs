//! Frames as plain text: what `br dashboard --once` prints and what the snapshot tests compare.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;

use crate::model::Model;
use crate::view::view;

/// Draws `model` on an off-screen `width`×`height` buffer and returns its text.
pub(crate) fn render_to_text(model: &Model, width: u16, height: u16) -> String {
    let backend = TestBackend::new(width, height);
    let mut terminal = match Terminal::new(backend) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    if let Err(never) = terminal.draw(|frame| view(model, frame)) {
        match never {}
    }
    buffer_text(terminal.backend().buffer())
}

/// The symbols of a buffer, one line per row, without styles, trailing spaces or trailing
/// empty lines. The cells hidden behind a wide character are skipped, as a terminal shows them.
pub(crate) fn buffer_text(buffer: &Buffer) -> String {
    let width = usize::from(buffer.area.width);
    if width == 0 {
        return String::new();
    }
    let mut lines: Vec<String> = Vec::new();
    for row in buffer.content.chunks(width) {
        let mut line = String::new();
        let mut hidden: u16 = 0;
        for cell in row {
            if hidden == 0 {
                line.push_str(cell.symbol());
            }
            hidden = hidden.max(cell_width(cell.symbol())).saturating_sub(1);
        }
        lines.push(line.trim_end().to_string());
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn cell_width(symbol: &str) -> u16 {
    u16::try_from(ratatui::text::Span::raw(symbol).width()).unwrap_or(1)
}
