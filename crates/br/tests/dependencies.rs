//! What br is built from stays what we chose (the checks `cargo deny` makes, without a tool to
//! install): every dependency is under a license on the list below, none is on the ban list,
//! and no crate is built in two incompatible versions except the few that third-party crates
//! pull in and that are listed here with the reason. A new duplicate fails this test; so does a
//! listed one that went away (so the list stays true). Sources need no check: Cargo.lock is
//! committed and every dependency in the workspace manifest is a crates.io version.
//!
//! It reads `cargo tree` for this platform, offline (the build has fetched everything): licenses
//! of everything built, tests included; duplicates among what ships in the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Licenses (SPDX ids) a dependency may be used under: permissive ones, and MPL-2.0, whose
/// copyleft is per file and does not reach br's own code.
const ALLOWED_LICENSES: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "BSL-1.0",
    "Unlicense",
    "CC0-1.0",
    "0BSD",
    "MPL-2.0",
];

/// Never: TLS goes through rustls (DESIGN.md, "Several machines"), not the system's OpenSSL.
const BANNED: &[(&str, &str)] = &[
    ("openssl", "TLS is rustls's"),
    ("openssl-sys", "TLS is rustls's"),
    ("native-tls", "TLS is rustls's"),
];

/// Crates built in two incompatible versions, each pulled in by other crates, not by br.
const KNOWN_DUPLICATES: &[(&str, &str)] = &[
    (
        "syn",
        "2.x for crossterm's derive_more, 3.x for tokio-postgres's async-trait",
    ),
    (
        "hashbrown",
        "rusqlite's hashlink is on 0.15, serde_json's indexmap on 0.17",
    ),
    ("foldhash", "follows hashbrown's two versions"),
    (
        "fallible-iterator",
        "postgres-protocol is on 0.2, rusqlite on 0.3",
    ),
    (
        "getrandom",
        "ring (rustls's crypto, for TLS to PostgreSQL) is on 0.2, postgres-protocol's rand on 0.4",
    ),
    (
        "const-oid",
        "tokio-postgres-rustls reads certificates with x509-cert 0.2 (const-oid 0.9); postgres-protocol's digest 0.11 is on 0.10",
    ),
];

/// One package as `cargo tree` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Package {
    name: String,
    version: String,
    /// `None` for the workspace's own crates.
    license: Option<String>,
    local: bool,
}

/// The packages built for this platform with the workspace's features, as `cargo tree` resolves
/// them (unlike `cargo metadata`, it leaves out optional dependencies no feature turns on),
/// following `edges` (`normal,build`, or with `dev`: only the workspace's own tests use those).
fn packages(edges: &str) -> BTreeSet<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--workspace",
            "--offline",
            "--edges",
            edges,
            "--prefix",
            "none",
            "--format",
            "{p}|{l}",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.trim_end_matches(" (*)");
            let (package, license) = line.split_once('|')?;
            let mut words = package.split_whitespace();
            let name = words.next()?.to_string();
            let version = words.next()?.trim_start_matches('v').to_string();
            // A workspace crate shows its path: `br-core v0.1.0 (/…/crates/br-core)`.
            let local = words.any(|w| w.starts_with("(/"));
            Some(Package {
                name,
                version,
                license: Some(license.trim().to_string()).filter(|l| !l.is_empty()),
                local,
            })
        })
        .collect()
}

/// Whether an SPDX expression (`A OR B`, `(A OR B) AND C`, `A/B`, `A WITH X`) can be satisfied
/// with allowed licenses.
fn license_ok(expr: &str) -> bool {
    fn parse_or(tokens: &[String], i: &mut usize) -> bool {
        let mut ok = parse_and(tokens, i);
        while tokens.get(*i).is_some_and(|t| t == "OR") {
            *i += 1;
            ok |= parse_and(tokens, i);
        }
        ok
    }
    fn parse_and(tokens: &[String], i: &mut usize) -> bool {
        let mut ok = parse_atom(tokens, i);
        while tokens.get(*i).is_some_and(|t| t == "AND") {
            *i += 1;
            ok &= parse_atom(tokens, i);
        }
        ok
    }
    fn parse_atom(tokens: &[String], i: &mut usize) -> bool {
        let Some(token) = tokens.get(*i) else {
            return false;
        };
        *i += 1;
        if token == "(" {
            let ok = parse_or(tokens, i);
            *i += 1; // ")"
            return ok;
        }
        let mut id = token.clone();
        if tokens.get(*i).is_some_and(|t| t == "WITH") {
            id = format!(
                "{id} WITH {}",
                tokens.get(*i + 1).cloned().unwrap_or_default()
            );
            *i += 2;
        }
        ALLOWED_LICENSES.contains(&id.as_str())
    }
    // The old `MIT/Apache-2.0` spelling means OR.
    let spaced = expr
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let tokens: Vec<String> = spaced.split_whitespace().map(str::to_string).collect();
    let mut i = 0;
    parse_or(&tokens, &mut i) && i == tokens.len()
}

#[test]
fn license_expressions_are_read_as_spdx_says() {
    assert!(license_ok("MIT OR Apache-2.0"));
    assert!(license_ok("MIT/Apache-2.0"));
    assert!(license_ok("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(license_ok(
        "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"
    ));
    assert!(license_ok("WTFPL OR MIT"));
    assert!(!license_ok("GPL-3.0"));
    assert!(!license_ok("MIT AND GPL-3.0"));
    assert!(!license_ok(""));
}

#[test]
fn dependencies_keep_to_the_license_ban_and_duplicate_rules() {
    let shipped = packages("normal,build");
    let all = packages("normal,build,dev");
    assert!(
        shipped.iter().any(|p| p.name == "serde"),
        "cargo tree listed the dependencies"
    );
    let mut problems = Vec::new();
    for p in all.iter().filter(|p| !p.local) {
        match &p.license {
            Some(l) if license_ok(l) => {}
            other => problems.push(format!(
                "{} {}: license {other:?} not allowed",
                p.name, p.version
            )),
        }
        if let Some((_, why)) = BANNED.iter().find(|(banned, _)| *banned == p.name) {
            problems.push(format!("{} is banned: {why}", p.name));
        }
    }
    let mut versions: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for p in shipped.iter().filter(|p| !p.local) {
        // Incompatible versions: a different major, or a different minor before 1.0.
        let parts: Vec<&str> = p.version.split('.').collect();
        let line = if parts[0] == "0" {
            format!("0.{}", parts.get(1).unwrap_or(&"0"))
        } else {
            parts[0].to_string()
        };
        versions.entry(&p.name).or_default().insert(line);
    }
    let duplicates: BTreeSet<&str> = versions
        .iter()
        .filter(|(_, lines)| lines.len() > 1)
        .map(|(name, _)| *name)
        .collect();
    let known: BTreeSet<&str> = KNOWN_DUPLICATES.iter().map(|(n, _)| *n).collect();
    for name in duplicates.difference(&known) {
        problems.push(format!(
            "{name} is built in several incompatible versions ({:?}): align them, or list it in \
             KNOWN_DUPLICATES with the reason",
            versions[*name]
        ));
    }
    for name in known.difference(&duplicates) {
        problems.push(format!(
            "{name} is no longer duplicated: remove it from KNOWN_DUPLICATES"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
