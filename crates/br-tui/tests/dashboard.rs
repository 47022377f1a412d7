//! The dashboard seen from outside: frames of fixed snapshots (ratatui `TestBackend` + insta),
//! what keys do to the model, and what `p`/`r`/`c`/`R` do to a real store.

mod fixture;

use br_core::state::SessionAction;
use br_core::{OutcomeKind, RunReason, SessionStatus, TaskState};
use br_store::Store;
use br_store::snapshot::{Snapshot, build_snapshot};
use br_store::sqlite::SqliteStore;
use br_tui::{
    Action, DashboardOptions, Focus, Mode, Model, Msg, perform, render_once, update, view,
};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;

use fixture::*;

fn options(compact: bool) -> DashboardOptions {
    DashboardOptions {
        compact,
        color: true,
        ..DashboardOptions::default()
    }
}

fn model(snapshot: Snapshot, compact: bool) -> Model {
    let mut m = Model::new(snapshot, &options(compact));
    update(&mut m, Msg::Refreshed);
    m
}

fn draw(model: &Model, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| view(model, f)).unwrap();
    terminal
}

fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ch(c: char) -> Msg {
    key(KeyCode::Char(c))
}

fn press(model: &mut Model, keys: &[Msg]) -> Vec<Action> {
    keys.iter()
        .filter_map(|k| update(model, k.clone()))
        .collect()
}

// Frames.

#[test]
fn empty_store() {
    insta::assert_snapshot!(draw(&model(empty(), false), 100, 30).backend());
}

#[test]
fn one_running_session() {
    insta::assert_snapshot!(draw(&model(one_running(), false), 120, 34).backend());
}

#[test]
fn many_sessions_scroll_to_the_selected_one() {
    let mut m = model(many_sessions(), false);
    press(
        &mut m,
        &[key(KeyCode::PageDown), key(KeyCode::PageDown), ch('j')],
    );
    insta::assert_snapshot!(draw(&m, 100, 36).backend());
}

#[test]
fn offline_workers_stand_out() {
    let mut m = model(offline_workers(), false);
    let closed = draw(&m, 110, 36).backend().to_string();
    let line = closed.lines().find(|l| l.contains("▸ Workers")).unwrap();
    assert!(
        line.contains("2 OFFLINE") && line.contains("w51be93 OFFLINE"),
        "closed, the workers' line names the offline ones first: {line}"
    );
    // Tab to the workers opens their panel.
    press(&mut m, &[key(KeyCode::Tab), key(KeyCode::Tab)]);
    let terminal = draw(&m, 110, 36);
    insta::assert_snapshot!(terminal.backend());
    let text = terminal.backend().to_string();
    let offline_line = text
        .lines()
        .find(|l| l.contains("ci-runner-8"))
        .expect("offline worker shown");
    assert!(offline_line.contains("OFFLINE"), "{offline_line}");
    // The offline rows are listed first and drawn red.
    let buffer = terminal.backend().buffer();
    let y = (0..buffer.area.height)
        .find(|&y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
                .contains("ci-runner-7")
        })
        .unwrap();
    assert!((0..buffer.area.width).any(|x| buffer[(x, y)].fg == Color::Red));
}

#[test]
fn a_failed_task() {
    insta::assert_snapshot!(draw(&model(failed_task(), false), 100, 30).backend());
}

#[test]
fn a_task_blocked_by_a_lock_names_the_lock_and_its_holder() {
    let m = model(blocked_on_lock(), false);
    let terminal = draw(&m, 150, 36);
    insta::assert_snapshot!(terminal.backend());
    let text = terminal.backend().to_string();
    let line = text.lines().find(|l| l.contains("api-docs")).unwrap();
    assert!(line.contains("blocked"), "{line}");
    assert!(
        line.contains("lock src/api/** held by api on w3fa9c0"),
        "{line}"
    );
}

