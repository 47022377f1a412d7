//! Kept caches shared copy-on-write: on a file system that clones files (XFS with reflink), the
//! caches a slot kept seed every slot made later, which shares their blocks instead of copying
//! them; on one that cannot (ext4, tmpfs) seeding is declined, nothing is copied and nothing is
//! left behind; `br cleanup` reports the seeds and removes them, and the next attempt seeds
//! again.

mod common;

use std::path::{Path, PathBuf};

use common::TestRepo;
use common::xfs::Xfs;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The file system the XFS tests make: about the smallest mkfs.xfs accepts.
const XFS_BYTES: u64 = 300 * MIB;

/// Ignores `cache/`, the directory the plans keep.
fn ignore_cache(repo: &TestRepo) {
    repo.write(".gitignore", "cache/\n");
    repo.git(&["add", ".gitignore"]);
    repo.git(&["commit", "--quiet", "-m", "ignore the cache"]);
}

/// Session `name`: one task that builds a cache of `bytes` (random, so nothing can make it
/// smaller) in the kept `cache/`.
fn warm_plan(name: &str, bytes: u64) -> String {
    format!(
        "name = \"{name}\"\nkeep = [\"cache/\"]\n\
         [[task]]\nid = \"build\"\nfiles = [\"built.txt\"]\n\
         run = \"mkdir -p cache && head -c {bytes} /dev/urandom > cache/blob && echo built > built.txt\"\n"
    )
}

/// Session `pair`: two tasks that run at once, each waiting (a minute at most) for the other to
/// have started, so that the second worker's slot is made while the first is held. Each
/// writes whether it found the cache.
fn pair_plan(rendezvous: &Path) -> String {
    let mut plan = String::from("name = \"pair\"\nkeep = [\"cache/\"]\n");
    for (me, other) in [("a", "b"), ("b", "a")] {
        let (mine, theirs) = (rendezvous.join(me), rendezvous.join(other));
        plan.push_str(&format!(
            "[[task]]\nid = \"{me}\"\nfiles = [\"{me}.txt\"]\n\
             run = \"touch {mine}; i=0; while [ ! -e {theirs} ] && [ $i -lt 600 ]; do sleep 0.1; \
             i=$((i+1)); done; test -e {theirs} && \
             if [ -f cache/blob ]; then echo cached > {me}.txt; else echo cold > {me}.txt; fi\"\n",
            mine = mine.display(),
            theirs = theirs.display()
        ));
    }
    plan
}

