//! A session's git remote: where its work travels between machines. Workers push each attempt's
//! result and each task branch there and fetch what they start from; landing publishes every
//! integration commit there, after the store recorded it — so the remote's integration branch
//! only ever takes commits the store accepted, and a worker that lost its lease or its landing
//! turn cannot move it.
//!
//! Names on the remote:
//! - `refs/br/bases/<commit>`: a session's base, pushed at submit;
//! - `refs/br/attempts/<session-id>/<task>/<n>`: each attempt's result, as locally;
//! - `refs/heads/br/<slug>/<task>`: a task's branch, moved only by compare-and-swap against the
//!   value its attempt started from;
//! - `refs/br/landed/<session-id>/<commit>`: a landing candidate, pushed before the store records
//!   it, so whoever publishes the recorded commit has its objects;
//! - `refs/heads/br/<slug>/integration`: moved only forwards (never a forced push).
//!
//! Fetches go to `refs/br/remote/…`, never over the local branches br moves itself.

use std::ffi::OsString;
use std::path::Path;

use crate::git::{Git, GitError, Repo, failure};
use crate::refs::resolve_ref;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote refused the update: it moved since (or it is not a fast-forward).
    #[error("the remote {remote} refused to move {reference}: {why}")]
    Refused {
        remote: String,
        reference: String,
        why: String,
    },
    #[error(
        "`remote = \"{0}\"` is neither a remote of this repository (`git remote -v` lists them) \
         nor a URL or path"
    )]
    Unknown(String),
    #[error("cannot make {dir}: {source}")]
    Cache {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Where a remote's refs of a session are fetched to, here.
pub fn fetched_ref(remote_ref: &str) -> String {
    let rest = remote_ref.strip_prefix("refs/").unwrap_or(remote_ref);
    format!("refs/br/remote/{rest}")
}

/// The remote ref a session's base is kept at.
pub fn base_ref(commit: &str) -> String {
    format!("refs/br/bases/{commit}")
}

/// The remote ref a landing candidate is kept at until (and after) the store records it.
pub fn landed_ref(session_id: &str, commit: &str) -> String {
    format!("refs/br/landed/{session_id}/{commit}")
}

/// What a plan's `remote` names: a remote of the repository `git` runs in (its URL), else a URL,
/// an scp-like address or a path (made absolute, so workers elsewhere in this machine find it).
pub fn resolve(git: &Git, remote: &str) -> Result<String, RemoteError> {
    let out = git.output(["remote", "get-url", "--", remote])?;
    if out.status.success() {
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return Ok(url);
    }
    let scp_like = remote
        .split_once(':')
        .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'));
    if remote.contains("://") || scp_like {
        return Ok(remote.to_string());
    }
    let path = Path::new(remote);
    if remote.starts_with('/') || remote.starts_with('.') || path.exists() {
        let absolute = git.dir().join(path);
        if !absolute.exists() {
            return Err(RemoteError::Unknown(remote.to_string()));
        }
        return Ok(std::path::absolute(&absolute)
            .unwrap_or(absolute)
            .to_string_lossy()
            .into_owned());
    }
    Err(RemoteError::Unknown(remote.to_string()))
}

/// A clone of `url` of br's own under `cache` (`br worker --repo URL`): made the first time (its
/// default branch only, no checkout — attempts run in worktrees and fetch what their session
/// needs), then reused across sessions and brought up to date. Workers of one machine that start
/// at once each clone into a directory of their own, and the first to finish wins; the others
/// use its clone.
pub fn own_clone(url: &str, cache: &Path) -> Result<Repo, RemoteError> {
    let name: String = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let dir = cache.join(format!("{name}-{:016x}", fnv1a(url.as_bytes())));
    if dir.join(".git").is_dir() {
        // Up to date with the default branch (sessions' own refs come with each attempt).
        let args: Vec<OsString> = ["fetch", "--quiet", "--no-tags", "origin"]
            .map(OsString::from)
            .to_vec();
        let out = Git::new(&dir).output(&args)?;
        if !out.status.success() {
            return Err(redact_error(failure(&args, &out)).into());
        }
    } else {
        std::fs::create_dir_all(cache).map_err(|source| RemoteError::Cache {
            dir: cache.to_path_buf(),
            source,
        })?;
        let staging = cache.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let args: Vec<OsString> = vec![
            "clone".into(),
            "--quiet".into(),
            "--no-checkout".into(),
            "--single-branch".into(),
            "--".into(),
            url.into(),
            staging.clone().into(),
        ];
        let out = Git::new(cache).output(&args)?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(redact_error(failure(&args, &out)).into());
        }
        if std::fs::rename(&staging, &dir).is_err() {
            // Another worker of this machine made it first: use theirs.
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    Ok(Repo::discover(&dir)?)
}

/// FNV-1a: the same directory for the same URL in every br version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A session's remote as the store records it, and how git is run against it.
#[derive(Debug, Clone)]
pub struct Remote<'a> {
    pub git: &'a Git,
    /// A URL or a path (submit resolved a remote name into its URL).
    pub url: &'a str,
}

/// How one ref should move on the remote.
#[derive(Debug, Clone)]
pub enum Update<'a> {
    /// Delete, only if it still is `expected`.
    Delete {
        reference: &'a str,
        expected: &'a str,
    },
    /// Create or fast-forward (refused otherwise).
    Forward { commit: &'a str, reference: &'a str },
    /// Move from exactly `expected` (`None`: the ref must not exist yet), whatever the history.
    Swap {
        commit: &'a str,
        reference: &'a str,
        expected: Option<&'a str>,
    },
}

