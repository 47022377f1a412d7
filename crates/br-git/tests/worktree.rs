//! Worktree slots, attempt results, conflict prediction and reconcile, with real git in temporary
//! repositories.
//!
//! Every git command — the tests' own and br's — runs with hermetic configuration: no system or
//! global config, an empty `HOME`, no inherited author variables. The tests' commands get it on
//! each `Command`; br's get it through `git::set_process_env`, because tests run on parallel
//! threads and changing the process environment would be `unsafe` and racy.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use br_core::LockPath;
use br_git::Repo;
use br_git::conflicts::predict_conflicts;
use br_git::git::set_process_env;
use br_git::worktree::{
    AttemptSpec, Keep, Planting, Reconcile, ReconcileMode, ResetPolicy, ResetWay, SavedLeftovers,
    Seeding, WorktreeError, WorktreeSlot, reconcile, scope_violations, seeds,
};
use tempfile::TempDir;

const SESSION_ID: &str = "0123456789ab";
const SESSION_NAME: &str = "Build v3.1";
const SLUG: &str = "build-v3.1";

/// The same for every test in this process, so setting it once is right.
fn hermetic() {
    let home = std::env::temp_dir().join(format!("br-test-no-home-{}", std::process::id()));
    let mut vars: Vec<(OsString, Option<OsString>)> = vec![
        ("GIT_CONFIG_NOSYSTEM".into(), Some("1".into())),
        ("GIT_CONFIG_GLOBAL".into(), Some("/dev/null".into())),
        ("HOME".into(), Some(home.into_os_string())),
    ];
    for var in [
        "XDG_CONFIG_HOME",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_AUTHOR_DATE",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_COMMITTER_DATE",
        "EMAIL",
    ] {
        vars.push((var.into(), None));
    }
    set_process_env(vars);
}

/// A repository in a temporary directory, with a user checkout that has work in progress.
struct TestRepo {
    tmp: TempDir,
    root: PathBuf,
    repo: Repo,
    base: String,
}

impl TestRepo {
    /// Commits `a.txt`, `dir/b.txt`, `gone.txt`, `old-name.txt`, `f.txt` and a `.gitignore`
    /// ignoring `*.log` and `target/`.
    fn new() -> TestRepo {
        hermetic();
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        git_in(tmp.path(), &root, &["init", "-q", "-b", "main"]);
        for (path, text) in [
            ("a.txt", "a\n"),
            ("dir/b.txt", "b\n"),
            ("gone.txt", "to be deleted\n"),
            ("old-name.txt", "to be renamed\n"),
            ("f.txt", "1\n2\n3\n"),
            (".gitignore", "*.log\ntarget/\n"),
        ] {
            std::fs::write(root.join(path), text).unwrap();
        }
        git_in(tmp.path(), &root, &["add", "-A"]);
        git_in(tmp.path(), &root, &["commit", "-q", "-m", "base"]);
        let repo = Repo::discover(&root).unwrap();
        let base = git_in(tmp.path(), &root, &["rev-parse", "HEAD"]);
        TestRepo {
            tmp,
            root,
            repo,
            base,
        }
    }

    fn git(&self, args: &[&str]) -> String {
        git_in(self.tmp.path(), &self.root, args)
    }

    fn git_at(&self, dir: &Path, args: &[&str]) -> String {
        git_in(self.tmp.path(), dir, args)
    }

    fn git_succeeds(&self, dir: &Path, args: &[&str]) -> bool {
        git_command(self.tmp.path(), dir, args)
            .output()
            .unwrap()
            .status
            .success()
    }

