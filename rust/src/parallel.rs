//! The crate's thread pool: capped by `DELTACKPT_NUM_THREADS`, rebuilt after `fork`.
//!
//! Rayon's global pool does not survive `fork()` (the child has no worker threads, so a
//! parallel call would wait forever). PyTorch `DataLoader` workers are forked, so the pool is
//! keyed by process id and rebuilt in a child that uses it.

use std::sync::{Arc, Mutex};

/// Environment variable capping the number of worker threads (`1` disables parallelism).
pub const THREADS_ENV: &str = "DELTACKPT_NUM_THREADS";

static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

/// Number of threads the pool uses: `DELTACKPT_NUM_THREADS` when set to a positive integer,
/// otherwise the number of available cores.
pub fn num_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn pool() -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, pool)) = guard.as_ref() {
        if *owner == pid {
            return pool.clone();
        }
    }
    let pool = Arc::new(
        build(num_threads())
            .or_else(|_| build(1))
            .unwrap_or_else(|e| {
                // No thread at all can be started (a container's process limit): nothing in the crate
                // can run. The bindings turn this panic into their own error type.
                panic!(
                    "deltackpt could not start a worker thread ({e}): the process or thread limit \
             is exhausted; raise it (ulimit -u, the container's pids limit)"
                )
            }),
    );
    *guard = Some((pid, pool.clone()));
    pool
}

/// A pool of `n` threads; fewer than asked is tried by [`pool`] when threads are scarce.
fn build(n: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("deltackpt-{i}"))
        .build()
}

/// Run `f` inside the crate's pool, so that rayon calls in `f` use at most
/// [`num_threads`] threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}
