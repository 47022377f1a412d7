//! The one way br runs git: the git CLI with an argv (never a shell string), with the variables
//! that would point it at another repository removed from the inherited environment.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Variables a parent git (e.g. a hook that runs br) may have set; inherited, they would make our
/// git commands act on the wrong repository, index or object store.
pub const GIT_LOCATION_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_COMMON_DIR",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed or not on PATH")]
    NotInstalled(#[source] std::io::Error),
    #[error("could not run git")]
    Spawn(#[source] std::io::Error),
    #[error("cannot run git in {}: no such directory", dir.display())]
    NoDirectory { dir: PathBuf },
    #[error("{} is not in a git repository (br runs tasks on a git repository: run `git init` there, or pass -C DIR)", dir.display())]
    NotARepository { dir: PathBuf },
    #[error("{} is a bare repository: br needs a working tree", dir.display())]
    Bare { dir: PathBuf },
    #[error("`{revision}` does not name a commit in {}", dir.display())]
    UnknownRevision { revision: String, dir: PathBuf },
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{feature} needs git {need} or newer, but this is git {found}")]
    TooOld {
        feature: &'static str,
        need: String,
        found: String,
    },
    #[error("could not understand `git --version` output `{0}`")]
    UnknownVersion(String),
}

/// Configuration for the git commands br runs on its own behalf (worktree slots, commits of task
/// results, merges): the user's hooks must never run, because br's operations are not the user's
/// (a failing pre-commit hook would lose a task's result, a post-checkout hook would run once per
/// attempt), and nothing may stop to ask for a signing passphrase.
pub const OWN_OPERATION_CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
];

/// The identity of br's own commits when the repository configures none.
pub const FALLBACK_NAME: &str = "br";
pub const FALLBACK_EMAIL: &str = "br@localhost";

/// Variables set on every git command this process runs: `None` removes the variable.
static PROCESS_ENV: OnceLock<Vec<(OsString, Option<OsString>)>> = OnceLock::new();

/// Sets variables on every git command this process runs from now on; only the first call takes
/// effect, and it returns whether it did.
///
/// This is for tests: they need git isolated from the developer's configuration
/// (`GIT_CONFIG_GLOBAL=/dev/null`, a temporary `HOME`), and changing the test process's own
/// environment is `unsafe` and racy while tests run on parallel threads. The values must be the
/// same for every test in the process, which is why it can be set once only.
pub fn set_process_env(vars: Vec<(OsString, Option<OsString>)>) -> bool {
    PROCESS_ENV.set(vars).is_ok()
}