    fn attempt(&self, task: &'static str, attempt: u32) -> AttemptSpec<'_> {
        AttemptSpec {
            session_id: SESSION_ID,
            session_name: SESSION_NAME,
            session_slug: SLUG,
            task_id: task,
            attempt,
            base_commit: &self.base,
            keep: &[],
        }
    }

    fn worktrees_dir(&self) -> PathBuf {
        self.repo.worktrees_dir()
    }

    /// Puts the user's checkout in a state worth protecting: a staged edit, an unstaged edit, an
    /// untracked and an ignored file, an extra branch, and a worktree of their own with an
    /// uncommitted edit.
    fn user_work_in_progress(&self) {
        self.git(&["branch", "feature"]);
        self.git(&["tag", "v1"]);
        let theirs = self.tmp.path().join("their-worktree");
        self.git(&["worktree", "add", "-q", theirs.to_str().unwrap(), "feature"]);
        std::fs::write(theirs.join("a.txt"), "their edit\n").unwrap();
        std::fs::write(self.root.join("a.txt"), "staged\n").unwrap();
        self.git(&["add", "a.txt"]);
        std::fs::write(self.root.join("a.txt"), "staged then edited\n").unwrap();
        std::fs::write(self.root.join("mine.txt"), "untracked\n").unwrap();
        std::fs::write(self.root.join("build.log"), "ignored\n").unwrap();
    }

    /// Everything of the user's that br must not touch.
    fn user_state(&self) -> UserState {
        let theirs = self.tmp.path().join("their-worktree");
        let status = |dir: &Path| {
            self.git_at(
                dir,
                &[
                    "--no-optional-locks",
                    "status",
                    "--porcelain=v2",
                    "--branch",
                    "--ignored",
                    "-uall",
                ],
            )
        };
        let br_dir = self.worktrees_dir();
        let worktrees = self
            .git(&["worktree", "list", "--porcelain"])
            .split("\n\n")
            .filter(|block| {
                let path = block
                    .lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("worktree ");
                !Path::new(path).starts_with(&br_dir)
            })
            .map(str::to_string)
            .collect();
        let refs = self
            .git(&["for-each-ref", "--format=%(refname) %(objectname)"])
            .lines()
            .filter(|l| !l.starts_with("refs/heads/br/") && !l.starts_with("refs/br/"))
            .map(str::to_string)
            .collect();
        UserState {
            head: self.git(&["symbolic-ref", "HEAD"]),
            head_commit: self.git(&["rev-parse", "HEAD"]),
            index: std::fs::read(self.root.join(".git/index")).unwrap(),
            status: status(&self.root),
            files: files_under(&self.root),
            their_status: status(&theirs),
            their_files: files_under(&theirs),
            refs,
            worktrees,
        }
    }

    /// Installs hooks that leave a marker file when they run, a pre-commit hook that fails, and
    /// commit signing that cannot work.
    fn hostile_hooks(&self) -> PathBuf {
        let markers = self.tmp.path().join("hook-markers");
        std::fs::create_dir_all(&markers).unwrap();
        let hooks = self.root.join(".git/hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        for hook in [
            "post-checkout",
            "post-commit",
            "reference-transaction",
            "post-index-change",
            "post-rewrite",
            "pre-auto-gc",
        ] {
            let script = format!("#!/bin/sh\ntouch '{}/{hook}'\nexit 0\n", markers.display());
            write_executable(&hooks.join(hook), &script);
        }
        write_executable(
            &hooks.join("pre-commit"),
            &format!(
                "#!/bin/sh\ntouch '{}/pre-commit'\nexit 1\n",
                markers.display()
            ),
        );
        self.git(&["config", "commit.gpgSign", "true"]);
        self.git(&["config", "gpg.program", "false"]);
        markers
    }
}

#[derive(Debug, PartialEq)]
struct UserState {
    head: String,
    head_commit: String,
    index: Vec<u8>,
    status: String,
    files: BTreeMap<PathBuf, Vec<u8>>,
    their_status: String,
    their_files: BTreeMap<PathBuf, Vec<u8>>,
    refs: Vec<String>,
    worktrees: Vec<String>,
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A git command for the tests' own use, hermetic and with a fixed identity and date.
fn git_command(tmp: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args).current_dir(dir);
    for var in br_git::git::GIT_LOCATION_VARS {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", tmp.join("home"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

fn git_in(tmp: &Path, dir: &Path, args: &[&str]) -> String {
    let out = git_command(tmp, dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The slot holds exactly `commit`: detached there, nothing modified, untracked or ignored, and
/// an index whose tree is the commit's tree.
fn assert_pristine(t: &TestRepo, slot: &Path, commit: &str) {
    assert_eq!(t.git_at(slot, &["rev-parse", "HEAD"]), commit);
    assert!(
        !t.git_succeeds(slot, &["symbolic-ref", "-q", "HEAD"]),
        "HEAD is detached"
    );
    assert_eq!(
        t.git_at(slot, &["status", "--porcelain", "--ignored", "-uall"]),
        "",
        "slot is clean"
    );
    assert_eq!(
        t.git_at(slot, &["write-tree"]),
        t.git(&["rev-parse", &format!("{commit}^{{tree}}")])
    );
    // The files on disk are the commit's, byte for byte.
    let listed = t.git_at(slot, &["ls-files", "-z"]);
    let mut tracked: Vec<PathBuf> = listed
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    tracked.sort();
    let on_disk: Vec<PathBuf> = files_under(slot).into_keys().collect();
    assert_eq!(on_disk, tracked);
    for path in &tracked {
        let want = t.git(&["show", &format!("{commit}:{}", path.display())]);
        let have = std::fs::read_to_string(slot.join(path)).unwrap();
        assert_eq!(have.trim_end(), want, "{}", path.display());
    }
}

#[test]
fn checkout_gives_a_detached_tree_equal_to_the_base() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let dir = slot.checkout(&t.attempt("api", 1)).unwrap();
    assert_eq!(dir, slot.path());
    assert!(dir.starts_with(t.worktrees_dir()));
    assert_pristine(&t, &dir, &t.base);
}

#[test]
fn next_attempt_in_a_slot_starts_from_a_pristine_tree() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let dir = slot.checkout(&t.attempt("api", 1)).unwrap();
    let untouched_inode = std::fs::metadata(dir.join("f.txt")).unwrap().ino();
    // Everything a messy task can leave: tracked edits (staged and not), new files, ignored
    // files and directories, deletions, a nested repository, a branch checked out in the slot.
    write(&dir, "a.txt", "edited\n");
    write(&dir, "dir/b.txt", "staged edit\n");
    t.git_at(&dir, &["add", "dir/b.txt"]);
    write(&dir, "new/deep/file.txt", "new\n");
    write(&dir, "debug.log", "ignored\n");
    write(&dir, "target/out/bin", "ignored dir\n");
    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    t.git_at(&dir, &["switch", "-q", "-c", "task-made-branch"]);
    slot.finish(&t.attempt("api", 1), Keep::AttemptRef).unwrap();
    write(&dir, "after-finish.txt", "left after finish\n");
    t.git_at(&dir, &["init", "-q", "nested"]);

    let again = slot.checkout(&t.attempt("api", 2)).unwrap();
    assert_eq!(again, dir);
    assert_pristine(&t, &dir, &t.base);
    assert_eq!(
        std::fs::metadata(dir.join("f.txt")).unwrap().ino(),
        untouched_inode,
        "the slot was reset in place, not checked out afresh"
    );

    // A later attempt may start from a different base (a requeue onto the integration tip).
    write(&t.root, "f.txt", "1\n2\n3\n4\n");
    t.git(&["commit", "-q", "-am", "second"]);
    let second = t.git(&["rev-parse", "HEAD"]);
    write(&dir, "a.txt", "edited again\n");
    let spec = AttemptSpec {
        base_commit: &second,
        ..t.attempt("api", 3)
    };
    slot.checkout(&spec).unwrap();
    assert_pristine(&t, &dir, &second);
}

#[test]
fn finish_commits_every_kind_of_change_on_top_of_the_tasks_own_commits() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let attempt = t.attempt("api", 2);
    let dir = slot.checkout(&attempt).unwrap();

    // The task commits twice itself…
    write(&dir, "committed-1.txt", "one\n");
    t.git_at(&dir, &["add", "committed-1.txt"]);
    t.git_at(&dir, &["commit", "-q", "-m", "task commit 1"]);
    write(&dir, "dir/b.txt", "b from commit 2\n");
    t.git_at(&dir, &["commit", "-q", "-am", "task commit 2"]);
    // …and leaves modified, new, deleted and renamed files, some with odd names.
    write(&dir, "a.txt", "modified\n");
    write(&dir, "new/file.txt", "new\n");
    write(&dir, "odd\nname with spaces.txt", "odd\n");
    write(&dir, "ünïcödé.txt", "unicode\n");
    write(&dir, "debug.log", "ignored: not committed\n");
    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    std::fs::rename(dir.join("old-name.txt"), dir.join("new-name.txt")).unwrap();

    let result = slot.finish(&attempt, Keep::Branch).unwrap();
    let commit = result.commit.clone().unwrap();
    let branch = format!("br/{SLUG}/api");
    assert_eq!(t.git(&["rev-parse", &branch]), commit);
    assert_eq!(
        result.changed,
        [
            "a.txt",
            "committed-1.txt",
            "dir/b.txt",
            "gone.txt",
            "new-name.txt",
            "new/file.txt",
            "odd\nname with spaces.txt",
            "old-name.txt",
            "ünïcödé.txt",
        ]
    );

    // History: base, the task's two commits, then br's.
    let subjects = t.git(&["log", "--format=%s", &format!("{}..{commit}", t.base)]);
    let subjects: Vec<&str> = subjects.lines().collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert_eq!(&subjects[1..], ["task commit 2", "task commit 1"]);
    let message = t.git(&["log", "-1", "--format=%B", &commit]);
    assert!(message.contains("api"), "{message}");
    assert!(message.contains(SESSION_NAME), "{message}");
    assert!(message.contains(SESSION_ID), "{message}");
    assert!(message.contains("attempt 2"), "{message}");
    assert!(message.contains("Br-Attempt: 2"), "{message}");
    assert_eq!(
        t.git(&["rev-parse", &format!("{commit}~3")]),
        t.base,
        "linear on the base"
    );

    // Content.
    let show = |path: &str| t.git(&["show", &format!("{commit}:{path}")]);
    assert_eq!(show("a.txt"), "modified");
    assert_eq!(show("dir/b.txt"), "b from commit 2");
    assert_eq!(show("new/file.txt"), "new");
    assert_eq!(show("new-name.txt"), "to be renamed");
    assert_eq!(show("committed-1.txt"), "one");
    assert_eq!(show("ünïcödé.txt"), "unicode");
    for absent in ["gone.txt", "old-name.txt", "debug.log"] {
        assert!(
            !t.git_succeeds(&t.root, &["cat-file", "-e", &format!("{commit}:{absent}")]),
            "{absent} must not be in the result"
        );
    }
}

#[test]
fn a_task_that_changes_nothing_leaves_its_branch_at_the_base() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let attempt = t.attempt("noop", 1);
    let dir = slot.checkout(&attempt).unwrap();
    write(&dir, "only-ignored.log", "ignored\n");
    let result = slot.finish(&attempt, Keep::Branch).unwrap();
    assert_eq!(result.commit, None);
    assert!(result.changed.is_empty());
    assert_eq!(t.git(&["rev-parse", &format!("br/{SLUG}/noop")]), t.base);
}

#[test]
fn a_failed_attempt_is_kept_at_its_attempt_ref_and_the_branch_is_left_alone() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let branch = format!("refs/heads/br/{SLUG}/api");

