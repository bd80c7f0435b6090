//! The kernels' thread pool.
//!
//! One process-wide pool of worker threads, started lazily on the first
//! parallel call and kept alive. [`parallel_for`] publishes a job, runs
//! tasks on the calling thread too, and returns when every task is done.
//! Idle workers spin for a few tens of microseconds before parking on a
//! condition variable, so back-to-back kernels (the layers of a forward
//! pass) do not pay a wake-up each; the condition variables are only
//! notified (a system call) when a thread is actually parked on them. Work is split over at most [`threads`]
//! threads; below [`PARALLEL_MIN_FLOPS`] a kernel stays on the calling thread.
//!
//! A call made while the pool is busy (from inside a task, or from a second
//! thread at the same time) runs its tasks on the calling thread. A panic in
//! a task is re-raised on the calling thread after all tasks have finished.
//!
//! ```
//! use cranelora_kernels::pool;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! let sum = AtomicUsize::new(0);
//! pool::parallel_for(10, &|i| {
//!     sum.fetch_add(i, Ordering::Relaxed);
//! });
//! assert_eq!(sum.into_inner(), 45);
//! ```

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Products smaller than this many floating-point operations run on the calling thread.
///
/// Measured on a 2-core AVX-512 machine: splitting pays off from about
/// 64×64×128 (a wake-up and join cost a few microseconds).
pub const PARALLEL_MIN_FLOPS: usize = 1 << 21;

/// How long an idle worker spins for the next job before parking.
const SPIN: Duration = Duration::from_micros(50);

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The machine's available parallelism, read once: the standard library
/// reads cgroup files (and allocates) on every call, too slow for a
/// question asked per product.
static DEFAULT_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The number of threads kernels may use (default: available parallelism,
/// as it was at the first call).
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => *DEFAULT_THREADS
            .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

/// Sets the number of threads kernels may use; 0 restores the default.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// Runs `f(0..tasks)`, spread over the pool's threads; returns when all are done.
///
/// Each index runs exactly once. Tasks run on the calling thread plus up to
/// `threads() - 1` workers.
///
/// # Panics
/// If a task panics, the other tasks still run, then the first panic is
/// resumed on the calling thread.
pub fn parallel_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    parallel_for_slots(tasks, threads(), &|task, _| f(task));
}

/// Runs `f(task, slot)` for `task` in `0..tasks` on at most `max_threads`
/// threads (and at most [`threads`]); returns when all are done.
///
/// `slot < max_threads` identifies the thread running the task: no two
/// threads run tasks of this call with the same slot, so a caller can give
/// each slot its own scratch buffer and use more tasks than threads for
/// load balance.
///
/// # Panics
/// As [`parallel_for`].
pub fn parallel_for_slots(tasks: usize, max_threads: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let helpers = threads().min(max_threads).min(tasks).saturating_sub(1);
    if helpers == 0 || BUSY.swap(true, Ordering::Acquire) {
        (0..tasks).for_each(|task| f(task, 0));
        return;
    }
    let _busy = BusyGuard;
    let job = Job {
        f,
        tasks,
        next: AtomicUsize::new(0),
        panic: Mutex::new(None),
    };
    let pool = pool();
    pool.publish(&job, helpers);
    job.run(0);
    pool.retire();
    if let Some(payload) = take(&job.panic) {
        resume_unwind(payload);
    }
}

/// Set while a job is published; a second caller then runs sequentially.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Clears [`BUSY`] when the owning call returns or unwinds.
struct BusyGuard;

impl Drop for BusyGuard {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// One `parallel_for` call, living on the caller's stack.
struct Job<'a> {
    f: &'a (dyn Fn(usize, usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Takes task indices until none are left; records the first panic.
    fn run(&self, slot: usize) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.f)(i, slot))) {
                lock(&self.panic).get_or_insert(payload);
            }
        }
    }
}

/// A published job, shared with the workers.
#[derive(Clone, Copy)]
struct JobRef(*const Job<'static>);

// SAFETY: the pointee is `Sync` (atomics, a mutex and a `Sync` closure), and
// `Pool::retire` keeps it alive until no worker holds the pointer.
unsafe impl Send for JobRef {}

struct State {
    job: Option<JobRef>,
    epoch: u64,
    max_join: usize,
    /// Workers that joined the current job so far.
    joins: usize,
    spawned: usize,
    /// Workers waiting on `Pool::wake` (parked after spinning).
    parked: usize,
    /// Whether the caller waits on `Pool::left`.
    retiring: bool,
}

struct Pool {
    state: Mutex<State>,
    /// Workers wait here for a new epoch.
    wake: Condvar,
    /// The caller waits here for `joined` to reach zero.
    left: Condvar,
    /// Mirrors `State::epoch`, for spinning workers.
    epoch: AtomicU64,
    /// Workers inside the current job.
    joined: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State {
            job: None,
            epoch: 0,
            max_join: 0,
            joins: 0,
            spawned: 0,
            parked: 0,
            retiring: false,
        }),
        wake: Condvar::new(),
        left: Condvar::new(),
        epoch: AtomicU64::new(0),
        joined: AtomicUsize::new(0),
    })
}

