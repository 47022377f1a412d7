//! The web dashboard in a real browser: headless Chromium, driven over WebDriver by chromedriver,
//! loads the page `br serve` serves (with a token: opened once as `/?token=…`, then on its
//! cookie) while `br run` works, and the page's own JavaScript shows the session live, escapes
//! what the store holds, follows it to the end, pauses it from its button, says so when a
//! session it resumes has no worker to run it, and pages through a large session's tasks.
//!
//! Needs `BR_TEST_CHROMEDRIVER` (the path of chromedriver, with Chromium installed; `.ci/run`
//! installs both and sets it); without it the test says it was skipped.

mod common;

use std::time::Duration;

use common::browser::{Background, Browser, DRIVER_VAR};
use common::{TestRepo, poll};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// chromedriver's path, or none (and the test says it was skipped) outside CI.
fn driver() -> Option<String> {
    let Ok(driver) = std::env::var(DRIVER_VAR) else {
        // CI must never be green by skipping: there the browser is required.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {DRIVER_VAR} is not: the browser test must run in CI"
        );
        println!(
            "skipped: {DRIVER_VAR} is not set (set it to chromedriver's path to run this test)"
        );
        return None;
    };
    Some(driver)
}

/// Starts `br serve` in `repo` on a free loopback port; its address.
fn serve(repo: &TestRepo) -> (Background, String) {
    let serve = repo.br_command(&["serve", "--addr", "127.0.0.1:0"]);
    Background::start(serve, |line| {
        line.strip_prefix("listening on ").map(str::to_string)
    })
}