    // A failure with no earlier success: no branch at all.
    let first = t.attempt("api", 1);
    let dir = slot.checkout(&first).unwrap();
    write(&dir, "partial.txt", "half done\n");
    let failed = slot.finish(&first, Keep::AttemptRef).unwrap();
    assert!(!t.git_succeeds(&t.root, &["rev-parse", "--verify", "-q", &branch]));
    let kept = format!("refs/br/attempts/{SESSION_ID}/api/1");
    assert_eq!(t.git(&["rev-parse", &kept]), failed.commit.clone().unwrap());
    assert_eq!(
        t.git(&["show", &format!("{kept}:partial.txt")]),
        "half done"
    );
    assert_eq!(failed.changed, ["partial.txt"]);

    // A success, then a failed rerun: the branch keeps the success.
    let second = t.attempt("api", 2);
    let dir = slot.checkout(&second).unwrap();
    write(&dir, "good.txt", "good\n");
    let good = slot.finish(&second, Keep::Branch).unwrap().commit.unwrap();
    let third = t.attempt("api", 3);
    let dir = slot.checkout(&third).unwrap();
    assert!(!dir.join("good.txt").exists(), "the rerun starts fresh");
    write(&dir, "bad.txt", "bad\n");
    let bad = slot
        .finish(&third, Keep::AttemptRef)
        .unwrap()
        .commit
        .unwrap();
    assert_eq!(t.git(&["rev-parse", &branch]), good);
    let kept = format!("refs/br/attempts/{SESSION_ID}/api/3");
    assert_eq!(t.git(&["rev-parse", &kept]), bad);

    // A failure that changed nothing leaves no ref behind.
    let fourth = t.attempt("api", 4);
    slot.checkout(&fourth).unwrap();
    assert_eq!(slot.finish(&fourth, Keep::AttemptRef).unwrap().commit, None);
    assert!(!t.git_succeeds(
        &t.root,
        &[
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/br/attempts/{SESSION_ID}/api/4")
        ]
    ));
}

#[test]
fn a_rerun_replaces_the_previous_attempts_branch() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let first = t.attempt("api", 1);
    let dir = slot.checkout(&first).unwrap();
    write(&dir, "one.txt", "1\n");
    slot.finish(&first, Keep::Branch).unwrap();
    let second = t.attempt("api", 2);
    let dir = slot.checkout(&second).unwrap();
    write(&dir, "two.txt", "2\n");
    let result = slot.finish(&second, Keep::Branch).unwrap();
    let branch = format!("br/{SLUG}/api");
    assert_eq!(t.git(&["rev-parse", &branch]), result.commit.unwrap());
    assert!(!t.git_succeeds(&t.root, &["cat-file", "-e", &format!("{branch}:one.txt")]));
}

#[test]
fn a_task_branch_checked_out_elsewhere_is_not_moved_and_the_result_is_kept() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let first = t.attempt("api", 1);
    let dir = slot.checkout(&first).unwrap();
    write(&dir, "one.txt", "1\n");
    let one = slot.finish(&first, Keep::Branch).unwrap().commit.unwrap();
    // The user inspects the task branch in a worktree of their own.
    let inspect = t.tmp.path().join("inspect");
    let branch = format!("br/{SLUG}/api");
    t.git(&["worktree", "add", "-q", inspect.to_str().unwrap(), &branch]);

    let second = t.attempt("api", 2);
    let dir = slot.checkout(&second).unwrap();
    write(&dir, "two.txt", "2\n");
    let err = slot.finish(&second, Keep::Branch).unwrap_err();
    assert!(
        matches!(err, WorktreeError::BranchCheckedOut { .. }),
        "{err}"
    );
    assert_eq!(t.git(&["rev-parse", &branch]), one);
    let kept = format!("refs/br/attempts/{SESSION_ID}/api/2");
    assert_eq!(t.git(&["show", &format!("{kept}:two.txt")]), "2");
}

#[test]
fn leftovers_of_a_dead_attempt_are_kept_before_the_slot_is_reused() {
    let t = TestRepo::new();
    let first = t.attempt("api", 1);
    let number = {
        let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
        let dir = slot.checkout(&first).unwrap();
        write(&dir, "committed.txt", "the task committed this\n");
        t.git_at(&dir, &["add", "committed.txt"]);
        t.git_at(&dir, &["commit", "-q", "-m", "task commit before dying"]);
        write(&dir, "a.txt", "unfinished edit\n");
        write(&dir, "new.txt", "unfinished new file\n");
        std::fs::remove_file(dir.join("gone.txt")).unwrap();
        // The worker dies here: no finish.
        slot.number()
    };

    let mut slot = acquire_number(&t.repo, number);
    let dir = slot.checkout(&t.attempt("api", 2)).unwrap();
    assert_pristine(&t, &dir, &t.base);

    let kept = format!("refs/br/attempts/{SESSION_ID}/api/1");
    let show = |path: &str| t.git(&["show", &format!("{kept}:{path}")]);
    assert_eq!(show("a.txt"), "unfinished edit");
    assert_eq!(show("new.txt"), "unfinished new file");
    assert_eq!(show("committed.txt"), "the task committed this");
    assert!(!t.git_succeeds(&t.root, &["cat-file", "-e", &format!("{kept}:gone.txt")]));
    let subjects = t.git(&["log", "--format=%s", &format!("{}..{kept}", t.base)]);
    assert!(
        subjects.starts_with("br: leftovers of task api"),
        "{subjects}"
    );
    assert!(subjects.ends_with("task commit before dying"), "{subjects}");
    // Nothing of the dead attempt reached the task branch.
    assert!(!t.git_succeeds(
        &t.root,
        &["rev-parse", "--verify", "-q", &format!("br/{SLUG}/api")]
    ));
}

