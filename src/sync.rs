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
use core::sync::atomic::{AtomicBool, Ordering};

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
    use super::SpinLock;

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