fn run_session(repo: &TestRepo, plan: &str, workers: &str) -> Value {
    repo.write("br.toml", plan);
    let run = repo.br(&["run", "--workers", workers, "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let name = plan
        .lines()
        .next()
        .and_then(|l| l.split('"').nth(1))
        .expect("a name");
    let status = repo.status(name);
    assert_eq!(status["status"], "completed", "{status}");
    status
}

/// What tasks `a` and `b` of the pair found: `cached` or `cold` each.
fn found(repo: &TestRepo, status: &Value) -> Vec<String> {
    let slug = status["slug"].as_str().expect("slug");
    let mut found: Vec<String> = ["a", "b"]
        .iter()
        .map(|t| repo.git(&["show", &format!("br/{slug}/{t}:{t}.txt")]))
        .collect();
    found.sort();
    found
}

fn br_dir(repo: &TestRepo) -> PathBuf {
    repo.path().join(".git").join("br")
}

/// The repository's seeds (and anything else in their directory).
fn seeds(repo: &TestRepo) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(br_dir(repo).join("seeds")) else {
        return Vec::new();
    };
    let mut seeds: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
    seeds.sort();
    seeds
}

fn only_seed(repo: &TestRepo) -> PathBuf {
    let seeds = seeds(repo);
    assert_eq!(seeds.len(), 1, "one seed: {seeds:?}");
    seeds[0].clone()
}

fn slot(repo: &TestRepo, number: u32) -> PathBuf {
    br_dir(repo)
        .join("worktrees")
        .join(format!("slot-{number}"))
}

#[test]
fn a_slot_made_later_clones_the_kept_cache_from_the_seed_sharing_its_blocks() {
    let Some(repo) = TestRepo::on_xfs(XFS_BYTES) else {
        return;
    };
    ignore_cache(&repo);
    let blob = 20 * MIB;
    let before = repo.xfs().used_bytes();
    run_session(&repo, &warm_plan("warm", blob), "1");
    let warmed = repo.xfs().used_bytes();
    // The worker seeded from its slot once the task was done.
    let seed = only_seed(&repo);
    let cache = std::fs::read(slot(&repo, 0).join("cache/blob")).expect("slot 0's cache");
    assert_eq!(cache.len() as u64, blob);
    assert!(
        std::fs::read(seed.join("cache/blob")).expect("the seed's cache") == cache,
        "the seed holds the slot's cache"
    );
    // The cache and its clone in the seed: one cache's blocks (and some for the store, logs and
    // git), not two.
    let grown = warmed.saturating_sub(before);
    assert!(
        grown < blob + blob / 2,
        "the seed shares the cache's blocks: {} MiB more in use",
        grown / MIB
    );

    let rendezvous = tempfile::tempdir().expect("temp dir");
    let status = run_session(&repo, &pair_plan(rendezvous.path()), "2");
    let paired = repo.xfs().used_bytes();
    assert_eq!(
        found(&repo, &status),
        ["cached", "cached"],
        "the slot kept its cache, and the slot made for the second worker got the seed's"
    );
    assert!(
        std::fs::read(slot(&repo, 1).join("cache/blob")).expect("slot 1's cache") == cache,
        "slot 1's cache is the seed's"
    );
    assert!(
        Xfs::all_shared(&slot(&repo, 1).join("cache/blob")),
        "every block of slot 1's cache is shared with the seed's"
    );
    // Usage may also fall meanwhile (XFS trims speculative preallocation of files written
    // before): what matters is that it did not grow by a copy.
    let grown = paired.saturating_sub(warmed);
    assert!(
        grown < blob / 2,
        "slot 1 shares the seed's blocks instead of copying them: {} MiB more in use",
        grown / MIB
    );
    assert_eq!(seeds(&repo), [seed], "the seed was made once");
}

#[test]
fn where_files_cannot_be_cloned_seeding_is_declined_and_nothing_is_copied() {
    // The temporary directory's file system, unless it can clone files after all (XFS, btrfs):
    // then a tmpfs, which cannot.
    let repo = TestRepo::new();
    let repo = if can_clone_in(repo.path()) {
        drop(repo);
        let Some(repo) = TestRepo::on_tmpfs(64 * MIB, None) else {
            return;
        };
        repo
    } else {
        repo
    };
    ignore_cache(&repo);
    run_session(&repo, &warm_plan("warm", MIB), "1");
    assert_eq!(seeds(&repo), Vec::<PathBuf>::new(), "no seed");
    let leftovers: Vec<_> = std::fs::read_dir(br_dir(&repo))
        .expect("br's directory")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "nothing left of trying: {leftovers:?}"
    );

    let rendezvous = tempfile::tempdir().expect("temp dir");
    let status = run_session(&repo, &pair_plan(rendezvous.path()), "2");
    assert_eq!(
        found(&repo, &status),
        ["cached", "cold"],
        "the slot kept its cache; the slot made for the second worker starts without one"
    );
    assert!(!slot(&repo, 1).join("cache").exists());
    assert_eq!(seeds(&repo), Vec::<PathBuf>::new(), "still no seed");
}

#[test]
fn cleanup_reports_and_removes_seeds_and_the_next_attempt_seeds_again() {
    let Some(repo) = TestRepo::on_xfs(XFS_BYTES) else {
        return;
    };
    ignore_cache(&repo);
    let blob = 4 * MIB;
    run_session(&repo, &warm_plan("warm", blob), "1");
    let seed = only_seed(&repo);

    let dry = repo.br(&["cleanup", "--days", "0", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let dry: Value = serde_json::from_str(&dry.stdout).expect("cleanup JSON");
    assert_eq!(
        dry["worktrees"]["seeds"],
        serde_json::json!([seed.display().to_string()]),
        "{dry:#}"
    );
    assert!(
        dry["worktrees"]["seeds_bytes"]
            .as_u64()
            .is_some_and(|b| b >= blob),
        "{dry:#}"
    );
    let text = repo.br(&["cleanup", "--days", "0", "--dry-run"]);
    assert!(
        text.stdout.contains(&format!(
            "would remove seed of kept caches {}",
            seed.display()
        )) && text.stdout.contains("seeds of kept caches: ")
            && text.stdout.contains(" to reclaim"),
        "{}",
        text.stdout
    );
    assert!(
        seed.join("cache/blob").is_file(),
        "a dry run removes nothing"
    );

    let done = repo.br(&["cleanup", "--days", "0"]);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert!(
        done.stdout
            .contains(&format!("removed seed of kept caches {}", seed.display()))
            && done.stdout.contains(" reclaimed"),
        "{}",
        done.stdout
    );
    assert_eq!(seeds(&repo), Vec::<PathBuf>::new(), "the seed is gone");

    run_session(&repo, &warm_plan("warm-again", blob), "1");
    assert_eq!(seeds(&repo), [seed], "the next attempt seeded again");
}

/// Whether files in `dir` can be cloned copy-on-write.
fn can_clone_in(dir: &Path) -> bool {
    let probe = dir.join("clone-probe");
    std::fs::write(&probe, "probe").expect("probe");
    let cloned = std::process::Command::new("cp")
        .arg("--reflink=always")
        .arg(&probe)
        .arg(dir.join("clone-probe-clone"))
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(dir.join("clone-probe-clone"));
    cloned
}
