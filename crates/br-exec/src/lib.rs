//! Everything in br that acts on the world, and the run lifecycle as a library: the worker loop,
//! task processes and their signals, the reaper that outlives a killed worker, the local worker
//! pool and the drive that keeps it (`br run`, `br resume`), the merge queue and its rounds,
//! cleanup as a plan and its application, worker liveness, and waiting on a session. The CLI
//! turns arguments into these functions' options and their events into lines or frames. Git
//! itself is br-git's.

mod agent;
pub mod cleanup;
pub mod context;
pub mod diff;
pub mod drive;
pub mod landing;
pub mod lease;
pub mod liveness;
mod log_ship;
pub mod merge;
pub mod pool;
pub mod process;
pub mod reaper;
pub mod signals;
mod slot_setup;
pub mod strays;
pub mod travel;
pub mod watch;
pub mod worker;