#[test]
fn the_users_checkout_branches_and_worktrees_are_untouched() {
    let t = TestRepo::new();
    t.user_work_in_progress();
    let before = t.user_state();
    {
        let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
        let other = WorktreeSlot::acquire(&t.repo).unwrap();
        for (n, keep) in [(1, Keep::AttemptRef), (2, Keep::Branch)] {
            let attempt = t.attempt("api", n);
            let dir = slot.checkout(&attempt).unwrap();
            write(&dir, "a.txt", "task edit\n");
            write(&dir, "task.log", "ignored\n");
            std::fs::remove_file(dir.join("gone.txt")).unwrap();
            slot.finish(&attempt, keep).unwrap();
        }
        drop(other);
    }
    reconcile(&t.repo, ReconcileMode::Apply, 0).unwrap();
    let after = t.user_state();
    assert_eq!(before, after);
    assert!(
        !t.worktrees_dir().join("slot-0").exists(),
        "reconcile removed the free slots"
    );
}

#[test]
fn user_hooks_and_signing_never_apply_to_brs_own_operations() {
    let t = TestRepo::new();
    let markers = t.hostile_hooks();
    // The hooks are live for ordinary git commands: the test would prove nothing otherwise.
    t.git(&["update-ref", "refs/heads/probe", "HEAD"]);
    assert!(markers.join("reference-transaction").exists());
    std::fs::remove_file(markers.join("reference-transaction")).unwrap();

    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    for n in 1..=2 {
        let attempt = t.attempt("api", n);
        let dir = slot.checkout(&attempt).unwrap();
        write(&dir, "a.txt", &format!("attempt {n}\n"));
        let result = slot.finish(&attempt, Keep::Branch).unwrap();
        assert!(result.commit.is_some());
    }
    drop(slot);
    reconcile(&t.repo, ReconcileMode::Apply, 0).unwrap();
    let ran: Vec<_> = std::fs::read_dir(&markers)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(ran.is_empty(), "hooks ran: {ran:?}");
}

#[test]
fn brs_commits_use_the_configured_identity_or_a_fallback() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let first = t.attempt("api", 1);
    let dir = slot.checkout(&first).unwrap();
    write(&dir, "x.txt", "x\n");
    let commit = slot.finish(&first, Keep::Branch).unwrap().commit.unwrap();
    assert_eq!(
        t.git(&["log", "-1", "--format=%an <%ae> / %cn <%ce>", &commit]),
        "br <br@localhost> / br <br@localhost>"
    );
    drop(slot);

    t.git(&["config", "user.name", "Ada"]);
    t.git(&["config", "user.email", "ada@example.com"]);
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let second = t.attempt("api", 2);
    let dir = slot.checkout(&second).unwrap();
    write(&dir, "y.txt", "y\n");
    let commit = slot.finish(&second, Keep::Branch).unwrap().commit.unwrap();
    assert_eq!(
        t.git(&["log", "-1", "--format=%an <%ae>", &commit]),
        "Ada <ada@example.com>"
    );
}

#[test]
fn concurrent_acquires_get_different_slots_and_a_freed_slot_is_reused() {
    let t = TestRepo::new();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let repo = t.repo.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                WorktreeSlot::acquire(&repo).unwrap()
            })
        })
        .collect();
    let mut slots: Vec<WorktreeSlot> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut numbers: Vec<u32> = slots.iter().map(WorktreeSlot::number).collect();
    numbers.sort();
    assert_eq!(numbers, (0..threads as u32).collect::<Vec<_>>());

    // Each checks out in parallel: distinct directories, all pristine.
    std::thread::scope(|s| {
        for (i, slot) in slots.iter_mut().enumerate() {
            let t = &t;
            s.spawn(move || {
                let task: &'static str = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"][i];
                let attempt = t.attempt(task, 1);
                let dir = slot.checkout(&attempt).unwrap();
                write(&dir, &format!("{task}.txt"), task);
                slot.finish(&attempt, Keep::Branch).unwrap();
            });
        }
    });
    for task in ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"] {
        let branch = format!("br/{SLUG}/{task}");
        let changed = t.git(&["diff", "--name-only", &t.base, &branch]);
        assert_eq!(changed, format!("{task}.txt"));
    }

    let freed = slots.remove(3).number();
    acquire_number(&t.repo, freed);
}

/// Acquires slots until `number` is the one taken (the others are dropped again), failing after
/// ten seconds. A child that another test thread is forking holds a copy of every descriptor
/// until it execs (close-on-exec acts only then), so a freed slot's lock can outlive its drop by
/// a moment, and in that moment `acquire` rightly takes another slot.
fn acquire_number(repo: &Repo, number: u32) -> WorktreeSlot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let slot = WorktreeSlot::acquire(repo).unwrap();
        if slot.number() == number {
            return slot;
        }
        assert!(
            Instant::now() < deadline,
            "slot {number} was never free again"
        );
        drop(slot);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills and reaps the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_holders_slot_is_freed() {
    let t = TestRepo::new();
    // Another process holds slot 0 the way a worker does: an flock(2) lock on its lock file,
    // held by an open descriptor (the shell's fd 9, kept across `exec sleep`).
    let dir = t.repo.worktrees_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("slot-0.lock");
    let mut child = KillOnDrop(
        Command::new("sh")
            .args([
                "-c",
                "exec 9>\"$1\" && flock --exclusive 9 && echo LOCKED && exec sleep 60",
                "holder",
            ])
            .arg(&lock)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "LOCKED", "the holder took the lock");
    let mine = WorktreeSlot::acquire(&t.repo).unwrap();
    assert_ne!(mine.number(), 0, "a live holder's slot is not shared");
    drop(mine);

    child.0.kill().unwrap(); // SIGKILL: the holder runs no cleanup.
    child.0.wait().unwrap();
    acquire_number(&t.repo, 0);
}

