//! The one loop that touches the terminal: it takes the terminal over (raw mode, alternate
//! screen), refreshes the snapshot when the store changes or the refresh interval passes, feeds
//! keys to `update`, and gives the terminal back on every way out, panics included.

use std::io::{self, Stdout, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use br_store::Store;
use br_store::snapshot::{Snapshot, SnapshotBuilder};
use crossterm::event::{self, Event, KeyEventKind};
use crossterm::terminal::{
    Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use crossterm::{cursor, execute};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::model::{Model, Msg, perform, poll, update};
use crate::view::view;
use crate::{DashboardOptions, no_color};

/// How long one wait for a key or a store change lasts: short, so keys feel immediate and
/// `stop` is noticed quickly.
const TICK: Duration = Duration::from_millis(25);

/// However busy the store, the snapshot is rebuilt at most this often.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// How the dashboard ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashboardEnd {
    /// The user pressed `q`.
    Quit,
    /// The user pressed Ctrl-C (in raw mode that is a key, not a signal).
    Interrupted,
    /// `stop` became true.
    Stopped,
}

/// Runs the dashboard on the terminal until the user quits or `stop` becomes true.
///
/// Store errors do not end it: the last snapshot stays on screen with the error in the footer,
/// and the next refresh tries again. Only a terminal that cannot be driven is an error.
pub fn run_dashboard(
    store: &dyn Store,
    options: &DashboardOptions,
    stop: &AtomicBool,
) -> io::Result<DashboardEnd> {
    let mut options = options.clone();
    if no_color() {
        options.color = false;
    }
    let _hook = PanicHook::install();
    let _screen = Screen::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let now = store.now().unwrap_or(br_core::Timestamp(0));
    let mut model = Model::new(Snapshot::empty(now), &options);
    let mut builder = SnapshotBuilder::new(options.session.clone());
    refresh(store, &mut builder, &mut model);
    let mut last_refresh = Instant::now();
    let mut dirty = true;
    let mut seen_seq = model.snapshot.last_seq;
    while !model.should_quit() && !stop.load(Ordering::Relaxed) {
        if dirty {
            draw(&mut terminal, &model)?;
            dirty = false;
        }
        if event::poll(TICK)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    if let Some(action) = update(&mut model, Msg::Key(key)) {
                        perform(store, &mut model, action);
                        // Show the action's effect now rather than at the next tick.
                        refresh(store, &mut builder, &mut model);
                        last_refresh = Instant::now();
                    }
                    if model.selected_session() != builder.wanted() {
                        builder.select(model.selected_session().cloned());
                        refresh(store, &mut builder, &mut model);
                        last_refresh = Instant::now();
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
            continue;
        }
        if poll(store, &mut model) {
            dirty = true;
        }
        // Refresh early when something happened: a new event is what changes a snapshot, and
        // the newest `seq` is one indexed read. (`wait_for_change` would block the keyboard,
        // and it also wakes for heartbeats, which change nothing worth a rebuild.)
        let since = last_refresh.elapsed();
        let changed = since >= MIN_REFRESH_GAP && store.last_seq().is_ok_and(|seq| seq != seen_seq);
        if changed || since >= options.refresh {
            refresh(store, &mut builder, &mut model);
            seen_seq = model.snapshot.last_seq;
            last_refresh = Instant::now();
            dirty = true;
        }
    }
    drop(terminal);
    Ok(if model.interrupted() {
        DashboardEnd::Interrupted
    } else if model.should_quit() {
        DashboardEnd::Quit
    } else {
        DashboardEnd::Stopped
    })
}

fn draw(terminal: &mut Terminal<CrosstermBackend<Stdout>>, model: &Model) -> io::Result<()> {
    terminal.draw(|frame| view(model, frame))?;
    Ok(())
}

fn refresh(store: &dyn Store, builder: &mut SnapshotBuilder, model: &mut Model) {
    let msg = match builder.refresh(store, &mut model.snapshot) {
        Ok(()) => Msg::Refreshed,
        Err(e) => Msg::StoreFailed(e.to_string()),
    };
    update(model, msg);
}

/// Whether the terminal is taken over right now, so restoring is done once and only when
/// there is something to restore (a panic elsewhere must not write escape codes).
static ON_SCREEN: AtomicBool = AtomicBool::new(false);

/// Puts the terminal back as it was: cooked mode, main screen, visible cursor.
fn restore_terminal() {
    if !ON_SCREEN.swap(false, Ordering::SeqCst) {
        return;
    }
    let _ = disable_raw_mode();
    let mut out = io::stdout();
    let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
    let _ = out.flush();
}

/// The terminal taken over; dropping it gives the terminal back, however the dashboard ends.
struct Screen;

impl Screen {
    fn enter() -> io::Result<Screen> {
        enable_raw_mode()?;
        ON_SCREEN.store(true, Ordering::SeqCst);
        // From here on a failure must still undo raw mode: the guard exists before the next
        // step can fail.
        let screen = Screen;
        // Cleared here rather than with `Terminal::clear`, which first asks the terminal where
        // its cursor is and waits for the answer.
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            Clear(ClearType::All),
            cursor::Hide
        )?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// A panic hook that restores the terminal before the panic message is printed (otherwise it
/// lands in the alternate screen, in raw mode, and is lost). Dropping it puts the previous hook
/// back.
struct PanicHook {
    previous: Arc<Hook>,
}

impl PanicHook {
    fn install() -> PanicHook {
        let previous: Arc<Hook> = Arc::new(std::panic::take_hook());
        let chained = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            chained(info);
        }));
        PanicHook { previous }
    }
}

impl Drop for PanicHook {
    fn drop(&mut self) {
        // Replacing a hook while panicking aborts the process; during unwinding ours stays,
        // which is harmless (it restores a terminal that is already restored).
        if std::thread::panicking() {
            return;
        }
        let previous = Arc::clone(&self.previous);
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}

impl std::fmt::Debug for PanicHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PanicHook")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn the_panic_hook_chains_to_the_previous_one_and_puts_it_back() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let original = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {
            SEEN.fetch_add(1, Ordering::SeqCst);
        }));
        {
            let _hook = PanicHook::install();
            // As if the dashboard were on screen: the hook must restore it before anything.
            ON_SCREEN.store(true, Ordering::SeqCst);
            let caught = std::panic::catch_unwind(|| panic!("boom"));
            assert!(caught.is_err());
            assert!(!ON_SCREEN.load(Ordering::SeqCst), "terminal restored");
            assert_eq!(SEEN.load(Ordering::SeqCst), 1, "then the previous hook ran");
        }
        let caught = std::panic::catch_unwind(|| panic!("again"));
        assert!(caught.is_err());
        assert_eq!(SEEN.load(Ordering::SeqCst), 2, "the previous hook is back");
        std::panic::set_hook(original);
    }
}
