//! How br uses git: the only way it runs git (`git.rs`), the reusable worktree slots attempts
//! run in and the refs that keep what an attempt left (`worktree.rs`), and conflict prediction
//! with git's merge machinery on objects alone (`conflicts.rs`). Nothing here starts a task or
//! reads the store.

pub mod conflicts;
pub mod fates;
pub mod flock;
pub mod git;
pub mod promote;
pub mod refs;
pub mod remote;
pub mod worktree;

pub use git::{Git, GitError, Repo};