#[test]
fn predicted_conflicts_name_the_files_both_sides_changed() {
    let t = TestRepo::new();
    let branch = |name: &str, edits: &[(&str, &str)]| {
        t.git(&["switch", "-q", "-c", name, &t.base]);
        for (path, text) in edits {
            write(&t.root, path, text);
        }
        t.git(&["add", "-A"]);
        t.git(&["commit", "-q", "-m", name]);
        t.git(&["rev-parse", "HEAD"])
    };
    let one = branch("one", &[("f.txt", "ONE\n2\n3\n"), ("odd\nname", "1\n")]);
    let two = branch("two", &[("f.txt", "TWO\n2\n3\n"), ("odd\nname", "2\n")]);
    let elsewhere = branch("elsewhere", &[("a.txt", "a elsewhere\n")]);
    let below = branch("below", &[("f.txt", "1\n2\nTHREE\n")]);
    t.git(&["switch", "-q", "main"]);

    assert_eq!(
        predict_conflicts(&t.repo, Some(&t.base), &one, &two).unwrap(),
        ["f.txt", "odd\nname"]
    );
    assert_eq!(
        predict_conflicts(&t.repo, Some(&t.base), "two", "one").unwrap(),
        ["f.txt", "odd\nname"]
    );
    assert!(
        predict_conflicts(&t.repo, Some(&t.base), &one, &elsewhere)
            .unwrap()
            .is_empty()
    );
    // Different lines of the same file merge.
    assert!(
        predict_conflicts(&t.repo, Some(&t.base), "elsewhere", &below)
            .unwrap()
            .is_empty()
    );
    assert!(predict_conflicts(&t.repo, Some(&t.base), &one, "no-such-branch").is_err());
}

#[test]
fn scope_violations_list_changes_no_declared_lock_covers() {
    let locks = |paths: &[&str]| -> Vec<LockPath> {
        paths.iter().map(|p| LockPath::parse(p).unwrap()).collect()
    };
    let changed = |paths: &[&str]| -> Vec<String> {
        paths.iter().map(std::string::ToString::to_string).collect()
    };
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        // declared, changed, violations
        (&["a/**"], &["a/x.txt", "a/b/y.txt"], &[]),
        (&["a/**"], &["a/x.txt", "b.txt"], &["b.txt"]),
        (&["src"], &["src/main.rs", "srcs/x"], &["srcs/x"]),
        (&["*.md"], &["README.md", "docs/x.md"], &["docs/x.md"]),
        (
            &["Cargo.lock", "src/api/**"],
            &["Cargo.lock", "src/api/a.rs"],
            &[],
        ),
        (&[], &["anything.txt", "b"], &["anything.txt", "b"]),
        (&[], &[], &[]),
        (&["**"], &["every/thing", "x"], &[]),
        (&["a b/*"], &["a b/c d.txt", "a/c"], &["a/c"]),
    ];
    for (declared, paths, want) in cases {
        assert_eq!(
            scope_violations(&changed(paths), &locks(declared)),
            changed(want),
            "declared {declared:?}, changed {paths:?}"
        );
    }
}

/// What is under br's worktree directory and what git has registered: a dry run changes neither.
fn reconcile_observable(t: &TestRepo) -> (BTreeMap<PathBuf, Vec<u8>>, String, String) {
    (
        files_under(&t.worktrees_dir()),
        t.git(&["worktree", "list", "--porcelain"]),
        t.git(&["for-each-ref", "--format=%(refname) %(objectname)"]),
    )
}

#[test]
fn reconcile_prunes_strays_removes_extra_free_slots_and_keeps_work() {
    let t = TestRepo::new();
    let dir = t.worktrees_dir();
    let mut slots: Vec<WorktreeSlot> = (0..4)
        .map(|_| WorktreeSlot::acquire(&t.repo).unwrap())
        .collect();
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.checkout(&t.attempt(["t0", "t1", "t2", "t3"][i], 1))
            .unwrap();
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        if i != 2 {
            slot.finish(&t.attempt(["t0", "t1", "t2", "t3"][i], 1), Keep::Branch)
                .unwrap();
        }
    }
    // Slot 2 dies mid-attempt with work in it; slot 1 stays held; slots 0 and 3 are free.
    write(slots[2].path(), "unsaved.txt", "work of a dead attempt\n");
    let held = slots.remove(1);
    drop(slots);

    // A registration of br's whose directory is gone, and one of the user's.
    let stray = dir.join("verify-tmp");
    t.git(&["worktree", "add", "-q", "--detach", stray.to_str().unwrap()]);
    std::fs::remove_dir_all(&stray).unwrap();
    let users = t.tmp.path().join("users-removable-drive");
    t.git(&["worktree", "add", "-q", "--detach", users.to_str().unwrap()]);
    std::fs::remove_dir_all(&users).unwrap();

    let before = reconcile_observable(&t);
    let planned = reconcile(&t.repo, ReconcileMode::DryRun, 1).unwrap();
    assert_eq!(
        reconcile_observable(&t),
        before,
        "a dry run changes nothing"
    );
    let kept_ref = format!("refs/br/attempts/{SESSION_ID}/t2/1");
    assert_eq!(
        planned,
        Reconcile {
            pruned: vec![stray.clone()],
            removed: vec![dir.join("slot-2"), dir.join("slot-3")],
            saved: vec![SavedLeftovers {
                slot: dir.join("slot-2"),
                reference: kept_ref.clone(),
                commit: None,
            }],
            in_use: vec![held.path().to_path_buf()],
            kept: vec![dir.join("slot-0")],
            other: vec![],
        }
    );

    let done = reconcile(&t.repo, ReconcileMode::Apply, 1).unwrap();
    let saved_commit = t.git(&["rev-parse", &kept_ref]);
    assert_eq!(
        done,
        Reconcile {
            saved: vec![SavedLeftovers {
                slot: dir.join("slot-2"),
                reference: kept_ref.clone(),
                commit: Some(saved_commit),
            }],
            ..planned
        }
    );
    assert_eq!(
        t.git(&["show", &format!("{kept_ref}:unsaved.txt")]),
        "work of a dead attempt"
    );
    let listed = t.git(&["worktree", "list", "--porcelain"]);
    for gone in [&stray, &dir.join("slot-2"), &dir.join("slot-3")] {
        assert!(!listed.contains(gone.to_str().unwrap()), "{listed}");
        assert!(!gone.exists());
    }
    assert!(!dir.join("slot-2.lock").exists());
    assert!(!dir.join("slot-2.attempt").exists());
    for kept in [&dir.join("slot-0"), held.path()] {
        assert!(listed.contains(kept.to_str().unwrap()), "{listed}");
        assert!(kept.is_dir());
    }
    assert!(
        listed.contains(users.to_str().unwrap()),
        "the user's registration is theirs to prune: {listed}"
    );
    for task in ["t0", "t1", "t3"] {
        assert!(t.git_succeeds(
            &t.root,
            &["rev-parse", "--verify", "-q", &format!("br/{SLUG}/{task}")]
        ));
    }

    // The held slot keeps working, and a removed slot's number is handed out again.
    let mut held = held;
    held.checkout(&t.attempt("t1", 2)).unwrap();
    let a = acquire_number(&t.repo, 0);
    let mut b = acquire_number(&t.repo, 2);
    assert_eq!((a.number(), b.number()), (0, 2));
    let dir_b = b.checkout(&t.attempt("t9", 1)).unwrap();
    assert_pristine(&t, &dir_b, &t.base);

    // A second reconcile has nothing left to prune or save.
    drop((a, b, held));
    let again = reconcile(&t.repo, ReconcileMode::Apply, 1).unwrap();
    assert!(
        again.pruned.is_empty() && again.saved.is_empty(),
        "{again:?}"
    );
}