#[test]
fn the_page_shows_a_run_live_escapes_store_text_and_pauses_from_its_button() {
    let Some(driver) = driver() else {
        return;
    };
    let repo = TestRepo::new();
    // The session's name is markup: the page must show it as text.
    repo.write(
        "br.toml",
        "name = \"web <b>bold</b>\"\nisolation = \"shared\"\n\
         [[task]]\nid = \"waiter\"\nrun = 'while [ ! -f release ]; do sleep 0.05; done'\n\
         files = [\"out\"]\n\
         [[task]]\nid = \"after-it\"\nrun = 'true'\nafter = [\"waiter\"]\n",
    );
    let run = repo.spawn(&["run", "--workers", "1", "--no-dashboard"]);
    // With a token, as beyond loopback: the page must work on the cookie alone.
    let token = "browser-Token_1";
    let mut serve = repo.br_command(&["serve", "--addr", "127.0.0.1:0"]);
    serve.env("BR_SERVE_TOKEN", token);
    let (_server, url) = Background::start(serve, |line| {
        line.strip_prefix("listening on ").map(str::to_string)
    });
    let browser = Browser::open(&driver);
    browser.go(&url);
    browser.text_when("the refusal without the token", |t| {
        t.contains("needs its token")
    });
    browser.go(&format!("{url}/?token={token}"));
    // The token went into a cookie no script can read, and out of the address.
    assert_eq!(
        browser.eval("return location.pathname + location.search"),
        "/"
    );
    assert_eq!(browser.eval("return document.cookie"), "");

    let running = browser.text_when("the running session", |t| {
        t.contains("web <b>bold</b>") && t.contains("waiter") && t.contains("running")
    });
    assert!(running.contains("waits for waiter"), "{running}");
    // Events read as the terminal says them (EventDetail::describe), not as raw JSON.
    assert!(running.contains("2 tasks, shared isolation"), "{running}");
    assert!(!running.contains("\"isolation\""), "{running}");
    assert_eq!(
        browser.eval("return document.getElementById('conn').className"),
        "live"
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('b').length"),
        0,
        "the session name was not parsed as HTML"
    );

    // The page's pause button pauses the session in the store.
    browser.eval(
        "for (const b of document.querySelectorAll('button')) \
         { if (b.textContent === 'pause') { b.click(); return true; } } return false;",
    );
    poll("the session paused", LONG, || {
        (repo.status("web <b>bold</b>")["status"] == "paused").then_some(())
    });
    browser.text_when("paused shown, and why in words", |t| {
        t.contains("paused") && t.contains("was running")
    });
    browser.eval(
        "for (const b of document.querySelectorAll('button')) \
         { if (b.textContent === 'resume') { b.click(); return true; } } return false;",
    );
    poll("the session running again", LONG, || {
        (repo.status("web <b>bold</b>")["status"] == "running").then_some(())
    });

    repo.write("release", "");
    // The status cell (cells are tab-separated in the text), not the statistics' "completed".
    let done = browser.text_when("the completed session", |t| {
        t.contains("\tcompleted\t") && t.contains("100%")
    });
    assert!(done.contains("after-it"), "{done}");
    assert_eq!(run.wait(LONG).code, 0);

    // Resumed from the page while no worker serves it: the session is running in the store,
    // but nothing runs, and the page says so instead of showing it at work.
    repo.write(
        "idle.toml",
        "name = \"idle\"\nisolation = \"shared\"\n[[task]]\nid = \"later\"\nrun = 'true'\n",
    );
    assert_eq!(repo.br(&["submit", "idle.toml"]).code, 0);
    assert_eq!(repo.br(&["pause", "idle"]).code, 0);
    browser.text_when("the paused session", |t| t.contains("\tpaused\t"));
    // Its row's resume button is the only one (the other session has ended).
    poll("the resume button of the paused session", LONG, || {
        let clicked = browser.eval(
            "for (const b of document.querySelectorAll('button')) \
             { if (b.textContent === 'resume') { b.click(); return true; } } return false;",
        );
        (clicked == true).then_some(())
    });
    let shown = browser.text_when("that no worker serves it", |t| {
        t.contains("no worker serves session idle") && t.contains("running, no worker serves it")
    });
    assert!(shown.contains("br resume"), "{shown}");
    assert_eq!(repo.status("idle")["status"], "running");

    // A large session's tasks come one page at a time, and the pager moves through them.
    let mut plan = String::from("name = \"many\"\nisolation = \"shared\"\n");
    for i in 0..205 {
        plan.push_str(&format!("[[task]]\nid = \"m{i:03}\"\nrun = 'true'\n"));
    }
    repo.write("many.toml", &plan);
    assert_eq!(repo.br(&["submit", "many.toml"]).code, 0);
    poll("the many session's row, clicked", LONG, || {
        let clicked = browser.eval(
            "for (const r of document.querySelectorAll('tr.session')) \
             { if (r.children[0].textContent === 'many') { r.click(); return true; } } \
             return false;",
        );
        (clicked == true).then_some(())
    });
    browser.text_when("the first page", |t| {
        t.contains("TASKS OF MANY") && t.contains("tasks 1–200 of 205")
    });
    // The task list, not the dependency graph below it, which draws every task.
    let listed = || {
        browser
            .eval("return document.getElementById('tasks').innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let first = listed();
    assert!(first.contains("m199") && !first.contains("m200"), "{first}");
    browser.eval(
        "for (const b of document.querySelectorAll('#pager button')) \
         { if (b.textContent === 'next') { b.click(); return true; } } return false;",
    );
    browser.text_when("the last page", |t| t.contains("tasks 201–205 of 205"));
    let last = listed();
    assert!(last.contains("m204") && !last.contains("m199"), "{last}");
    assert_eq!(
        browser.eval("return location.hash.includes('offset=200')"),
        true
    );

    // Sessions are found by name and by status.
    let shown_sessions = |search: &str, status: &str| {
        browser.eval(&format!(
            "const q = document.getElementById('session-search'); q.value = {search}; \
             q.dispatchEvent(new Event('input')); \
             const s = document.getElementById('session-status'); s.value = {status}; \
             s.dispatchEvent(new Event('change')); \
             return [...document.querySelectorAll('tr.session')].map(r => r.children[0].textContent)",
            search = json!(search),
            status = json!(status),
        ))
    };
    assert_eq!(shown_sessions("man", ""), json!(["many"]));
    assert_eq!(shown_sessions("", "completed"), json!(["web <b>bold</b>"]));
    assert_eq!(shown_sessions("idle", "completed"), json!([]));
}

/// Clicks the first element matching `selector` whose text is `text` (any text when empty);
/// whether there was one.
fn click(browser: &Browser, selector: &str, text: &str) -> bool {
    let script = format!(
        "for (const e of document.querySelectorAll({selector})) \
         {{ if ({text} === '' || e.textContent === {text}) {{ e.click(); return true; }} }} \
         return false;",
        selector = json!(selector),
        text = json!(text),
    );
    browser.eval(&script) == true
}

#[test]
fn a_task_opens_from_the_run_page_with_its_live_log_diff_and_retry() {
    let Some(driver) = driver() else {
        return;
    };
    let repo = TestRepo::new();
    let release = repo.path().join("release");
    let fixed = repo.path().join("fixed");
    // `talk` writes a file (its diff) and says two things, the second only once released (its
    // log grows while it is open); `flaky` fails until `fixed` exists; `last` waits for both.
    repo.commit_plan(&format!(
        "name = \"run page\"\n\
         [[task]]\nid = \"talk\"\nfiles = [\"greet.txt\"]\n\
         run = 'printf \"hello\\n\" > greet.txt; echo first-line; \
                while [ ! -f {release} ]; do sleep 0.05; done; echo second-line'\n\
         [[task]]\nid = \"flaky\"\nfiles = [\"flaky.txt\"]\n\
         run = 'echo trying; test -f {fixed} && echo ok > flaky.txt'\n\
         [[task]]\nid = \"last\"\nafter = [\"talk\", \"flaky\"]\nrun = 'true'\n",
        release = release.display(),
        fixed = fixed.display(),
    ));
    let run = repo.spawn(&["run", "--workers", "2", "--no-dashboard"]);
    let (_server, url) = serve(&repo);
    let browser = Browser::open(&driver);
    browser.resize(1280, 1000);
    browser.go(&url);
    browser.text_when("the run page", |t| {
        t.contains("TIMELINE") && t.contains("DEPENDENCIES") && t.contains("talk")
    });

    // Open `talk` from the run page's task list: its attempt, and its log as it grows.
    poll("talk's row, clicked", LONG, || {
        click(&browser, "tr.task[data-task='talk']", "").then_some(())
    });
    let view = browser.text_when("talk's task view", |t| t.contains("task talk"));
    assert!(view.contains("attempts"), "{view}");
    let log = || {
        browser
            .eval("const l = document.getElementById('task-log'); return l ? l.textContent : ''")
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    poll("the log's first line", LONG, || {
        log().contains("first-line").then_some(())
    });
    assert!(!log().contains("second-line"), "{}", log());
    repo.write("release", "");
    poll("the log grown by its second line", LONG, || {
        log().contains("second-line").then_some(())
    });
    // Its diff: the file it wrote, the line it added.
    poll("the diff tab, clicked", LONG, || {
        click(&browser, "#task-view .tabs button[data-tab='diff']", "").then_some(())
    });
    let diff = browser.text_when("talk's diff", |t| {
        t.contains("greet.txt") && t.contains("+hello")
    });
    assert!(diff.contains("1 file changed"), "{diff}");
    // The timeline drew the attempts; the graph drew each task, `last` below the other two.
    assert_eq!(
        browser.eval("return timelineBars.length >= 2"),
        true,
        "the timeline has a bar per attempt"
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#graph .chip').length"),
        3
    );

    // `flaky` failed (and skipped `last`): retried from its task view once fixed, it succeeds.
    poll("flaky failed", LONG, || {
        let status = repo.status("run page");
        let flaky = status["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["id"] == "flaky"))
            .cloned()?;
        (flaky["state"] == "failed").then_some(())
    });
    assert_eq!(run.wait(LONG).code, 1, "the session failed with flaky");
    click(&browser, "#task-view .close", "");
    poll("flaky's row, clicked", LONG, || {
        click(&browser, "tr.task[data-task='flaky']", "").then_some(())
    });
    browser.text_when("flaky's task view, failed", |t| {
        t.contains("task flaky failed") && t.contains("trying")
    });
    repo.write("fixed", "");
    poll("the retry button of the task view, clicked", LONG, || {
        click(&browser, "#task-view button", "retry").then_some(())
    });
    // Nothing serves the session now that `br run` ended: a worker does.
    let worker = repo.spawn(&["worker", "--exit-when-idle"]);
    let done = browser.text_when("flaky succeeded in its second attempt", |t| {
        t.contains("task flaky succeeded") && t.contains("retry")
    });
    assert!(done.contains("trying"), "{done}");
    assert_eq!(worker.wait(LONG).code, 0);
    poll("the session completed", LONG, || {
        (repo.status("run page")["status"] == "completed").then_some(())
    });

    // 700 px wide (and as narrow as a phone), the main view does not scroll sideways.
    click(&browser, "#task-view .close", "");
    for width in [700, 400] {
        browser.resize(width, 900);
        poll("the page laid out again", LONG, || {
            (browser.eval("return window.innerWidth").as_u64()? < 1000).then_some(())
        });
        let (scroll, inner) = (
            browser.eval("return document.documentElement.scrollWidth"),
            browser.eval("return window.innerWidth"),
        );
        assert!(
            scroll.as_u64() <= inner.as_u64(),
            "at {width} px the page is {scroll} px wide in a {inner} px window"
        );
    }
}
