//! The crate graph keeps its shape: `br → br-tui, br-web, br-exec → br-store → br-core`, and
//! `br-exec → br-git → br-core`. Dashboards never depend on the executor or on git; git knows
//! nothing of the store; the domain depends on nothing of br.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

#[test]
fn crates_depend_only_in_the_allowed_direction() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
        ("br-core", BTreeSet::new()),
        ("br-store", BTreeSet::from(["br-core"])),
        ("br-git", BTreeSet::from(["br-core"])),
        ("br-exec", BTreeSet::from(["br-core", "br-git", "br-store"])),
        ("br-tui", BTreeSet::from(["br-core", "br-store"])),
        ("br-web", BTreeSet::from(["br-core", "br-store"])),
        (
            "br",
            BTreeSet::from([
                "br-core", "br-store", "br-exec", "br-git", "br-tui", "br-web",
            ]),
        ),
    ]);
    let mut seen = BTreeSet::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name");
        seen.insert(name.to_string());
        let Some(ok) = allowed.get(name) else {
            panic!("crate {name} is not in the architecture's crate map (ARCHITECTURE.md)");
        };
        for dep in package["dependencies"].as_array().expect("deps") {
            let dep_name = dep["name"].as_str().expect("dep name");
            // Dev-dependencies may reach further (tests drive whole binaries).
            if dep_name.starts_with("br") && dep["kind"].is_null() {
                assert!(
                    ok.contains(dep_name),
                    "{name} must not depend on {dep_name}"
                );
            }
        }
    }
    for required in ["br", "br-core", "br-store", "br-git", "br-exec"] {
        assert!(
            seen.contains(required),
            "{required} missing from the workspace"
        );
    }
}