#[test]
fn a_parked_pool_and_what_tasks_spent_show() {
    let m = model(parked_pool(), false);
    let terminal = draw(&m, 190, 34);
    insta::assert_snapshot!(terminal.backend());
    let text = terminal.backend().to_string();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
            .to_string()
    };
    let pools = line("Pools");
    assert!(
        pools.contains(
            "anthropic 0/2 running, parked until 15:30:16 (in 42s) · openai 1/1 running \
             — anthropic: Claude AI usage limit reached"
        ),
        "{pools}"
    );
    assert!(
        pools.contains("openai 1/1 running") && !pools.contains("429"),
        "a park that ended is not shown: {pools}"
    );
    let spent = line("agents spent");
    assert!(
        spent.contains("spent $0.3234 · 32.3k in / 2.2k out tokens · $0.1617 per landed task"),
        "{spent}"
    );
    let billing = line("billing");
    assert!(billing.contains("parked"), "{billing}");
    // The note column cuts the rest ("(in 42s)"), which the pools line above says.
    assert!(
        billing.contains("waiting: pool anthropic parked until 15:30:16"),
        "{billing}"
    );
    let refactor = line("refactor");
    assert!(
        refactor.contains("blocked")
            && refactor.contains("waiting: pool openai full (1/1 running)"),
        "{refactor}"
    );
    assert!(line("search").contains("$0.1234"), "{}", line("search"));
    assert!(line("auth").contains("$0.2000"), "{}", line("auth"));
}

#[test]
fn a_parked_pool_in_the_compact_layout() {
    insta::assert_snapshot!(draw(&model(parked_pool(), true), 80, 24).backend());
}

#[test]
fn compact_layout_fits_80_by_24() {
    insta::assert_snapshot!(draw(&model(blocked_on_lock(), true), 80, 24).backend());
}

#[test]
fn a_small_terminal_falls_back_to_the_compact_layout() {
    let full = draw(&model(one_running(), false), 80, 24)
        .backend()
        .to_string();
    let compact = draw(&model(one_running(), true), 80, 24)
        .backend()
        .to_string();
    assert_eq!(full, compact);
}

#[test]
fn tiny_terminals() {
    let m = model(one_running(), false);
    insta::assert_snapshot!("tiny_10x3", draw(&m, 10, 3).backend());
    insta::assert_snapshot!("tiny_1x1", draw(&m, 1, 1).backend());
}

#[test]
fn no_size_makes_it_panic() {
    let widths = [
        0, 1, 2, 5, 9, 10, 15, 29, 30, 31, 45, 60, 79, 80, 89, 90, 100, 140,
    ];
    let heights = [0, 1, 2, 3, 5, 7, 8, 12, 20, 24, 27, 28, 35, 50];
    let sizes = || {
        widths
            .iter()
            .flat_map(|&w| heights.iter().map(move |&h| (w, h)))
    };
    for snap in [
        empty(),
        one_running(),
        many_sessions(),
        offline_workers(),
        blocked_on_lock(),
    ] {
        for compact in [false, true] {
            let mut m = model(snap.clone(), compact);
            press(&mut m, &[key(KeyCode::Tab), key(KeyCode::End)]);
            for (w, h) in sizes() {
                draw(&m, w, h);
            }
        }
    }
    for keys in [
        vec![ch('?')],
        vec![ch('c')],
        vec![ch('/'), ch('a')],
        vec![key(KeyCode::Tab), key(KeyCode::Tab), key(KeyCode::End)],
        vec![
            key(KeyCode::Tab),
            key(KeyCode::Tab),
            key(KeyCode::Tab),
            key(KeyCode::End),
        ],
        vec![key(KeyCode::Tab), ch('j'), key(KeyCode::Enter)],
        vec![key(KeyCode::Tab), ch('j'), ch('d')],
        vec![
            key(KeyCode::Tab),
            ch('j'),
            ch('j'),
            ch('j'),
            key(KeyCode::Enter),
        ],
    ] {
        let mut m = model(one_running(), false);
        press(&mut m, &keys);
        for (w, h) in sizes() {
            draw(&m, w, h);
        }
    }
}

#[test]
fn help_overlay() {
    let mut m = model(one_running(), false);
    press(&mut m, &[ch('?')]);
    insta::assert_snapshot!(draw(&m, 100, 30).backend());
    press(&mut m, &[ch('x')]);
    assert!(matches!(m.mode(), Mode::Normal), "any key closes help");
}

