//! A small tmpfs, mounted for one test: a disk that really fills up. Mounting needs root (CI
//! runs as root); elsewhere the tests that need one skip, except under CI, where they must run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory, unmounted on drop.
pub(crate) struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (an existing, empty directory). `None`, after saying
    /// so, where this process cannot mount.
    pub(crate) fn mount(path: &Path, bytes: u64) -> Option<Tmpfs> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                // CI must never be green by skipping: there the mount is required.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but a tmpfs cannot be mounted ({why}): the full-disk tests must run in CI"
                );
                println!(
                    "skipped: cannot mount a tmpfs here ({why}); run as root to run this test"
                );
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Fills what is left of it with one file; the path of that file.
    pub(crate) fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .arg("bs=4096")
            .output()
            .expect("run dd");
        assert!(
            br_store::disk_full(&filler),
            "{} is full",
            self.path.display()
        );
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of a failed test may still have a file open in it.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
