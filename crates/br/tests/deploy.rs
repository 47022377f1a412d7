//! The files in `deploy/` stay true to br: every `br worker` command they run is one the built
//! binary accepts (its own parser reads it, with the placeholders the files define filled in),
//! a stopping worker is given more time than its `--kill-grace`, the liveness probes read the
//! file the worker touches, and the image, the manifest and the unit agree on the user, its home
//! and the entrypoint. There is no YAML parser in the workspace, so the manifest is read as text
//! in the shape it is written in; docs/machines.md gives the schema check to run by hand.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BR: &str = env!("CARGO_BIN_EXE_br");

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs br's parser over `args` and stops at `--help`: unknown flags, missing values and values
/// that do not parse fail before it, as they would for the real command.
fn assert_br_accepts(args: &[String], source: &str) {
    let out = Command::new(BR)
        .args(args)
        .arg("--help")
        .output()
        .expect("run br");
    assert!(
        out.status.success(),
        "{source} runs `br {}`, which br refuses:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces each `open NAME close` in `text` (`$(NAME)`, `${NAME}`) with `value(NAME)`.
fn substitute(text: &str, open: &str, close: char, value: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        let after = &rest[at + open.len()..];
        let Some(end) = after.find(close) else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str(&value(&after[..end]));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `args` of the manifest's containers, written as flow sequences (`args: ["worker", …]`),
/// which are JSON.
fn container_args(manifest: &str) -> Vec<Vec<String>> {
    manifest
        .lines()
        .filter_map(|line| line.trim().strip_prefix("args:"))
        .map(|list| {
            serde_json::from_str(list.trim()).unwrap_or_else(|e| {
                panic!("worker.yaml: args must be one flow sequence of strings ({e}): {list}")
            })
        })
        .collect()
}

/// The value the manifest's container env gives `name` (`- name: NAME` then `value: …`).
fn manifest_env(manifest: &str, name: &str) -> String {
    let mut lines = manifest.lines().map(str::trim);
    let value = lines
        .find(|line| *line == format!("- name: {name}"))
        .and_then(|_| lines.next())
        .and_then(|line| line.strip_prefix("value:"));
    let Some(value) = value else {
        panic!("worker.yaml uses $({name}), but its env gives it no value");
    };
    value.trim().trim_matches('"').to_string()
}

/// `KEY=VALUE` lines of a systemd environment file.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("worker.env: not KEY=VALUE: {line}"));
            (key.to_string(), value.trim_matches('"').to_string())
        })
        .collect()
}

/// The value of `KEY=…` in a unit file.
fn unit_setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The argument of `flag` in `args`, if given.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The `--kill-grace` a worker started with `args` has: the one given, else br's default as
/// `br worker --help` states it.
fn kill_grace(args: &[String]) -> Duration {
    let given = flag_value(args, "--kill-grace").map(str::to_string);
    let text = given.unwrap_or_else(|| {
        let out = Command::new(BR)
            .args(["worker", "--help"])
            .output()
            .expect("run br worker --help");
        // Help is wrapped to the terminal: read it as one line.
        let help = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let entry = &help[help.find("--kill-grace <").expect("--kill-grace in help")..];
        let default = &entry[entry.find("[default: ").expect("a default") + 10..];
        default[..default.find(']').expect("]")].to_string()
    });
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("kill grace {text}: {e}"))
}

/// The argument of the final stage's last `NAME` instruction.
fn dockerfile_instruction<'a>(dockerfile: &'a str, name: &str) -> &'a str {
    dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .next_back()
        .unwrap_or_else(|| panic!("the Dockerfile has no {name}"))
}

fn kubernetes_worker_args() -> Vec<String> {
    let manifest = deploy_file("kubernetes/worker.yaml");
    let all = container_args(&manifest);
    assert_eq!(all.len(), 1, "worker.yaml: one container with args");
    all.into_iter().next().expect("one")
}

fn systemd_worker_args() -> Vec<String> {
    let unit = deploy_file("systemd/br-worker@.service");
    let env = env_file(&deploy_file("systemd/worker.env"));
    let exec = unit_setting(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "br-worker@.service: one ExecStart");
    let value = |name: &str| {
        let Some((_, value)) = env.iter().find(|(key, _)| key == name) else {
            panic!("ExecStart uses ${{{name}}}, which worker.env does not set");
        };
        value.clone()
    };
    let line = substitute(exec[0], "${", '}', &value);
    let mut words = line.split_whitespace().map(str::to_string);
    assert_eq!(
        words.next().as_deref(),
        Some("/usr/local/bin/br"),
        "ExecStart runs br where docs/machines.md installs it"
    );
    words.collect()
}

#[test]
fn kubernetes_worker_runs_a_command_br_accepts() {
    let manifest = deploy_file("kubernetes/worker.yaml");
    let args: Vec<String> = kubernetes_worker_args()
        .iter()
        .map(|arg| substitute(arg, "$(", ')', &|name| manifest_env(&manifest, name)))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("worker"));
    assert!(
        flag_value(&args, "--repo").is_some(),
        "the Deployment's worker serves a repository without a checkout"
    );
    assert_br_accepts(&args, "deploy/kubernetes/worker.yaml");
}