#[test]
fn ids_that_are_not_ref_components_are_refused() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    for (session_id, slug, task) in [
        ("../../heads", SLUG, "api"),
        (SESSION_ID, "a b", "api"),
        (SESSION_ID, SLUG, "x.lock"),
        (SESSION_ID, SLUG, "-rf"),
        (SESSION_ID, SLUG, "a/b"),
    ] {
        let attempt = AttemptSpec {
            session_id,
            session_slug: slug,
            task_id: task,
            ..t.attempt("api", 1)
        };
        let err = slot.checkout(&attempt).unwrap_err();
        assert!(
            matches!(err, WorktreeError::BadRefComponent { .. }),
            "{err}"
        );
        assert!(matches!(
            slot.finish(&attempt, Keep::Branch).unwrap_err(),
            WorktreeError::BadRefComponent { .. }
        ));
    }
}

#[test]
fn a_slot_damaged_by_hand_is_checked_out_afresh() {
    let t = TestRepo::new();
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let dir = slot.checkout(&t.attempt("api", 1)).unwrap();
    slot.finish(&t.attempt("api", 1), Keep::AttemptRef).unwrap();
    std::fs::remove_file(dir.join(".git")).unwrap();
    slot.checkout(&t.attempt("api", 2)).unwrap();
    assert_pristine(&t, &dir, &t.base);
    slot.discard().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    slot.checkout(&t.attempt("api", 3)).unwrap();
    assert_pristine(&t, &dir, &t.base);
}

#[test]
fn an_abandoned_rebase_or_cherry_pick_does_not_follow_into_the_next_attempt() {
    let t = TestRepo::new();
    for (name, text) in [("one", "ONE\n2\n3\n"), ("two", "TWO\n2\n3\n")] {
        t.git(&["switch", "-q", "-c", name, &t.base]);
        write(&t.root, "f.txt", text);
        t.git(&["commit", "-q", "-am", name]);
    }
    t.git(&["switch", "-q", "main"]);
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    for (n, conflicting) in [(1, ["rebase", "two"]), (2, ["cherry-pick", "two"])] {
        let attempt = t.attempt("api", n);
        let dir = slot.checkout(&attempt).unwrap();
        t.git_at(&dir, &["checkout", "-q", "--detach", "one"]);
        assert!(
            !t.git_succeeds(&dir, &conflicting),
            "{conflicting:?} conflicts"
        );
        slot.finish(&attempt, Keep::AttemptRef).unwrap();
        slot.checkout(&t.attempt("api", n + 10)).unwrap();
        assert_pristine(&t, &dir, &t.base);
        for state in [
            "rebase-merge",
            "rebase-apply",
            "CHERRY_PICK_HEAD",
            "sequencer",
        ] {
            let path = t.git_at(&dir, &["rev-parse", "--git-path", state]);
            assert!(!dir.join(&path).exists(), "{state} left behind");
        }
        slot.discard().unwrap();
    }
}

/// Every tracked path of `commit` is on disk as the commit has it — bytes, executable bit,
/// symbolic link target — and nothing else is, but the paths in `kept`.
fn assert_tree_is(t: &TestRepo, slot: &Path, commit: &str, kept: &[&str]) {
    assert_eq!(t.git_at(slot, &["rev-parse", "HEAD"]), commit);
    assert!(
        !t.git_succeeds(slot, &["symbolic-ref", "-q", "HEAD"]),
        "HEAD is detached"
    );
    assert_eq!(
        t.git_at(slot, &["write-tree"]),
        t.git(&["rev-parse", &format!("{commit}^{{tree}}")]),
        "the index is the commit's tree"
    );
    assert_eq!(
        t.git_at(slot, &["status", "--porcelain", "-uall"]),
        "",
        "nothing modified or untracked"
    );
    let listing = t.git(&["ls-tree", "-r", "-z", commit]);
    let mut tracked = Vec::new();
    for entry in listing.split('\0').filter(|e| !e.is_empty()) {
        let (meta, path) = entry.split_once('\t').unwrap();
        let fields: Vec<&str> = meta.split(' ').collect();
        let (mode, oid) = (fields[0], fields[2]);
        let out = git_command(t.tmp.path(), &t.root, &["cat-file", "blob", oid])
            .output()
            .unwrap();
        let on_disk = slot.join(path);
        let meta = std::fs::symlink_metadata(&on_disk)
            .unwrap_or_else(|e| panic!("{path} is missing: {e}"));
        match mode {
            "120000" => {
                assert!(meta.file_type().is_symlink(), "{path} is a symbolic link");
                let target = std::fs::read_link(&on_disk).unwrap();
                assert_eq!(target.as_os_str().as_encoded_bytes(), out.stdout, "{path}");
            }
            "100644" | "100755" => {
                assert!(meta.file_type().is_file(), "{path} is a file");
                let executable = meta.permissions().mode() & 0o111 != 0;
                assert_eq!(executable, mode == "100755", "{path}'s executable bit");
                assert_eq!(std::fs::read(&on_disk).unwrap(), out.stdout, "{path}");
            }
            other => panic!("unexpected mode {other} for {path}"),
        }
        tracked.push(PathBuf::from(path));
    }
    tracked.extend(kept.iter().map(PathBuf::from));
    tracked.sort();
    let on_disk: Vec<PathBuf> = files_under(slot).into_keys().collect();
    assert_eq!(on_disk, tracked, "the files in the slot");
}