#[test]
fn cancel_asks_for_confirmation() {
    let mut m = model(one_running(), false);
    assert_eq!(press(&mut m, &[ch('c')]), []);
    assert!(matches!(m.mode(), Mode::ConfirmCancel { .. }));
    insta::assert_snapshot!(draw(&m, 100, 30).backend());
    assert_eq!(press(&mut m, &[ch('n')]), [], "n keeps it");
    assert_eq!(m.status(), Some("not cancelled"));
    let actions = press(&mut m, &[ch('c'), ch('y')]);
    assert_eq!(
        actions,
        [Action::ChangeSession {
            session: sid(1),
            action: SessionAction::Cancel
        }]
    );
}

#[test]
fn no_color_means_no_colour() {
    for snap in [
        one_running(),
        offline_workers(),
        failed_task(),
        blocked_on_lock(),
    ] {
        let m = Model::new(
            snap,
            &DashboardOptions {
                color: false,
                ..DashboardOptions::default()
            },
        );
        let terminal = draw(&m, 120, 36);
        for cell in &terminal.backend().buffer().content {
            assert_eq!(
                (cell.fg, cell.bg),
                (Color::Reset, Color::Reset),
                "{:?}",
                cell.symbol()
            );
        }
    }
    let coloured = draw(&model(failed_task(), false), 100, 30);
    assert!(
        coloured
            .backend()
            .buffer()
            .content
            .iter()
            .any(|c| c.fg == Color::Red)
    );
}

#[test]
fn render_once_is_plain_text_with_everything() {
    let snap = many_sessions();
    let opts = DashboardOptions::default();
    let height = br_tui::once_height(&snap, &opts);
    let text = render_once(&snap, 100, height, &opts);
    assert!(!text.contains('\u{1b}'), "no escape codes");
    for n in 2..=40 {
        assert!(
            text.contains(&format!("nightly-{n:02}")),
            "session {n} missing"
        );
    }
    for t in ["schema", "api", "flaky-test", "release"] {
        assert!(text.contains(t), "{t}");
    }
    assert!(text.lines().all(|l| l.chars().count() <= 100));
    assert!(
        !text.lines().any(|l| l.ends_with(' ')),
        "trailing spaces trimmed"
    );
    assert!(
        !text.contains("q quit"),
        "a frame printed once lists no keys: none does anything there"
    );
    insta::assert_snapshot!(render_once(&one_running(), 100, 30, &opts));
}

// Keys.

#[test]
fn arrows_and_jk_move_the_session_selection() {
    let mut m = model(many_sessions(), false);
    assert_eq!(m.session_index(), Some(0));
    assert_eq!(m.focus(), Focus::Sessions);
    press(&mut m, &[ch('j'), key(KeyCode::Down)]);
    assert_eq!(m.session_index(), Some(2));
    press(&mut m, &[ch('k')]);
    assert_eq!(m.session_index(), Some(1));
    press(&mut m, &[key(KeyCode::Up), key(KeyCode::Up)]);
    assert_eq!(m.session_index(), Some(0), "stops at the top");
    press(&mut m, &[key(KeyCode::End)]);
    assert_eq!(m.session_index(), Some(39));
    press(&mut m, &[ch('j')]);
    assert_eq!(m.session_index(), Some(39), "stops at the bottom");
    press(&mut m, &[ch('g')]);
    assert_eq!(m.session_index(), Some(0));
}

#[test]
fn tab_moves_focus_and_arrows_then_move_tasks() {
    let mut m = model(one_running(), false);
    press(&mut m, &[key(KeyCode::Tab)]);
    assert_eq!(m.focus(), Focus::Tasks);
    assert_eq!(m.selected_task().unwrap().task.id.as_str(), "schema");
    press(&mut m, &[ch('j'), ch('j'), ch('j')]);
    assert_eq!(m.selected_task().unwrap().task.id.as_str(), "api");
    assert_eq!(m.selected_session(), Some(&sid(1)), "sessions did not move");
    press(&mut m, &[key(KeyCode::Tab)]);
    assert_eq!(m.focus(), Focus::Workers);
    press(&mut m, &[key(KeyCode::Tab)]);
    assert_eq!(m.focus(), Focus::Locks);
    press(&mut m, &[key(KeyCode::Tab)]);
    assert_eq!(m.focus(), Focus::Sessions, "Tab goes round");
    press(&mut m, &[key(KeyCode::BackTab)]);
    assert_eq!(m.focus(), Focus::Locks, "Shift-Tab goes back");
    press(&mut m, &[ch('l')]);
    assert_eq!(m.focus(), Focus::Tasks);
    press(&mut m, &[ch('h')]);
    assert_eq!(m.focus(), Focus::Sessions);
    assert_eq!(
        m.selected_task().unwrap().task.id.as_str(),
        "api",
        "the task cursor stayed"
    );
}