#[test]
fn systemd_worker_runs_a_command_br_accepts() {
    let args = systemd_worker_args();
    assert_eq!(args.first().map(String::as_str), Some("worker"));
    assert!(flag_value(&args, "--repo").is_some());
    assert_br_accepts(&args, "deploy/systemd/br-worker@.service");
    let env = env_file(&deploy_file("systemd/worker.env"));
    for needed in ["BR_STORE", "PGPASSWORD"] {
        assert!(
            env.iter().any(|(key, _)| key == needed),
            "worker.env: {needed} is missing"
        );
    }
}

#[test]
fn stopping_workers_get_more_time_than_their_kill_grace() {
    let manifest = deploy_file("kubernetes/worker.yaml");
    let pod_grace: u64 = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("worker.yaml sets terminationGracePeriodSeconds")
        .trim()
        .parse()
        .expect("a number of seconds");
    let grace = kill_grace(&kubernetes_worker_args());
    assert!(
        Duration::from_secs(pod_grace) > grace,
        "worker.yaml: terminationGracePeriodSeconds ({pod_grace}) must exceed --kill-grace \
         ({grace:?}), or the pod is killed before its worker records the stopped attempt"
    );

    let unit = deploy_file("systemd/br-worker@.service");
    let stop = unit_setting(&unit, "TimeoutStopSec");
    assert_eq!(stop.len(), 1, "br-worker@.service sets TimeoutStopSec");
    let stop: u64 = stop[0].parse().expect("TimeoutStopSec in seconds");
    let grace = kill_grace(&systemd_worker_args());
    assert!(
        Duration::from_secs(stop) > grace,
        "br-worker@.service: TimeoutStopSec ({stop}) must exceed --kill-grace ({grace:?})"
    );
    assert_eq!(
        unit_setting(&unit, "KillMode"),
        ["mixed"],
        "SIGTERM to br alone: it stops its task with its own grace"
    );
}

#[test]
fn liveness_probes_read_the_file_the_worker_touches() {
    let args = kubernetes_worker_args();
    let alive = flag_value(&args, "--alive-file").expect("the worker is given --alive-file");
    let manifest = deploy_file("kubernetes/worker.yaml");
    for probe in ["livenessProbe:", "startupProbe:"] {
        let at = manifest
            .find(probe)
            .unwrap_or_else(|| panic!("worker.yaml has no {probe}"));
        let command = manifest[at..]
            .lines()
            .find(|line| line.trim().starts_with("command:"))
            .expect("an exec command");
        assert!(
            command.contains(&format!("stat -c %Y {alive}")),
            "{probe} must check the age of {alive}: {command}"
        );
    }
}

#[test]
fn image_manifest_and_unit_agree_on_user_home_and_entrypoint() {
    let dockerfile = deploy_file("Dockerfile");
    let manifest = deploy_file("kubernetes/worker.yaml");
    let instruction = |name| dockerfile_instruction(&dockerfile, name);
    // The manifest's args are br's, so the image must run br with them.
    let entrypoint: Vec<String> =
        serde_json::from_str(instruction("ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    assert_eq!(
        entrypoint.last().map(String::as_str),
        Some("/usr/local/bin/br")
    );
    assert!(
        entrypoint[0].ends_with("tini"),
        "an init runs br: {entrypoint:?}"
    );

    let (uid, gid) = instruction("USER")
        .split_once(':')
        .expect("USER uid:gid, numeric so runAsNonRoot can check it");
    for (key, want) in [("runAsUser:", uid), ("runAsGroup:", gid), ("fsGroup:", gid)] {
        let got = manifest
            .lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("worker.yaml sets no {key}"));
        assert_eq!(
            got.trim(),
            want,
            "worker.yaml {key} against the image's USER"
        );
    }
    assert!(manifest.contains("runAsNonRoot: true"));

    // The clone lives under HOME: the manifest's writable volume must be the image's HOME.
    let home = instruction("ENV")
        .strip_prefix("HOME=")
        .expect("ENV HOME=…");
    assert!(
        manifest.contains(&format!("mountPath: {home}\n")),
        "worker.yaml mounts a volume at the image's HOME ({home})"
    );
}

#[test]
fn kubernetes_manifest_holds_the_secrets_and_the_deployment() {
    let manifest = deploy_file("kubernetes/worker.yaml");
    assert!(!manifest.contains('\t'), "YAML indents with spaces only");
    let kinds: Vec<&str> = manifest
        .split("\n---\n")
        .map(|doc| {
            assert!(
                doc.lines().any(|line| line.starts_with("apiVersion: ")),
                "every document has an apiVersion:\n{doc}"
            );
            doc.lines()
                .find_map(|line| line.strip_prefix("kind: "))
                .expect("every document has a kind")
        })
        .collect();
    assert_eq!(kinds, ["Secret", "Secret", "Deployment"]);
    // The store's URL and password come from a Secret, never from the pod spec itself.
    assert!(manifest.contains("  BR_STORE: "));
    assert!(manifest.contains("  PGPASSWORD: "));
    assert!(manifest.contains("secretRef:"));
}
