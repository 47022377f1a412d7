//! Everything in br that acts on the world: the worker loop, task processes and their signals,
//! the reaper that outlives a killed worker, the local worker pool of `br run`, and the merge
//! queue. Git itself is br-git's.

pub mod lease;
pub mod merge;
pub mod pool;
pub mod process;
pub mod reaper;
pub mod worker;
