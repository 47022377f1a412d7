//! The one way br runs git: the git CLI with an argv (never a shell string), with the variables
//! that would point it at another repository removed from the inherited environment.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
}

/// Runs git in one directory.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>) -> Git {
        Git { dir: dir.into() }
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
        cmd.arg("-C")
            .arg(&self.dir)
            .args(args)
            .current_dir(&self.dir);
        for var in GIT_LOCATION_VARS {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C").env("GIT_TERMINAL_PROMPT", "0");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs git and returns its output, whatever its exit status.
    pub fn output<I, S>(&self, args: I) -> Result<Output, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                GitError::NotInstalled(e)
            } else {
                GitError::Spawn(e)
            }
        })
    }

    /// Runs git, requires success, and returns stdout without the trailing newline.
    pub fn run<I, S>(&self, args: I) -> Result<String, GitError>
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
            return Err(GitError::Failed {
                args: args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        Ok(text)
    }
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
        let root = PathBuf::from(root);
        let common = Path::new(common);
        // git prints the common dir relative to `dir` when it can.
        let common_dir = if common.is_absolute() {
            common.to_path_buf()
        } else {
            dir.join(common)
        };
        let common_dir = common_dir.canonicalize().unwrap_or(common_dir);
        Ok(Repo { root, common_dir })
    }

    pub fn git(&self) -> Git {
        Git::new(&self.root)
    }

    /// `<git common dir>/br`: br's store, logs and worktrees.
    pub fn br_dir(&self) -> PathBuf {
        self.common_dir.join("br")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.br_dir().join("logs")
    }

    pub fn worktrees_dir(&self) -> PathBuf {
        self.br_dir().join("worktrees")
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