/// Locks a mutex, ignoring poisoning (no lock here is held across user code).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    lock(m).take()
}

impl Pool {
    /// Makes `job` visible to up to `helpers` workers, starting them if needed.
    fn publish(&'static self, job: &Job<'_>, helpers: usize) {
        let mut st = lock(&self.state);
        while st.spawned < helpers {
            let seen = st.epoch;
            let spawned = std::thread::Builder::new()
                .name(format!("cranelora-pool-{}", st.spawned))
                .spawn(move || self.work(seen));
            if spawned.is_err() {
                break; // run with the workers we have
            }
            st.spawned += 1;
        }
        st.job = Some(JobRef((job as *const Job<'_>).cast()));
        st.max_join = helpers.min(st.spawned);
        st.joins = 0;
        st.epoch += 1;
        self.epoch.store(st.epoch, Ordering::Release);
        // Workers still spinning see the new epoch without a wake-up; only
        // parked ones need the (system-call) notification. A worker parks
        // only after checking the epoch under this lock, so none is missed.
        let parked = st.parked > 0;
        drop(st);
        if parked {
            self.wake.notify_all();
        }
    }

    /// Withdraws the job and waits until no worker is inside it.
    fn retire(&self) {
        lock(&self.state).job = None;
        let start = Instant::now();
        while self.joined.load(Ordering::Acquire) > 0 && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let mut st = lock(&self.state);
        st.retiring = true;
        while self.joined.load(Ordering::Acquire) > 0 {
            st = self.left.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.retiring = false;
    }

    /// A worker's life: wait for an epoch, join its job if there is room, repeat.
    /// `seen` is the epoch before the worker was started.
    fn work(&self, mut seen: u64) {
        loop {
            self.spin_for_epoch(seen);
            let mut st = lock(&self.state);
            while st.epoch == seen {
                st.parked += 1;
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                st.parked -= 1;
            }
            seen = st.epoch;
            let Some(job) = st.job else { continue };
            if st.joins >= st.max_join {
                continue;
            }
            // Slots 1..=max_join, one per join of this job; the caller is 0.
            st.joins += 1;
            let slot = st.joins;
            self.joined.fetch_add(1, Ordering::AcqRel);
            drop(st);
            // SAFETY: the job was published and we joined it under the lock,
            // so `retire` (which unpublishes under the same lock, then waits
            // for `joined` to reach zero) keeps it alive until we leave below.
            unsafe { &*job.0 }.run(slot);
            if self.joined.fetch_sub(1, Ordering::AcqRel) == 1 {
                // The caller checks `joined` under the lock before it
                // waits, so it is either not waiting yet (and will see 0)
                // or marked `retiring`: no notification is lost.
                let st = lock(&self.state);
                if st.retiring {
                    self.left.notify_all();
                }
            }
        }
    }

    /// Spins until the epoch moves past `seen` or the spin budget runs out.
    fn spin_for_epoch(&self, seen: u64) {
        let start = Instant::now();
        while self.epoch.load(Ordering::Acquire) == seen && start.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_for_runs_every_index_once() {
        for tasks in [0, 1, 2, 3, 17] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn parallel_for_slots_are_below_the_cap_and_exclusive() {
        let busy: Vec<AtomicBool> = (0..2).map(|_| AtomicBool::new(false)).collect();
        parallel_for_slots(64, 2, &|_, slot| {
            assert!(
                !busy[slot].swap(true, Ordering::AcqRel),
                "slot {slot} shared"
            );
            std::hint::black_box((0..1000).sum::<usize>());
            busy[slot].store(false, Ordering::Release);
        });
    }

    #[test]
    fn parallel_for_nested_call_runs_sequentially() {
        let total = AtomicUsize::new(0);
        parallel_for(4, &|_| {
            parallel_for(3, &|j| {
                total.fetch_add(j + 1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.into_inner(), 4 * 6);
    }

    #[test]
    fn parallel_for_propagates_a_panic_and_stays_usable() {
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            parallel_for(8, &|i| {
                if i == 5 {
                    panic!("task 5 fails");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(result.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 7);
        let again = AtomicUsize::new(0);
        parallel_for(8, &|_| {
            again.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(again.into_inner(), 8);
    }
}
