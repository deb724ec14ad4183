//! A fork-join team whose threads spin between jobs, for decoding on the CPU.
//!
//! Decoding a token runs about five parallel operations per layer, each a few tens of
//! microseconds long, with a few microseconds of work on one thread between them. Handed to
//! rayon's pool, the other threads often fall asleep in those gaps, and waking a sleeping thread
//! (a futex, and in a virtual machine a halted virtual CPU) costs about as much as the operation
//! itself. [`with_team`] runs a closure with one helper thread per other thread of the pool,
//! each spinning until the closure's next [`for_each`] posts tasks; outside a team,
//! [`for_each`] is rayon's parallel loop (and in the browser, a plain loop).

#[cfg(not(target_family = "wasm"))]
use std::cell::RefCell;
#[cfg(not(target_family = "wasm"))]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(not(target_family = "wasm"))]
use std::sync::{Arc, Mutex};

/// Runs `task` on every item of `tasks`, across the current thread's team if it is in one,
/// else across rayon's pool.
pub fn for_each<T: Send>(tasks: Vec<T>, task: impl Fn(T) + Sync + Send) {
    #[cfg(not(target_family = "wasm"))]
    {
        if let Some(team) = CURRENT.take() {
            // Out of the team while its job runs: a task that starts parallel work of its own
            // hands it to rayon rather than posting over the running job.
            struct PutBack(Arc<Team>);
            impl Drop for PutBack {
                fn drop(&mut self) {
                    CURRENT.set(Some(self.0.clone()));
                }
            }
            let back = PutBack(team);
            return back.0.run(tasks, &task);
        }
        use rayon::prelude::*;
        tasks.into_par_iter().for_each(task);
    }
    #[cfg(target_family = "wasm")]
    tasks.into_iter().for_each(task);
}

/// Runs `f` with a team of spinning helpers (one per other thread of rayon's pool), which the
/// [`for_each`] calls that `f` makes on this thread share their tasks with. For many short
/// parallel operations in a row; the helpers keep their cores busy until `f` returns, so `f`
/// should not start rayon work of its own. Without other threads, or in the browser, `f()`.
pub fn with_team<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(not(target_family = "wasm"))]
    {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        if helpers == 0 || CURRENT.with_borrow(Option::is_some) {
            return f();
        }
        let team = Arc::new(Team::default());
        std::thread::scope(|scope| {
            // A thread the system refuses leaves fewer helpers (none: `f` runs alone).
            let spawned = (0..helpers)
                .filter(|_| {
                    std::thread::Builder::new()
                        .name("cinder-team".into())
                        .spawn_scoped(scope, || team.help())
                        .is_ok()
                })
                .count();
            team.helpers.store(spawned, Ordering::Relaxed);
            // Stops the helpers however `f` ends, so the scope can join them.
            struct Stop<'a>(&'a Team);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    CURRENT.set(None);
                    self.0.stop.store(true, Ordering::Release);
                }
            }
            let _stop = Stop(&team);
            CURRENT.set(Some(team.clone()));
            f()
        })
    }
    #[cfg(target_family = "wasm")]
    f()
}

#[cfg(not(target_family = "wasm"))]
thread_local! {
    static CURRENT: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
}

/// One posted job: the poster's closure, which takes tasks from the job's queue until it is
/// empty, with its lifetime erased: valid until every helper has counted itself in
/// `Team::done`, which the poster waits for.
#[cfg(not(target_family = "wasm"))]
type Job = &'static (dyn Fn() + Sync);

#[cfg(not(target_family = "wasm"))]
#[derive(Default)]
struct Team {
    /// Threads besides the poster.
    helpers: AtomicUsize,
    /// Bumped (Release) after `job` is written; helpers start when they see it change.
    generation: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// Helpers finished with the current job.
    done: AtomicUsize,
    /// A task panicked on a helper.
    panicked: AtomicBool,
    stop: AtomicBool,
}

#[cfg(not(target_family = "wasm"))]
impl Team {
    fn run<T: Send>(&self, tasks: Vec<T>, task: &(impl Fn(T) + Sync)) {
        // One queue that every thread takes the next task from, so a late helper costs nothing.
        let queue = Mutex::new(tasks.into_iter());
        let work = || {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(t) = next else { return };
                task(t);
            }
        };
        let work: &(dyn Fn() + Sync) = &work;
        // SAFETY: only the lifetime changes. The helpers call `work` only between seeing this
        // job's generation and counting themselves in `done`, and this function neither
        // returns nor unwinds past `work` before they all have (`Wait` below).
        #[allow(unsafe_code)]
        let work: Job = unsafe { std::mem::transmute(work) };
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(work);
        self.done.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
        let helpers = self.helpers.load(Ordering::Relaxed);
        // This thread works too; a panic here still waits for the helpers before unwinding.
        struct Wait<'a>(&'a Team, usize);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let mut spins = 0u32;
                while self.0.done.load(Ordering::Acquire) < self.1 {
                    pause(&mut spins);
                }
            }
        }
        {
            let _wait = Wait(self, helpers);
            work();
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of a decoding team panicked on a helper thread");
        }
    }

    /// A helper's loop: wait for a new generation (or the stop), take tasks until none is left,
    /// count itself done.
    fn help(&self) {
        let mut seen = 0;
        loop {
            let mut spins = 0u32;
            let generation = loop {
                let g = self.generation.load(Ordering::Acquire);
                if g != seen {
                    break g;
                }
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                pause(&mut spins);
            };
            seen = generation;
            let job = *self.job.lock().unwrap_or_else(|e| e.into_inner());
            let work = std::panic::AssertUnwindSafe(|| {
                if let Some(work) = job {
                    work();
                }
            });
            if std::panic::catch_unwind(work).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// One round of a spin wait: a CPU pause, and after many rounds a yield, so a team still makes
/// progress when it has more threads than free cores (tests running side by side).
#[cfg(not(target_family = "wasm"))]
#[inline]
fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 14 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_runs_every_task_once_and_nests_into_rayon() {
        let sums: Vec<usize> = with_team(|| {
            (0..200)
                .map(|n| {
                    let mut out = vec![0usize; n];
                    let tasks: Vec<(usize, &mut usize)> = out.iter_mut().enumerate().collect();
                    for_each(tasks, |(i, o)| {
                        // A task's own parallel loop runs outside the team.
                        let mut inner = [0usize; 3];
                        for_each(inner.iter_mut().collect(), |v| *v = i);
                        *o += i * i + 1 + inner.iter().sum::<usize>();
                    });
                    out.iter().sum()
                })
                .collect()
        });
        for (n, sum) in sums.into_iter().enumerate() {
            assert_eq!(
                sum,
                (0..n).map(|i| i * i + 1 + 3 * i).sum::<usize>(),
                "{n} tasks"
            );
        }
        // Outside a team, the same call runs on rayon's pool.
        let mut out = vec![0usize; 10];
        for_each(out.iter_mut().collect(), |o| *o = 3);
        assert_eq!(out, [3; 10]);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_stops() {
        let caught = std::panic::catch_unwind(|| {
            with_team(|| {
                for_each((0..64).collect(), |i: usize| assert!(i != 40, "task {i}"));
            })
        });
        assert!(caught.is_err());
        // The thread is out of the team: this runs on rayon's pool again.
        let mut out = vec![0u8; 4];
        for_each(out.iter_mut().collect(), |o| *o = 1);
        assert_eq!(out, [1; 4]);
    }
}
