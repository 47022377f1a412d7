//! Coding agents as tasks, through the real CLI, with stand-in agents (scripts that behave like
//! the real CLIs: read the prompt as the profile passes it, edit files): `br agents` shows the
//! profiles in effect, a task names an agent instead of a command, and a plan that gets them
//! wrong is refused before anything is recorded.

mod common;

use common::TestRepo;
use serde_json::Value;

fn commit_plan(repo: &TestRepo, plan: &str) {
    repo.write("br.toml", plan);
    repo.git(&["add", "--all"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
}

#[test]
fn br_agents_lists_the_built_ins_and_the_plan_s_own_over_them() {
    let repo = TestRepo::new();
    let built_in = repo.br(&["agents", "--json"]);
    assert_eq!(built_in.code, 0, "{}", built_in.stderr);
    let list: Value = serde_json::from_str(&built_in.stdout).expect("JSON");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["claude", "codex", "aider", "gemini"]);

    repo.write(
        "br.toml",
        r#"[agent.claude]
pool = "anthropic"
[agent.stand-in]
run = "sh agent.sh"
[pool.anthropic]
size = 2
[[task]]
id = "a"
agent = "stand-in"
"#,
    );
    let with_plan = repo.br(&["agents"]);
    assert_eq!(with_plan.code, 0, "{}", with_plan.stderr);
    let claude = with_plan
        .stdout
        .lines()
        .find(|l| l.starts_with("claude"))
        .expect("claude");
    assert!(
        claude.contains("plan") && claude.contains("anthropic"),
        "{claude}"
    );
    assert!(
        claude.contains("CLAUDE_CONFIG_DIR"),
        "the rest of the built-in stays: {claude}"
    );
    assert!(
        with_plan.stdout.lines().any(|l| l.starts_with("stand-in")),
        "{}",
        with_plan.stdout
    );
}

#[test]
fn a_task_runs_its_agent_on_its_prompt_and_lands() {
    let repo = TestRepo::new();
    // Like `aider --message-file`: the prompt arrives as a file the profile names.
    repo.write(
        "agent.sh",
        "test -f \"$1\" || { echo 'no prompt file' >&2; exit 9; }\n\
         head -n 1 \"$1\" > answer.txt\n",
    );
    commit_plan(
        &repo,
        r#"name = "agents"
[agent.stand-in]
run = 'sh agent.sh "$BR_PROMPT_FILE"'
[[task]]
id = "answer"
agent = "stand-in"
prompt = "Answer forty-two."
"#,
    );
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let status = repo.status(&repo.session_id());
    let task = &status["tasks"][0];
    assert_eq!(task["landing"], "landed", "{status:#}");
    assert_eq!(task["run"], "sh agent.sh \"$BR_PROMPT_FILE\"");
    let branch = format!("br/{}/integration", status["slug"].as_str().expect("slug"));
    assert_eq!(
        repo.git(&["show", &format!("{branch}:answer.txt")]),
        "Answer forty-two."
    );
}

#[test]
fn a_plan_that_gets_an_agent_wrong_is_refused_before_anything_is_recorded() {
    let repo = TestRepo::new();
    for (plan, says) in [
        (
            "[[task]]\nid = \"a\"\nrun = \"x\"\nagent = \"claude\"\n",
            "has both `run` and `agent`",
        ),
        (
            "[[task]]\nid = \"a\"\nagent = \"gpt-9\"\n",
            "unknown agent `gpt-9`",
        ),
        (
            "[[task]]\nid = \"a\"\nagent = \"claude\"\npool = \"nope\"\n",
            "unknown pool `nope`",
        ),
    ] {
        repo.write("br.toml", plan);
        let run = repo.br(&["run", "--no-dashboard"]);
        assert_eq!(run.code, 2, "{plan}\n{}", run.stderr);
        assert!(run.stderr.contains(says), "{plan}\n{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    assert!(!repo.store_path().exists(), "nothing recorded");
}

#[test]
fn keys_not_carried_out_yet_are_said_at_submit() {
    let repo = TestRepo::new();
    commit_plan(
        &repo,
        "copy = [\".env\"]\n[pool.p]\nsize = 1\n[[task]]\nid = \"a\"\nrun = \"true\"\npool = \"p\"\n",
    );
    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    for key in ["`pool`", "`copy`"] {
        assert!(
            submitted
                .stderr
                .lines()
                .any(|l| l.starts_with("warning: ") && l.contains(key)),
            "{key}: {}",
            submitted.stderr
        );
    }
}