/// Runs git in one directory.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
    /// `key=value` pairs passed as `-c key=value` before every command.
    config: Vec<String>,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>) -> Git {
        Git {
            dir: dir.into(),
            config: Vec::new(),
        }
    }

    /// The same, with `-c key_value` on every command (`key_value` is `key=value`).
    pub fn with_config(mut self, key_value: impl Into<String>) -> Git {
        self.config.push(key_value.into());
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A git command for this directory with a clean environment. Output is in the C locale so
    /// br can parse it.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(&self.dir);
        for kv in &self.config {
            cmd.arg("-c").arg(kv);
        }
        cmd.args(args).current_dir(&self.dir);
        for var in GIT_LOCATION_VARS {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C").env("GIT_TERMINAL_PROMPT", "0");
        for (key, value) in PROCESS_ENV.get().into_iter().flatten() {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs git and returns its output, whatever its exit status.
    pub fn output<I, S>(&self, args: I) -> Result<Output, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).output().map_err(|e| self.spawn_error(e))
    }

    fn spawn_error(&self, e: std::io::Error) -> GitError {
        if e.kind() != std::io::ErrorKind::NotFound {
            GitError::Spawn(e)
        } else if self.dir.is_dir() {
            GitError::NotInstalled(e)
        } else {
            // The command runs in `dir`, so a missing directory also shows as NotFound.
            GitError::NoDirectory {
                dir: self.dir.clone(),
            }
        }
    }

    /// Runs git, requires success, and returns stdout without the trailing newline.
    pub fn run<I, S>(&self, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let stdout = self.run_raw(args)?;
        let mut text = String::from_utf8_lossy(&stdout).into_owned();
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        Ok(text)
    }

    /// Runs git, requires success, and returns stdout as it is (for `-z` output, where a path
    /// may hold any byte but NUL).
    pub fn run_raw<I, S>(&self, args: I) -> Result<Vec<u8>, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.output(&args)?;
        if !out.status.success() {
            return Err(failure(&args, &out));
        }
        Ok(out.stdout)
    }

    /// Runs git with `input` on its stdin (e.g. paths for `--pathspec-from-file=-`, which no
    /// argv limit caps), requires success, and returns stdout as it is.
    pub fn run_with_input<I, S>(&self, args: I, input: &[u8]) -> Result<Vec<u8>, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let stdin = child.stdin.take();
        // Written from another thread: git may fill its stdout pipe before it has read all of
        // its input, and the two would wait for each other.
        let out = std::thread::scope(|scope| {
            if let Some(mut pipe) = stdin {
                scope.spawn(move || {
                    use std::io::Write;
                    // A git that exits early closes the pipe; its exit status says why.
                    let _ = pipe.write_all(input);
                });
            }
            child.wait_with_output()
        })
        .map_err(GitError::Spawn)?;
        if !out.status.success() {
            return Err(failure(&args, &out));
        }
        Ok(out.stdout)
    }

    /// The installed git's version as (major, minor, patch), e.g. (2, 47, 3).
    pub fn version(&self) -> Result<(u32, u32, u32), GitError> {
        let text = self.run(["--version"])?;
        parse_version(&text).ok_or(GitError::UnknownVersion(text))
    }
}