#[test]
fn the_task_selection_survives_a_refresh_that_reorders_nothing() {
    let mut m = model(one_running(), false);
    press(&mut m, &[key(KeyCode::Tab), ch('j'), ch('j')]);
    m.snapshot = one_running();
    update(&mut m, Msg::Refreshed);
    assert_eq!(m.selected_task().unwrap().task.id.as_str(), "lint");
}

#[test]
fn slash_filters_tasks_by_id_or_state() {
    let mut m = model(one_running(), false);
    press(&mut m, &[ch('/')]);
    assert!(matches!(m.mode(), Mode::Filter));
    assert_eq!(m.focus(), Focus::Tasks);
    press(&mut m, &[ch('r'), ch('u'), ch('n')]);
    assert_eq!(m.filter(), "run");
    let ids: Vec<&str> = m
        .visible_tasks()
        .iter()
        .map(|t| t.task.id.as_str())
        .collect();
    assert_eq!(ids, ["api", "flaky-test"], "running tasks");
    insta::assert_snapshot!(draw(&m, 100, 30).backend());
    press(
        &mut m,
        &[
            key(KeyCode::Backspace),
            key(KeyCode::Backspace),
            key(KeyCode::Backspace),
        ],
    );
    press(&mut m, &[ch('A'), ch('P'), ch('I'), key(KeyCode::Enter)]);
    assert!(matches!(m.mode(), Mode::Normal));
    let ids: Vec<&str> = m
        .visible_tasks()
        .iter()
        .map(|t| t.task.id.as_str())
        .collect();
    assert_eq!(ids, ["api"], "case-insensitive, kept after Enter");
    // `q` typed in the filter is text, not quit.
    press(&mut m, &[ch('/'), ch('q')]);
    assert!(!m.should_quit());
    assert_eq!(m.filter(), "APIq");
    press(&mut m, &[key(KeyCode::Esc)]);
    assert_eq!(m.filter(), "", "Esc clears");
    assert_eq!(m.visible_tasks().len(), 8);
}

#[test]
fn enter_opens_the_selected_task_and_o_its_log_and_esc_returns() {
    let mut m = model(one_running(), false);
    press(&mut m, &[key(KeyCode::Enter)]);
    assert_eq!(
        m.focus(),
        Focus::Tasks,
        "Enter on a session goes to its tasks"
    );
    press(&mut m, &[ch('j'), ch('j'), ch('j'), key(KeyCode::Enter)]);
    match m.mode() {
        Mode::Task(view) => assert_eq!(view.task().as_str(), "api"),
        other => panic!("expected the task, got {other:?}"),
    }
    press(&mut m, &[ch('q')]);
    assert!(matches!(m.mode(), Mode::Normal), "q leaves the task");
    assert!(!m.should_quit());
    press(&mut m, &[ch('o')]);
    match m.mode() {
        Mode::Log(tail) => {
            assert_eq!(tail.task().as_str(), "api");
            assert_eq!(tail.path().to_str(), Some("/repo/.git/br/logs/x/api.1.log"));
        }
        other => panic!("expected the log, got {other:?}"),
    }
    press(&mut m, &[key(KeyCode::Esc)]);
    assert!(matches!(m.mode(), Mode::Normal));
    // A task that never started has no log.
    press(&mut m, &[key(KeyCode::End), ch('o')]);
    assert!(matches!(m.mode(), Mode::Normal));
    assert_eq!(m.status(), Some("task release has not started: no log yet"));
}