/// A second commit on top of the base that differs from it in every way a tree can: a rename,
/// a deletion, a new file in a new directory, an executable bit, a symbolic link that becomes
/// a file, a file that becomes a directory and a directory that becomes a file, names with
/// glob characters and a newline.
fn every_kind_of_change(t: &TestRepo) -> String {
    let work = t.tmp.path().join("every-kind");
    t.git(&[
        "worktree",
        "add",
        "-q",
        "--detach",
        work.to_str().unwrap(),
        &t.base,
    ]);
    // Things the base lacks, so that the second commit can change them.
    write(&work, "link", "");
    std::fs::remove_file(work.join("link")).unwrap();
    std::os::unix::fs::symlink("a.txt", work.join("link")).unwrap();
    write(&work, "to-dir", "a file first\n");
    write(&work, "to-file/inner.txt", "a directory first\n");
    write(&work, "stars*[x].txt", "glob characters\n");
    write(&work, "starsX.txt", "matched by the glob, not named\n");
    write(&work, "new\nline.txt", "a newline in the name\n");
    t.git_at(&work, &["add", "-A"]);
    t.git_at(&work, &["commit", "-q", "-m", "first"]);
    let first = t.git_at(&work, &["rev-parse", "HEAD"]);

    t.git_at(&work, &["mv", "old-name.txt", "new-name.txt"]);
    t.git_at(
        &work,
        &["rm", "-q", "gone.txt", "to-dir", "to-file/inner.txt"],
    );
    write(&work, "to-dir/inside.txt", "now a directory\n");
    write(&work, "to-file", "now a file\n");
    write(&work, "fresh/dir/new.txt", "new\n");
    std::fs::set_permissions(work.join("f.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(work.join("link")).unwrap();
    write(&work, "link", "no longer a link\n");
    write(&work, "stars*[x].txt", "glob characters, changed\n");
    write(&work, "new\nline.txt", "changed\n");
    t.git_at(&work, &["add", "-A"]);
    t.git_at(&work, &["commit", "-q", "-m", "second"]);
    let second = t.git_at(&work, &["rev-parse", "HEAD"]);
    t.git(&["worktree", "remove", "--force", work.to_str().unwrap()]);
    format!("{first} {second}")
}

#[test]
fn a_slot_moves_between_commits_that_differ_in_every_way_to_exactly_each_tree() {
    let t = TestRepo::new();
    let commits = every_kind_of_change(&t);
    let (first, second) = commits.split_once(' ').unwrap();
    for policy in [ResetPolicy::Quick, ResetPolicy::Thorough] {
        let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
        slot.set_reset_policy(policy);
        let mut attempt = 0;
        // Back and forth, after a result that was committed and after one that was thrown
        // away with the task's edits still in the tree (one of them in the way of a path the
        // next commit adds).
        for (i, commit) in [first, second, first, second, first]
            .into_iter()
            .enumerate()
        {
            attempt += 1;
            let spec = AttemptSpec {
                base_commit: commit,
                ..t.attempt("api", attempt)
            };
            let dir = slot.checkout(&spec).unwrap();
            assert_tree_is(&t, &dir, commit, &[]);
            if policy == ResetPolicy::Quick && i > 0 {
                assert_eq!(slot.last_reset(), Some(&ResetWay::Moved), "{policy:?} {i}");
            }
            write(&dir, "a.txt", "edited by the task\n");
            write(&dir, "fresh/dir/new.txt", "in the way\n");
            write(&dir, "untracked/file.txt", "untracked\n");
            if i % 2 == 0 {
                slot.finish(&spec, Keep::AttemptRef).unwrap();
            } else {
                slot.discard().unwrap();
            }
        }
    }
}

#[test]
fn changes_hidden_from_git_status_are_undone_too() {
    let t = TestRepo::new();
    for (flag, file) in [
        ("--assume-unchanged", "a.txt"),
        ("--skip-worktree", "f.txt"),
    ] {
        for policy in [ResetPolicy::Quick, ResetPolicy::Thorough] {
            let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
            slot.set_reset_policy(policy);
            let dir = slot.checkout(&t.attempt("api", 1)).unwrap();
            // The task hides an edit from `git status` and `git add`.
            t.git_at(&dir, &["update-index", flag, file]);
            write(&dir, file, "hidden edit\n");
            slot.finish(&t.attempt("api", 1), Keep::AttemptRef).unwrap();
            let dir = slot.checkout(&t.attempt("api", 2)).unwrap();
            assert_pristine(&t, &dir, &t.base);
            assert_eq!(
                t.git_at(&dir, &["ls-files", "-v", file]),
                format!("H {file}"),
                "{flag} is gone ({policy:?})"
            );
            slot.discard().unwrap();
        }
    }
}

#[test]
fn keep_preserves_ignored_caches_and_removes_every_other_untracked_file() {
    let t = TestRepo::new();
    // `target/` and `*.log` are ignored (see TestRepo::new); `cache/` is not.
    let keep = ["target/".to_string(), "cache/".to_string()];
    for policy in [ResetPolicy::Quick, ResetPolicy::Thorough] {
        let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
        slot.set_reset_policy(policy);
        let first = AttemptSpec {
            keep: &keep,
            ..t.attempt("api", 1)
        };
        let dir = slot.checkout(&first).unwrap();
        write(&dir, "target/debug/app", "built once\n");
        write(&dir, "dir/target/nested.o", "built once, deeper\n");
        write(&dir, "build.log", "ignored, not kept\n");
        write(&dir, "notes.txt", "untracked\n");
        write(
            &dir,
            "cache/not-ignored.txt",
            "kept by name, but not ignored\n",
        );
        write(&dir, "a.txt", "edited\n");
        slot.discard().unwrap();

        let second = AttemptSpec {
            keep: &keep,
            ..t.attempt("api", 2)
        };
        let dir = slot.checkout(&second).unwrap();
        assert_tree_is(
            &t,
            &dir,
            &t.base,
            &["target/debug/app", "dir/target/nested.o"],
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("target/debug/app")).unwrap(),
            "built once\n"
        );
        assert_eq!(
            t.git_at(
                &dir,
                &["status", "--porcelain", "--ignored=matching", "-uall"]
            ),
            "!! dir/target/\n!! target/",
            "{policy:?}"
        );
        slot.finish(&second, Keep::AttemptRef).unwrap();

        // An attempt whose plan keeps nothing gets nothing.
        let dir = slot.checkout(&t.attempt("api", 3)).unwrap();
        assert_pristine(&t, &dir, &t.base);
        slot.discard().unwrap();
    }
}

/// Whether anything of a seed's making is left in br's directory but seeds themselves: the
/// probe of whether files can be cloned, a temporary seed.
fn seeding_leftovers(t: &TestRepo) -> Vec<PathBuf> {
    let mut left: Vec<PathBuf> = std::fs::read_dir(t.repo.br_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    left.extend(
        seeds(&t.repo)
            .unwrap()
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.')),
    );
    left
}

/// Where the temporary directory's file system clones files (XFS with reflink, btrfs), a slot
/// made while another is held gets the caches the first kept, cloned from the seed, but only
/// those its own commit ignores; where it cannot (ext4, tmpfs), seeding is declined, nothing is
/// copied and nothing is left behind. `crates/br/tests/seeds.rs` runs both on file systems of
/// its choosing.
#[test]
fn a_seed_of_kept_caches_is_made_and_planted_or_declined_by_the_file_system() {
    let t = TestRepo::new();
    // `target/` is ignored (see TestRepo::new); a commit that stops ignoring it comes later.
    let keep = ["target/".to_string()];
    let first = AttemptSpec {
        keep: &keep,
        ..t.attempt("api", 1)
    };
    let mut held = WorktreeSlot::acquire(&t.repo).unwrap();
    let dir = held.checkout(&first).unwrap();
    assert!(matches!(held.last_planting(), Some(Planting::NoSeed)));
    assert_eq!(held.seed(&keep).unwrap(), Seeding::NothingKept);
    write(&dir, "target/debug/app", "built once\n");
    write(&dir, "dir/target/nested.o", "built once, deeper\n");
    write(&dir, "build.log", "ignored, not kept\n");
    held.finish(&first, Keep::AttemptRef).unwrap();

    let seeding = held.seed(&keep).unwrap();
    assert!(
        seeding_leftovers(&t).is_empty(),
        "{:?}",
        seeding_leftovers(&t)
    );
    // `held` is held, so these slots are made.
    let mut made = WorktreeSlot::acquire(&t.repo).unwrap();
    let dir = made
        .checkout(&AttemptSpec {
            keep: &keep,
            ..t.attempt("web", 1)
        })
        .unwrap();
    assert_eq!(made.last_reset(), Some(&ResetWay::Created));
    std::fs::write(t.root.join(".gitignore"), "*.log\n").unwrap();
    t.git(&["commit", "-q", "-am", "target/ is not ignored any more"]);
    let unignored = t.git(&["rev-parse", "HEAD"]);
    let mut other = WorktreeSlot::acquire(&t.repo).unwrap();
    let other_dir = other
        .checkout(&AttemptSpec {
            keep: &keep,
            base_commit: &unignored,
            ..t.attempt("docs", 1)
        })
        .unwrap();
    match seeding {
        Seeding::Made(seed) => {
            let in_seed: Vec<PathBuf> = files_under(&seed).into_keys().collect();
            assert_eq!(
                in_seed,
                ["dir/target/nested.o", "target/debug/app"].map(PathBuf::from),
                "the seed holds the kept paths and nothing else"
            );
            assert!(
                matches!(made.last_planting(), Some(Planting::Planted { paths: 2 })),
                "{:?}",
                made.last_planting()
            );
            assert_tree_is(
                &t,
                &dir,
                &t.base,
                &["dir/target/nested.o", "target/debug/app"],
            );
            // What its commit does not ignore is cleaned away, as from any slot.
            assert!(matches!(
                other.last_planting(),
                Some(Planting::Planted { paths: 2 })
            ));
            assert_pristine(&t, &other_dir, &unignored);
            assert_eq!(held.seed(&keep).unwrap(), Seeding::Exists);
        }
        Seeding::CannotClone(why) => {
            assert!(why.contains("failed to clone"), "{why}");
            assert_eq!(seeds(&t.repo).unwrap(), Vec::<PathBuf>::new());
            assert!(matches!(made.last_planting(), Some(Planting::NoSeed)));
            assert_pristine(&t, &dir, &t.base);
            assert_pristine(&t, &other_dir, &unignored);
        }
        other => panic!("{other:?}"),
    }
}

/// Two workers seeding the same patterns at once leave one seed: the rename of one wins, the
/// other finds the seed there and removes its own copy. Where files cannot be cloned, both
/// decline and leave nothing.
#[test]
fn workers_seeding_at_once_leave_one_seed_and_no_copy_of_their_own() {
    let t = TestRepo::new();
    let keep = ["target/".to_string()];
    for round in 0..5 {
        let slots: Vec<WorktreeSlot> = ["api", "web"]
            .iter()
            .map(|task| {
                let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
                let dir = slot
                    .checkout(&AttemptSpec {
                        keep: &keep,
                        ..t.attempt(task, round + 1)
                    })
                    .unwrap();
                write(&dir, "target/debug/app", &format!("built by {task}\n"));
                slot.discard().unwrap();
                slot
            })
            .collect();
        let start = Barrier::new(slots.len());
        let mut seedings: Vec<Seeding> = std::thread::scope(|scope| {
            let running: Vec<_> = slots
                .iter()
                .map(|slot| {
                    let (start, keep) = (&start, &keep);
                    scope.spawn(move || {
                        start.wait();
                        slot.seed(keep).unwrap()
                    })
                })
                .collect();
            running.into_iter().map(|r| r.join().unwrap()).collect()
        });
        seedings.sort_by_key(|s| matches!(s, Seeding::Exists));
        match &seedings[..] {
            [Seeding::Made(seed), Seeding::Exists] => {
                assert_eq!(seeds(&t.repo).unwrap(), std::slice::from_ref(seed));
                let built = std::fs::read_to_string(seed.join("target/debug/app")).unwrap();
                assert!(built.starts_with("built by "), "{built}");
                br_git::worktree::remove_seed(seed).unwrap();
            }
            [Seeding::CannotClone(_), Seeding::CannotClone(_)] => {
                assert_eq!(seeds(&t.repo).unwrap(), Vec::<PathBuf>::new());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            seeding_leftovers(&t).is_empty(),
            "{:?}",
            seeding_leftovers(&t)
        );
    }
}

/// A seed that cannot be cloned into a slot being made (the repository moved to a file system
/// that cannot clone files) costs the slot its caches, not the checkout: it is left as the
/// checkout made it.
#[test]
fn a_seed_that_cannot_be_planted_leaves_the_new_slot_as_its_checkout_made_it() {
    let t = TestRepo::new();
    let keep = ["target/".to_string()];
    let name = git_with_input(&t, "target/\n", &["hash-object", "--stdin"]);
    let seed = t.repo.seeds_dir().join(name);
    write(&seed, "target/debug/app", "built elsewhere\n");
    let mut slot = WorktreeSlot::acquire(&t.repo).unwrap();
    let dir = slot
        .checkout(&AttemptSpec {
            keep: &keep,
            ..t.attempt("api", 1)
        })
        .unwrap();
    match slot.last_planting() {
        Some(Planting::Planted { paths: 1 }) => {
            assert_tree_is(&t, &dir, &t.base, &["target/debug/app"]);
        }
        Some(Planting::Failed(e)) => {
            assert!(e.to_string().contains("failed to clone"), "{e}");
            assert_pristine(&t, &dir, &t.base);
        }
        other => panic!("{other:?}"),
    }
    assert!(seed.join("target/debug/app").is_file(), "the seed stays");
}

fn git_with_input(t: &TestRepo, input: &str, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = git_command(t.tmp.path(), &t.root, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