/// The error for a git command that exited unsuccessfully, with its stderr.
pub fn failure(args: &[OsString], out: &Output) -> GitError {
    GitError::Failed {
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// Parses `git version 2.47.3`, also with vendor suffixes (`2.39.3 (Apple Git-146)`,
/// `2.45.0.windows.1`, `2.46.0.rc1`).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.trim().strip_prefix("git version ")?;
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// A repository br works on, and where br keeps its files inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// The working tree's top directory.
    pub root: PathBuf,
    /// The common git directory: the same from the main checkout and every worktree.
    pub common_dir: PathBuf,
}

impl Repo {
    /// Finds the repository containing `dir`.
    pub fn discover(dir: &Path) -> Result<Repo, GitError> {
        let git = Git::new(dir);
        // The common case in one git process: a repository with a working tree.
        let out = git.output([
            "rev-parse",
            "--is-bare-repository",
            "--git-common-dir",
            "--show-toplevel",
        ])?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().collect();
            if let [bare, common, root] = lines[..]
                && bare == "false"
            {
                return Ok(Repo {
                    root: PathBuf::from(root),
                    common_dir: Self::common_dir(dir, common),
                });
            }
        }
        // Otherwise, find out what it is, to say so.
        let out = git.output(["rev-parse", "--is-bare-repository", "--git-common-dir"])?;
        if !out.status.success() {
            return Err(GitError::NotARepository {
                dir: dir.to_path_buf(),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        if lines.next() == Some("true") {
            return Err(GitError::Bare {
                dir: dir.to_path_buf(),
            });
        }
        let common = lines.next().unwrap_or(".git");
        let root = git
            .run(["rev-parse", "--show-toplevel"])
            .map_err(|_| GitError::Bare {
                dir: dir.to_path_buf(),
            })?;
        Ok(Repo {
            root: PathBuf::from(root),
            common_dir: Self::common_dir(dir, common),
        })
    }

    /// The common git directory as git printed it: relative to `dir` when it can be.
    fn common_dir(dir: &Path, printed: &str) -> PathBuf {
        let common = Path::new(printed);
        let common_dir = if common.is_absolute() {
            common.to_path_buf()
        } else {
            dir.join(common)
        };
        common_dir.canonicalize().unwrap_or(common_dir)
    }

    pub fn git(&self) -> Git {
        Git::new(&self.root)
    }

    /// A git for br's own operations in `dir` (the repository root or one of its worktrees):
    /// with `OWN_OPERATION_CONFIG`, and with an identity for commits that does not depend on the
    /// user having one: the configured `user.name`/`user.email` when present, else
    /// `br <br@localhost>`. `GIT_AUTHOR_*`/`GIT_COMMITTER_*` in the environment still win, as
    /// they do for git itself.
    pub fn own_git(&self, dir: &Path) -> Result<Git, GitError> {
        let mut git = Git::new(dir);
        for kv in OWN_OPERATION_CONFIG {
            git = git.with_config(*kv);
        }
        // Exit status 1 means "none set", which is the case the fallback is for.
        let out = self.git().output([
            "config",
            "--includes",
            "--get-regexp",
            r"^user\.(name|email)$",
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let configured = |key: &str| {
            text.lines().any(|line| {
                line.split_once(' ')
                    .is_some_and(|(k, v)| k == key && !v.trim().is_empty())
            })
        };
        if !configured("user.name") {
            git = git.with_config(format!("user.name={FALLBACK_NAME}"));
        }
        if !configured("user.email") {
            git = git.with_config(format!("user.email={FALLBACK_EMAIL}"));
        }
        Ok(git)
    }

    /// `<git common dir>/br`: br's store, logs, worktrees and seeds.
    pub fn br_dir(&self) -> PathBuf {
        self.common_dir.join("br")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.br_dir().join("logs")
    }

    pub fn worktrees_dir(&self) -> PathBuf {
        self.br_dir().join("worktrees")
    }

    /// Where the seeds of kept caches are (see `worktree::seed`).
    pub fn seeds_dir(&self) -> PathBuf {
        self.br_dir().join("seeds")
    }

    /// What makes this repository the same one in every clone: `root:<commit>`, the first (in
    /// byte order) of the root commits reachable from HEAD. Clones, worktrees and forks share it;
    /// an unrelated repository does not. (Remote URLs do not serve: one clone says `git@…`,
    /// another `https://…`, a local one a path.) A repository without commits has no history to
    /// share: `path:<git common dir>`. Walking the whole history once is kept in
    /// `<common>/br/repo-id`, so later calls read one small file.
    pub fn identity(&self) -> Result<String, GitError> {
        let cache = self.br_dir().join("repo-id");
        if let Ok(known) = std::fs::read_to_string(&cache) {
            let known = known.trim();
            if known.starts_with("root:") || known.starts_with("path:") {
                return Ok(known.to_string());
            }
        }
        let out = self
            .git()
            .output(["rev-list", "--max-parents=0", "HEAD", "--"])?;
        let roots = String::from_utf8_lossy(&out.stdout);
        let identity = match roots.lines().map(str::trim).filter(|l| !l.is_empty()).min() {
            Some(root) if out.status.success() => format!("root:{root}"),
            // No commit yet (unborn HEAD): this checkout is all there is.
            _ => format!("path:{}", self.common_dir.display()),
        };
        // Only a history-based identity is worth keeping: a path one changes with the first
        // commit. Failing to keep it costs only the walk next time.
        if identity.starts_with("root:") {
            let _ = std::fs::create_dir_all(self.br_dir())
                .and_then(|()| std::fs::write(&cache, format!("{identity}\n")));
        }
        Ok(identity)
    }

    /// Resolves a revision to a full commit id.
    pub fn resolve_commit(&self, revision: &str) -> Result<String, GitError> {
        let spec = format!("{revision}^{{commit}}");
        self.git()
            .run([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ])
            .map_err(|_| GitError::UnknownRevision {
                revision: revision.to_string(),
                dir: self.root.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_vendor_suffixes() {
        for (text, want) in [
            ("git version 2.47.3", Some((2, 47, 3))),
            ("git version 2.39.3 (Apple Git-146)", Some((2, 39, 3))),
            ("git version 2.45.0.windows.1\n", Some((2, 45, 0))),
            ("git version 2.46.0.rc1", Some((2, 46, 0))),
            ("git version 3.0", Some((3, 0, 0))),
            ("hg version 2", None),
            ("git version x", None),
        ] {
            assert_eq!(parse_version(text), want, "{text}");
        }
    }
}