#[test]
fn the_log_view_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut snap = one_running();
    let log = dir.path().join("api.1.log");
    std::fs::write(
        &log,
        "compiling api\n\u{1b}[32mok\u{1b}[0m 12 tests\nhalf a li",
    )
    .unwrap();
    let tasks = &mut snap.selected.as_mut().unwrap().tasks;
    tasks[3].task.log_path = Some(log.to_string_lossy().into_owned());
    let mut m = model(snap, false);
    press(
        &mut m,
        &[
            key(KeyCode::Tab),
            key(KeyCode::Down),
            ch('j'),
            ch('j'),
            ch('o'),
        ],
    );
    let Mode::Log(tail) = m.mode_mut() else {
        panic!("log not open")
    };
    let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
    assert!(tail.poll(&store));
    let text = draw(&m, 70, 8).backend().to_string();
    let text = text.replace(&dir.path().to_string_lossy().into_owned(), "[tmp]");
    insta::assert_snapshot!(text);
    press(&mut m, &[ch('q')]);
    assert!(matches!(m.mode(), Mode::Normal));
    assert!(!m.should_quit(), "q leaves the log, not the dashboard");
}

#[test]
fn q_and_ctrl_c_quit() {
    let mut m = model(one_running(), false);
    press(&mut m, &[ch('q')]);
    assert!(m.should_quit());
    let mut m = model(one_running(), false);
    update(
        &mut m,
        Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(m.should_quit());
}

#[test]
fn store_errors_show_in_the_footer() {
    let mut m = model(one_running(), false);
    update(&mut m, Msg::StoreFailed("store is locked".into()));
    assert_eq!(m.status(), Some("store: store is locked"));
    let text = draw(&m, 100, 30).backend().to_string();
    assert!(text.contains("store: store is locked"));
}

// Keys against a real store.

fn plan(name: &str, n: usize) -> br_core::Plan {
    let tasks = (0..n)
        .map(|i| br_core::TaskSpec {
            id: tid(&format!("t{i}")),
            run: "true".into(),
            files: vec![],
            after: vec![],
            timeout: None,
            retries: 0,
            env: Default::default(),
            start: br_core::StartMode::Tip,
            land: br_core::LandMode::Auto,
            on_conflict: br_core::OnConflict::Requeue,
            max_repairs: br_core::plan::DEFAULT_MAX_REPAIRS,
            prompt: None,
            prompt_file: None,
            agent: None,
            pool: None,
        })
        .collect();
    br_core::Plan {
        name: name.into(),
        workers: None,
        base: "HEAD".into(),
        isolation: br_core::Isolation::Shared,
        heartbeat_timeout: std::time::Duration::from_secs(30),
        retries: 0,
        scope: br_core::ScopeMode::Report,
        verify: None,
        on_conflict: br_core::OnConflict::Requeue,
        start: br_core::StartMode::Tip,
        land: br_core::LandMode::Auto,
        max_repairs: br_core::plan::DEFAULT_MAX_REPAIRS,
        keep: Vec::new(),
        agents: Vec::new(),
        pools: Default::default(),
        copy: Vec::new(),
        setup: None,
        setup_inputs: Vec::new(),
        ports: 0,
        remote: None,
        tasks,
    }
}

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
    (dir, store)
}

fn submit(store: &dyn Store, name: &str) -> br_store::Session {
    store
        .create_session(&br_store::NewSession {
            plan: plan(name, 3),
            repo_root: "/repo".into(),
            repo_id: None,
            plan_path: None,
            base_commit: None,
            workers_wanted: 1,
        })
        .unwrap()
}

/// Keys in, store actions out: what the run loop does, without a terminal.
fn drive(store: &dyn Store, m: &mut Model, keys: &[Msg]) {
    for k in keys {
        if let Some(action) = update(m, k.clone()) {
            perform(store, m, action);
        }
    }
    m.snapshot = build_snapshot(store, m.selected_session()).unwrap();
    update(m, Msg::Refreshed);
}