impl Remote<'_> {
    /// The URL without a password, for messages.
    pub fn shown(&self) -> String {
        redact_url(self.url)
    }

    /// Fetches everything of a session that work starts from or lands from: its base, its
    /// attempts, its branches and its landing candidates.
    pub fn fetch_session(&self, session_id: &str, slug: &str) -> Result<(), RemoteError> {
        let specs = [
            "refs/br/bases/*".to_string(),
            format!("refs/br/attempts/{session_id}/*"),
            format!("refs/heads/br/{slug}/*"),
            format!("refs/br/landed/{session_id}/*"),
        ];
        // Pruned: a copy here of a ref the remote no longer has (a cleanup elsewhere deleted
        // it) goes too, so the copies are what the remote holds.
        let mut args: Vec<OsString> = [
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
        ]
        .map(OsString::from)
        .to_vec();
        args.push(self.url.into());
        for spec in &specs {
            args.push(format!("+{spec}:{}", fetched_ref(spec)).into());
        }
        let out = self.git.output(&args)?;
        if !out.status.success() {
            return Err(redact_error(failure(&args, &out)).into());
        }
        Ok(())
    }

    /// The remote's branches now: each full ref name with its commit (`git ls-remote --heads`).
    pub fn heads(&self) -> Result<Vec<(String, String)>, RemoteError> {
        let args: Vec<OsString> = vec!["ls-remote".into(), "--heads".into(), self.url.into()];
        let out = self.git.output(&args)?;
        if !out.status.success() {
            return Err(redact_error(failure(&args, &out)).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(commit, name)| (name.to_string(), commit.to_string()))
            .collect())
    }

    /// The remote's value of `reference` as last fetched.
    pub fn fetched(&self, reference: &str) -> Result<Option<String>, GitError> {
        resolve_ref(self.git, &fetched_ref(reference))
    }

    /// Pushes `updates` in one atomic push: all move, or none does. Never a forced push of a
    /// branch: a `Swap` is a compare-and-swap against the value given.
    pub fn push(&self, updates: &[Update<'_>]) -> Result<(), RemoteError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut args: Vec<OsString> = ["push", "--porcelain", "--atomic", "--no-verify"]
            .map(OsString::from)
            .to_vec();
        let mut specs = Vec::new();
        for u in updates {
            match u {
                Update::Delete {
                    reference,
                    expected,
                } => {
                    args.push(format!("--force-with-lease={reference}:{expected}").into());
                    specs.push(format!(":{reference}"));
                }
                Update::Forward { commit, reference } => {
                    specs.push(format!("{commit}:{reference}"));
                }
                Update::Swap {
                    commit,
                    reference,
                    expected,
                } => {
                    args.push(
                        format!("--force-with-lease={reference}:{}", expected.unwrap_or("")).into(),
                    );
                    specs.push(format!("{commit}:{reference}"));
                }
            }
        }
        args.push(self.url.into());
        args.extend(specs.into_iter().map(OsString::from));
        let out = self.git.output(&args)?;
        if out.status.success() {
            return Ok(());
        }
        // `--porcelain` prints one line per ref: `!<tab>src:dst<tab>[rejected] (why)`.
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = text.lines().find(|l| l.starts_with('!')) {
            let mut fields = line.split('\t');
            let reference = fields
                .nth(1)
                .and_then(|spec| spec.split_once(':'))
                .map_or(String::new(), |(_, dst)| dst.to_string());
            let why = fields.next().unwrap_or("rejected").to_string();
            return Err(RemoteError::Refused {
                remote: self.shown(),
                reference,
                why,
            });
        }
        Err(redact_error(failure(&args, &out)).into())
    }
}

/// A git error with every URL's password taken out of it.
fn redact_error(e: GitError) -> GitError {
    match e {
        GitError::Failed {
            args,
            status,
            stderr,
        } => GitError::Failed {
            args: redact_url(&args),
            status,
            stderr: redact_url(&stderr),
        },
        other => other,
    }
}

/// `scheme://user:password@host/…` with the password replaced, wherever such a URL appears in
/// `text`.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden_and_the_rest_is_kept() {
        assert_eq!(
            redact_url("fatal: could not read from https://bob:s3cret@git.example/r.git x"),
            "fatal: could not read from https://bob:***@git.example/r.git x"
        );
        assert_eq!(
            redact_url("ssh://git@host/r.git and /srv/r.git"),
            "ssh://git@host/r.git and /srv/r.git"
        );
    }

    #[test]
    fn fetched_refs_live_apart_from_the_branches_br_moves() {
        assert_eq!(
            fetched_ref("refs/heads/br/s/integration"),
            "refs/br/remote/heads/br/s/integration"
        );
        assert_eq!(
            fetched_ref("refs/br/bases/abc"),
            "refs/br/remote/br/bases/abc"
        );
    }
}
