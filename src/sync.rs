//! A spin lock for the allocator's slow paths, which may not allocate or block in the kernel while
//! the global allocator is being entered (std's `Mutex` is fine today, but promises nothing about
//! allocation). Every use is amortized over many allocations: acquiring segments, registering
//! threads, reading statistics, a heap's slow paths.

/// The atomics of lock-free code that loom checks: loom's under `--cfg loom`, core's otherwise.
pub mod atomic {
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicPtr, Ordering};

    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicPtr, Ordering};
}

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

/// How a thread waits for another to finish something short (release a lock, end an update):
/// spin a little, then give the processor away, since on 2 cores a spinning waiter can starve the
/// thread it waits for.
pub struct Backoff {
    spins: u32,
}

impl Backoff {
    pub const fn new() -> Self {
        Backoff { spins: 0 }
    }

    /// Waits a moment: a spin hint for the first 64 calls, then a `sched_yield` each.
    pub fn snooze(&mut self) {
        if self.spins < 64 {
            self.spins += 1;
            core::hint::spin_loop();
        } else {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

/// A one-time initialisation that a `fork` in its middle cannot leave unfinished.
///
/// With a plain state word (or `std::sync::Once`), a child forked while another thread was running
/// the initialisation would wait for it forever: that thread does not exist in the child. Here the
/// process that started it is recorded, and a thread that finds it under way in another process
/// (so in a forked child) takes it over and runs it again; `init` must therefore finish whatever a
/// partial run left undone without redoing what it did (the allocator's tracks its own steps).
///
/// Invariant: `state` is `BUSY` only while a thread of process `pid` runs `init` (or, in a forked
/// child, until a thread of the child takes it over); `pid` is written before `state` leaves
/// `UNSET`, by every contender alike (threads of one process share their pid).
pub struct ForkSafeOnce {
    state: AtomicU8,
    pid: AtomicI32,
}

impl ForkSafeOnce {
    const UNSET: u8 = 0;
    const BUSY: u8 = 1;
    const DONE: u8 = 2;
    const FAILED: u8 = 3;

    pub const fn new() -> Self {
        ForkSafeOnce {
            state: AtomicU8::new(Self::UNSET),
            pid: AtomicI32::new(0),
        }
    }

    /// Runs `init` if no thread of this process has (or, in a forked child, finishes it), and
    /// returns whether it succeeded. `pid` gives the calling process's id.
    pub fn run(&self, pid: impl Fn() -> i32, init: impl FnOnce() -> bool) -> bool {
        let mut backoff = Backoff::new();
        loop {
            match self.state.load(Ordering::Acquire) {
                Self::DONE => return true,
                Self::FAILED => return false,
                Self::UNSET => {
                    self.pid.store(pid(), Ordering::Relaxed);
                    // Release: a thread that sees BUSY sees the pid stored above.
                    if self
                        .state
                        .compare_exchange(
                            Self::UNSET,
                            Self::BUSY,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        return self.finish(init);
                    }
                }
                _ => {
                    let me = pid();
                    let started = self.pid.load(Ordering::Relaxed);
                    // Started in another process: the thread running it is not in this one. One
                    // thread of this process takes it over; the others wait for it as for anyone.
                    if started != me
                        && self
                            .pid
                            .compare_exchange(started, me, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    {
                        return self.finish(init);
                    }
                    // On 2 cores, spinning could starve the thread running it.
                    backoff.snooze();
                }
            }
        }
    }

    fn finish(&self, init: impl FnOnce() -> bool) -> bool {
        let ok = init();
        let done = if ok { Self::DONE } else { Self::FAILED };
        self.state.store(done, Ordering::Release);
        ok
    }

    /// The state a child inherits when its parent forked while process `pid` was initialising.
    #[cfg(test)]
    pub const fn busy_in(pid: i32) -> Self {
        ForkSafeOnce {
            state: AtomicU8::new(Self::BUSY),
            pid: AtomicI32::new(pid),
        }
    }
}

/// Invariant: `locked` is true exactly while one `SpinGuard` for this lock exists.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (acquire on lock, release on unlock).
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; no thread can hold a guard across the move.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut backoff = Backoff::new();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                backoff.snooze();
            }
        }
        self.guard()
    }

    /// The guard of a lock just taken (only then: dropping it releases the lock).
    fn guard(&self) -> SpinGuard<'_, T> {
        SpinGuard {
            lock: self,
            _not_send_or_sync: PhantomData,
        }
    }

    /// Takes the lock if nobody holds it, without waiting.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // The guard is made only on success: dropping one releases the lock, so a guard built
        // eagerly and discarded on failure (as `bool::then_some` would) unlocks the holder's lock.
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(self.guard())
        } else {
            None
        }
    }

    /// Takes the lock without a guard; used by the `fork` handlers, which must hold it across calls.
    pub fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`SpinLock::raw_lock`].
    ///
    /// # Safety
    /// The caller must hold the lock through `raw_lock` and no guard may exist.
    pub unsafe fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Proof that the lock is held. Like std's `MutexGuard` it stays on its thread, and is shared
/// across threads only when `T` itself is `Sync` (the automatic impl would ask only `T: Send`).
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    _not_send_or_sync: PhantomData<*const ()>,
}

// SAFETY: a shared guard hands out only `&T`, which other threads may hold when `T: Sync`.
unsafe impl<T: Sync> Sync for SpinGuard<'_, T> {}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference to `value` exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only guard-derived reference.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{ForkSafeOnce, SpinLock};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Eight threads race to initialise: one runs `init`, all see its result, later calls too.
    #[test]
    fn fork_safe_once_runs_once_and_everyone_sees_the_result() {
        for ok in [true, false] {
            let once = ForkSafeOnce::new();
            let runs = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        let got = once.run(
                            || std::process::id() as i32,
                            || {
                                runs.fetch_add(1, SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(20));
                                ok
                            },
                        );
                        assert_eq!(got, ok);
                    });
                }
            });
            assert_eq!(runs.load(SeqCst), 1);
            assert_eq!(once.run(|| 1, || unreachable!()), ok);
        }
    }

    /// In a child forked while its parent was initialising, the first caller finishes the job
    /// instead of waiting for a thread that is not there; a second caller then sees it done.
    #[test]
    fn fork_safe_once_is_taken_over_in_a_forked_child() {
        let parent = 4242;
        let child = 4343;
        let once = ForkSafeOnce::busy_in(parent);
        let runs = AtomicUsize::new(0);
        let init = || {
            runs.fetch_add(1, SeqCst);
            true
        };
        assert!(once.run(|| child, init));
        assert!(once.run(|| child, || unreachable!()));
        assert_eq!(runs.load(SeqCst), 1);
        // The parent's own waiters (same pid as the starter) do not take it over.
        let busy = ForkSafeOnce::busy_in(parent);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| busy.run(|| parent, || unreachable!()));
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(
                !waiter.is_finished(),
                "a waiter in the starting process took over"
            );
            busy.finish(|| true);
            assert!(waiter.join().unwrap());
        });
    }

    /// A failed `try_lock` leaves the lock with its holder; the holder's release frees it.
    #[test]
    fn try_lock_fails_while_held_and_leaves_the_holder_its_lock() {
        let lock = SpinLock::new(5);
        let held = lock.try_lock().expect("a free lock");
        assert!(lock.try_lock().is_none());
        assert!(
            lock.try_lock().is_none(),
            "a failed try_lock released the lock"
        );
        assert_eq!(*held, 5);
        drop(held);
        assert!(lock.try_lock().is_some());
    }
}