#[test]
fn p_r_and_c_pause_resume_and_cancel_the_selected_session() {
    let (_dir, store) = temp_store();
    let first = submit(&store, "first");
    std::thread::sleep(std::time::Duration::from_millis(5));
    let second = submit(&store, "second");
    let snap = build_snapshot(&store, None).unwrap();
    let mut m = Model::new(snap, &options(false));
    update(&mut m, Msg::Refreshed);
    assert_eq!(m.selected_session(), Some(&second.id), "newest first");
    drive(&store, &mut m, &[ch('j'), ch('p')]);
    assert_eq!(m.selected_session(), Some(&first.id));
    assert_eq!(
        store.session(&first.id).unwrap().status,
        SessionStatus::Paused
    );
    assert_eq!(
        store.session(&second.id).unwrap().status,
        SessionStatus::Created
    );
    assert_eq!(m.status(), Some("paused session first"));
    drive(&store, &mut m, &[ch('r')]);
    assert_eq!(
        store.session(&first.id).unwrap().status,
        SessionStatus::Running
    );
    // Resuming a running session is refused by the store; the dashboard says so and goes on.
    drive(&store, &mut m, &[ch('r')]);
    assert_eq!(
        m.status().map(|s| s.starts_with("cannot resume session")),
        Some(true),
        "{:?}",
        m.status()
    );
    drive(&store, &mut m, &[ch('c'), ch('n')]);
    assert_eq!(
        store.session(&first.id).unwrap().status,
        SessionStatus::Running
    );
    drive(&store, &mut m, &[ch('c'), ch('y')]);
    let cancelled = store.session(&first.id).unwrap();
    assert_eq!(cancelled.status, SessionStatus::Cancelled);
    assert_eq!(cancelled.cancelled_tasks, 3);
    let row = m
        .snapshot
        .selected
        .as_ref()
        .unwrap()
        .tasks
        .iter()
        .map(|t| t.task.state)
        .collect::<Vec<_>>();
    assert_eq!(row, [TaskState::Cancelled; 3], "the snapshot shows it");
}

#[test]
fn finished_tasks_show_scope_violations_and_predicted_conflicts() {
    let text = draw(&model(finished_with_notes(), false), 140, 34)
        .backend()
        .to_string();
    let stray = text.lines().find(|l| l.contains("stray")).unwrap();
    assert!(stray.contains("outside its files: b.txt"), "{stray}");
    let left = text.lines().find(|l| l.contains(" left ")).unwrap();
    assert!(
        left.contains("conflicts with right on config.txt"),
        "{left}"
    );
}

/// Runs the next ready task of `session` to a failure, as a real worker would.
fn fail_next(store: &dyn Store, session: &br_store::Session) -> String {
    let worker = store
        .register_worker(&br_store::NewWorker {
            host: "test-host".into(),
            pid: 4242,
            session: Some(session.id.clone()),
            heartbeat_timeout: std::time::Duration::from_secs(30),
        })
        .unwrap();
    let logs = std::env::temp_dir().join("br-tui-test-logs");
    let br_store::Claim::Task(task) = store
        .claim_next_task(&br_store::ClaimRequest {
            worker: &worker,
            session: Some(&session.id),
            log_dir: &logs,
            repo_id: None,
            remote_only: false,
        })
        .unwrap()
    else {
        panic!("a ready task")
    };
    store
        .finish_attempt(&task.lease, &br_core::Outcome::Failed { exit_code: 1 })
        .unwrap();
    store.stop_worker(&worker).unwrap();
    task.lease.task_id.to_string()
}

#[test]
fn shift_r_retries_the_session_or_the_task_under_the_cursor() {
    let (_dir, store) = temp_store();
    let s = submit(&store, "build");
    assert_eq!(fail_next(&store, &s), "t0");
    let mut m = Model::new(build_snapshot(&store, None).unwrap(), &options(false));
    update(&mut m, Msg::Refreshed);

    // The sessions have the keyboard: the whole session.
    let actions = press(&mut m, &[ch('R')]);
    assert_eq!(
        actions,
        [Action::Retry {
            session: s.id.clone(),
            tasks: vec![]
        }]
    );
    drive(&store, &mut m, &[ch('R')]);
    assert_eq!(
        m.status(),
        Some(
            format!(
                "retrying t0 of session build; no worker serves it: run `br resume {}`",
                s.id
            )
            .as_str()
        )
    );
    let t0 = store.task(&s.id, &tid("t0")).unwrap();
    assert_eq!((t0.state, t0.attempts), (TaskState::Ready, 1));

    // The tasks have it: the task under the cursor, refused when it did not end badly.
    assert_eq!(fail_next(&store, &s), "t0");
    drive(&store, &mut m, &[key(KeyCode::Tab), ch('j'), ch('R')]);
    assert_eq!(
        m.status(),
        Some(format!(
            "cannot retry task t1 (ready) of session {}: only failed, skipped and cancelled tasks \
             run again",
            s.id
        ))
        .as_deref()
    );
    drive(&store, &mut m, &[ch('k'), ch('R')]);
    assert!(
        m.status()
            .is_some_and(|s| s.starts_with("retrying t0 of session build")),
        "{:?}",
        m.status()
    );
    assert_eq!(
        store.task(&s.id, &tid("t0")).unwrap().state,
        TaskState::Ready
    );
    let text = draw(&m, 100, 30).backend().to_string();
    assert!(
        text.contains("retrying t0 of session build"),
        "the footer says it"
    );
}

