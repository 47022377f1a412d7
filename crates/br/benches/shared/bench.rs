//! What several benchmarks share: their arguments, and the workers they register in a store to
//! play the fleet themselves.

use std::time::Duration;

use br_core::{SessionId, WorkerId};
use br_store::{NewWorker, Store};

/// The `n`-th positional argument (after `cargo bench -- …`; flags such as the `--bench` cargo
/// adds are skipped), or `default`.
pub(crate) fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Registers `n` workers serving `session`, as this process's stand-ins for worker processes.
pub(crate) fn register_workers(
    store: &dyn Store,
    session: &SessionId,
    n: u32,
) -> br_store::Result<Vec<WorkerId>> {
    (0..n)
        .map(|i| {
            store.register_worker(&NewWorker {
                host: "bench-host".into(),
                pid: 100_000 + i,
                session: Some(session.clone()),
                heartbeat_timeout: Duration::from_secs(60),
            })
        })
        .collect()
}
