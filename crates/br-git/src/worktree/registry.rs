//! Git's registrations of worktrees (`git worktree list`), and whether a directory is really a
//! working worktree of the repository.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::git::{Git, GitError, Repo};

/// The worktree's private git directory, from its `.git` file (`gitdir: <path>`).
pub(crate) fn admin_dir(worktree: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(worktree.join(".git")).ok()?;
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
    Some(if dir.is_absolute() {
        dir
    } else {
        worktree.join(dir)
    })
}

/// Whether `path` is the top of a working worktree of `repo` (and not, say, a plain directory
/// inside the repository's git directory, where git would find the main repository).
pub(crate) fn is_worktree_of(repo: &Repo, git: &Git, path: &Path) -> bool {
    if !path.join(".git").is_file() {
        return false;
    }
    let Ok(out) = git.run([
        "rev-parse",
        "--path-format=absolute",
        "--git-common-dir",
        "--show-toplevel",
    ]) else {
        return false;
    };
    let mut lines = out.lines();
    let same = |a: &str, b: &Path| {
        let a = Path::new(a);
        a == b || a.canonicalize().ok() == b.canonicalize().ok()
    };
    matches!(
        (lines.next(), lines.next()),
        (Some(common), Some(top)) if same(common, &repo.common_dir) && same(top, path)
    )
}

pub(crate) fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// One entry of `git worktree list --porcelain`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorktreeEntry {
    pub path: PathBuf,
    /// `None` for a bare repository's entry or an unborn HEAD.
    pub head: Option<String>,
    /// The full ref name (`refs/heads/main`) when a branch is checked out.
    pub branch: Option<String>,
    pub bare: bool,
    pub detached: bool,
    pub locked: bool,
    /// Its directory is gone; `git worktree prune` would remove the registration.
    pub prunable: bool,
}

/// The repository's worktrees, the main one first, from `git worktree list --porcelain -z`.
pub fn list_worktrees(repo: &Repo) -> Result<Vec<WorktreeEntry>, GitError> {
    let out = repo
        .git()
        .run_raw(["worktree", "list", "--porcelain", "-z"])?;
    Ok(parse_worktree_list(&out))
}

fn parse_worktree_list(out: &[u8]) -> Vec<WorktreeEntry> {
    let mut entries = Vec::new();
    let mut current: Option<WorktreeEntry> = None;
    for field in out.split(|b| *b == 0) {
        if field.is_empty() {
            entries.extend(current.take());
            continue;
        }
        let (key, value) = match field.iter().position(|b| *b == b' ') {
            Some(i) => (&field[..i], &field[i + 1..]),
            None => (field, &[][..]),
        };
        if key == b"worktree" {
            entries.extend(current.take());
            current = Some(WorktreeEntry {
                path: PathBuf::from(OsString::from_vec(value.to_vec())),
                ..WorktreeEntry::default()
            });
            continue;
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        let text = || String::from_utf8_lossy(value).into_owned();
        match key {
            b"HEAD" => entry.head = Some(text()).filter(|h| h.bytes().any(|b| b != b'0')),
            b"branch" => entry.branch = Some(text()),
            b"bare" => entry.bare = true,
            b"detached" => entry.detached = true,
            b"locked" => entry.locked = true,
            b"prunable" => entry.prunable = true,
            _ => {}
        }
    }
    entries.extend(current);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worktree_list_porcelain_is_parsed_with_odd_paths() {
        let out = b"worktree /r\0HEAD 1111111111111111111111111111111111111111\0branch refs/heads/main\0\0\
worktree /r/.git/br/worktrees/slot-0\0HEAD 2222222222222222222222222222222222222222\0detached\0\0\
worktree /gone/odd\npath\0HEAD 3333333333333333333333333333333333333333\0detached\0locked\0prunable gitdir file points to non-existent location\0\0\
worktree /bare\0bare\0\0";
        let entries = parse_worktree_list(out);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].branch.as_deref(), Some("refs/heads/main"));
        assert_eq!(entries[1].path, Path::new("/r/.git/br/worktrees/slot-0"));
        assert!(entries[1].detached && !entries[1].prunable);
        assert_eq!(entries[2].path, Path::new("/gone/odd\npath"));
        assert!(entries[2].locked && entries[2].prunable);
        assert!(entries[3].bare && entries[3].head.is_none());
    }
}
