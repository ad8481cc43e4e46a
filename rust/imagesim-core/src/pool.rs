//! Thread pools. Each call builds its own pool of the requested size instead of using rayon's
//! global pool: the global pool does not survive `fork()` (DataLoader workers, multiprocessing),
//! and building a pool costs microseconds next to a COG's worth of work.
use crate::error::{Error, Result};

/// Run `f` inside a rayon pool of `threads` workers (0 = one per core).
pub fn run_in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("imagesim-{i}"))
        .build()
        .map_err(|e| {
            Error::InvalidArgument(format!("cannot start {threads} worker threads: {e}"))
        })?;
    Ok(pool.install(f))
}