#[test]
fn enter_shows_a_retried_tasks_attempts_read_from_the_store() {
    let (_dir, store) = temp_store();
    let s = submit(&store, "build");
    assert_eq!(fail_next(&store, &s), "t0");
    store
        .retry_tasks(&s.id, br_core::retry::RetryScope::All)
        .unwrap();
    assert_eq!(fail_next(&store, &s), "t0");
    let mut m = Model::new(build_snapshot(&store, None).unwrap(), &options(false));
    update(&mut m, Msg::Refreshed);
    press(&mut m, &[key(KeyCode::Tab), key(KeyCode::Enter)]);
    assert!(br_tui::poll(&store, &mut m), "the task is read");
    let Mode::Task(view) = m.mode() else {
        panic!("the task view is open: {:?}", m.mode())
    };
    let attempts: Vec<_> = view
        .detail()
        .unwrap()
        .attempts
        .iter()
        .map(|a| (a.attempt.0, a.reason, a.outcome, a.exit_code))
        .collect();
    assert_eq!(
        attempts,
        [
            (
                1,
                Some(RunReason::First),
                Some(OutcomeKind::Failed),
                Some(1)
            ),
            (
                2,
                Some(RunReason::Retry),
                Some(OutcomeKind::Failed),
                Some(1)
            ),
        ]
    );
    assert_eq!(view.selected().unwrap().attempt.0, 2, "the latest");
    let text = draw(&m, 100, 24).backend().to_string();
    insta::with_settings!({filters => vec![
        (r"\d\d:\d\d:\d\d", "[time]"),
        (r"\bw[0-9a-f]{6}\b", "[worker]"),
        (r"\b\d+ms\b", "[ms]"),
        (r"/[^ ]*br-tui-test-logs/[^ ]*", "[log]"),
    ]}, {
        insta::assert_snapshot!(text);
    });
    // Every size, the compact one included, gets something sensible.
    for (w, h) in [(80, 24), (60, 12), (30, 8), (10, 3), (1, 1), (0, 0)] {
        draw(&m, w, h);
    }
    press(&mut m, &[ch('[')]);
    br_tui::poll(&store, &mut m);
    let Mode::Task(view) = m.mode() else {
        panic!("still the task view")
    };
    assert_eq!(view.selected().unwrap().attempt.0, 1, "[ goes back");
    assert_eq!(view.log().unwrap().attempt(), 1, "and shows that log");
    press(&mut m, &[ch(']')]);
    let Mode::Task(view) = m.mode() else {
        panic!("still the task view")
    };
    assert!(view.follows_latest(), "] past the last follows the latest");
    press(&mut m, &[ch('o')]);
    let Mode::Task(view) = m.mode() else {
        panic!("still the task view")
    };
    assert_eq!(view.log_size(), br_tui::LogSize::Full);
    press(&mut m, &[key(KeyCode::Esc)]);
    assert!(
        matches!(m.mode(), Mode::Task(_)),
        "Esc shrinks the log first"
    );
    press(&mut m, &[key(KeyCode::Esc)]);
    assert!(matches!(m.mode(), Mode::Normal));
    // Without a differ (outside a repository), `d` says there is no diff.
    press(&mut m, &[ch('d')]);
    assert!(br_tui::poll(&store, &mut m));
    let text = draw(&m, 100, 12).backend().to_string();
    assert!(
        text.contains("no diffs here: the dashboard runs outside a repository"),
        "{text}"
    );
    press(&mut m, &[key(KeyCode::Esc)]);
    assert!(matches!(m.mode(), Mode::Normal));
}
