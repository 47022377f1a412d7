//! A small XFS file system with reflink, made in an image file and mounted for one test: a disk
//! whose files can be cloned copy-on-write. Making and mounting it needs root and xfsprogs (CI
//! runs as root, and `.ci/run` installs xfsprogs); elsewhere the tests that need one skip,
//! except under CI, where they must run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An XFS file system mounted at a directory from an image file, unmounted on drop.
pub(crate) struct Xfs {
    path: PathBuf,
    /// Holds the image, outside the mount; removed after the unmount (fields drop after
    /// `drop` ran).
    _image_dir: tempfile::TempDir,
}

impl Xfs {
    /// Makes an XFS file system of `bytes` with reflink in an image file and mounts it at
    /// `path` (an existing, empty directory). `None`, after saying so, where this process
    /// cannot.
    pub(crate) fn mount(path: &Path, bytes: u64) -> Option<Xfs> {
        let image_dir = tempfile::tempdir().expect("temp dir");
        let image = image_dir.path().join("xfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .expect("image file");
        let made = run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image))
        .and_then(|()| {
            run(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&image)
                .arg(path))
        });
        match made {
            Ok(()) => Some(Xfs {
                path: path.to_path_buf(),
                _image_dir: image_dir,
            }),
            Err(why) => {
                // CI must never be green by skipping: there the file system is required.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but an XFS file system cannot be made and mounted ({why}): the \
                     tests of copy-on-write caches must run in CI"
                );
                println!(
                    "skipped: cannot make and mount an XFS file system here ({why}); run as root \
                     with xfsprogs installed to run this test"
                );
                None
            }
        }
    }

    /// Whether every extent of `file` is shared with another file (copy-on-write), as
    /// `filefrag -v` reports it: the direct proof that a clone copied no block.
    pub(crate) fn all_shared(file: &Path) -> bool {
        let out = Command::new("filefrag")
            .arg("-v")
            .arg(file)
            .output()
            .expect("run filefrag (e2fsprogs)");
        let text = String::from_utf8_lossy(&out.stdout);
        // Extent lines start with their number and a colon; flags are their last column.
        let extents: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.trim_start()
                    .split(':')
                    .next()
                    .is_some_and(|n| n.trim().parse::<u32>().is_ok())
            })
            .collect();
        !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
    }

    /// Bytes in use on it, once everything written is on the disk: what `df` shows.
    pub(crate) fn used_bytes(&self) -> u64 {
        run(Command::new("sync").arg("-f").arg(&self.path)).expect("sync");
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(&self.path)
            .output()
            .expect("run df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df's answer: {text}"))
    }
}

/// Runs a command; `Err` with what it said if it could not run or failed.
fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!("{:?}: {e}", cmd.get_program())),
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        // Lazy: a process of a failed test may still have a file open in it. The loop device
        // goes with the last user of the file system (`-o loop` sets it to clear itself).
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
