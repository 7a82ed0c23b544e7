//! [`ObjectPool`]: reuse of expensive objects behind one mutex.
//!
//! One `Mutex<Vec<T>>` rather than a per-thread cache: an object worth pooling costs far more to
//! build than an uncontended lock (about 20 ns), and objects are often handed between threads,
//! where a per-thread cache would strand them. The counters live inside the same lock, so they
//! cost nothing extra and are always exact.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::lock;

type Create<T> = Box<dyn Fn() -> T + Send + Sync>;
type Reset<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// A bounded, thread-safe pool of reusable `T`s.
///
/// # Invariants
///
/// * `idle.len() <= max_idle` at all times.
/// * Every idle object has been through `reset` since it was last handed out.
/// * An object is in at most one place: the idle list or one [`Pooled`] guard.
/// * `hits + misses == gets`, `returns + discards == gets - out`, where `out` is the number of
///   live guards (detached guards count as neither).
///
/// # Example
///
/// ```
/// use perfalloc::pool::ObjectPool;
///
/// // A scratch buffer that is expensive to allocate, cleared between uses.
/// let pool = ObjectPool::new(|| Vec::<u64>::with_capacity(4096), |v| v.clear());
/// {
///     let mut v = pool.get();
///     v.extend([1, 2, 3]);
/// } // reset (cleared) and back in the pool
/// let v = pool.get();
/// assert!(v.is_empty() && v.capacity() >= 4096);
/// drop(v);
/// let s = pool.stats();
/// assert_eq!((s.misses, s.hits, s.idle), (1, 1, 1));
/// ```
pub struct ObjectPool<T> {
    create: Create<T>,
    reset: Reset<T>,
    max_idle: usize,
    state: Mutex<State<T>>,
}

struct State<T> {
    idle: Vec<T>,
    stats: ObjectPoolStats,
}

/// A snapshot of an [`ObjectPool`]'s statistics (see [`ObjectPool::stats`]). `idle` is a gauge;
/// the rest are counters that only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectPoolStats {
    /// `get`s served with an idle object.
    pub hits: u64,
    /// `get`s that called `create`.
    pub misses: u64,
    /// Objects kept when their guard was dropped.
    pub returns: u64,
    /// Objects dropped when their guard was dropped, because the pool was full.
    pub discards: u64,
    /// Idle objects held now.
    pub idle: usize,
}

/// Bound on idle objects for [`ObjectPool::new`].
const DEFAULT_MAX_IDLE: usize = 64;

impl<T> ObjectPool<T> {
    /// A pool that builds objects with `create` and cleans them with `reset` before they go back,
    /// keeping at most 64 idle ones (see [`with_max_idle`](Self::with_max_idle)).
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::new(String::new, String::clear);
    /// pool.get().push_str("x");
    /// assert_eq!(*pool.get(), "");
    /// ```
    pub fn new(
        create: impl Fn() -> T + Send + Sync + 'static,
        reset: impl Fn(&mut T) + Send + Sync + 'static,
    ) -> Self {
        Self::with_max_idle(DEFAULT_MAX_IDLE, create, reset)
    }

    /// Like [`new`](Self::new), keeping at most `max_idle` idle objects (0: never keep any).
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::with_max_idle(1, || 0u32, |n| *n = 0);
    /// let (a, b) = (pool.get(), pool.get());
    /// drop((a, b));
    /// assert_eq!(pool.stats().idle, 1);
    /// assert_eq!(pool.stats().discards, 1);
    /// ```
    pub fn with_max_idle(
        max_idle: usize,
        create: impl Fn() -> T + Send + Sync + 'static,
        reset: impl Fn(&mut T) + Send + Sync + 'static,
    ) -> Self {
        ObjectPool {
            create: Box::new(create),
            reset: Box::new(reset),
            max_idle,
            state: Mutex::new(State {
                idle: Vec::new(),
                stats: ObjectPoolStats::default(),
            }),
        }
    }

    /// The bound on idle objects.
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::with_max_idle(3, || (), |_| ());
    /// assert_eq!(pool.max_idle(), 3);
    /// ```
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// An idle object, or a new one from `create` (called outside the lock). It goes back to the
    /// pool, after `reset`, when the guard is dropped.
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::new(|| vec![0u8; 16], |_| ());
    /// assert_eq!(pool.get().len(), 16);
    /// ```
    pub fn get(&self) -> Pooled<'_, T> {
        let popped = {
            let mut state = lock(&self.state);
            let popped = state.idle.pop();
            if popped.is_some() {
                state.stats.hits += 1;
            } else {
                state.stats.misses += 1;
            }
            popped
        };
        let value = popped.unwrap_or_else(|| (self.create)());
        Pooled {
            value: Some(value),
            pool: self,
        }
    }

    /// Drops every idle object and returns how many there were.
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::new(|| 1, |_| ());
    /// drop(pool.get());
    /// assert_eq!(pool.clear(), 1);
    /// assert_eq!(pool.stats().idle, 0);
    /// ```
    pub fn clear(&self) -> usize {
        let idle = std::mem::take(&mut lock(&self.state).idle);
        idle.len() // dropped here, outside the lock
    }

    /// A snapshot of the pool's statistics (exact: they are kept under the pool's lock).
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::new(|| 0u8, |_| ());
    /// drop(pool.get());
    /// assert_eq!(pool.stats().returns, 1);
    /// ```
    pub fn stats(&self) -> ObjectPoolStats {
        let state = lock(&self.state);
        ObjectPoolStats {
            idle: state.idle.len(),
            ..state.stats.clone()
        }
    }

    fn put(&self, mut value: T) {
        // Reset outside the lock: it may be as expensive as the object. If it panics, `value`
        // is dropped during unwinding and never reaches the idle list.
        (self.reset)(&mut value);
        let mut state = lock(&self.state);
        if state.idle.len() < self.max_idle {
            state.idle.push(value);
            state.stats.returns += 1;
        } else {
            state.stats.discards += 1;
            drop(state);
            drop(value); // outside the lock
        }
    }
}

impl<T> std::fmt::Debug for ObjectPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectPool")
            .field("max_idle", &self.max_idle)
            .field("stats", &self.stats())
            .finish()
    }
}

/// An object from an [`ObjectPool`]: derefs to `T`; goes back to the pool, after `reset`, when
/// dropped.
///
/// ```
/// let pool = perfalloc::pool::ObjectPool::new(|| vec![1, 2], |v| v.truncate(0));
/// let mut v = pool.get();
/// v.push(3);
/// assert_eq!(*v, [1, 2, 3]);
/// ```
pub struct Pooled<'a, T> {
    /// `Some` until dropped or detached.
    value: Option<T>,
    pool: &'a ObjectPool<T>,
}

impl<T> Pooled<'_, T> {
    /// Takes the object out of the pool's care: it is neither reset nor returned.
    ///
    /// ```
    /// let pool = perfalloc::pool::ObjectPool::new(|| String::from("x"), String::clear);
    /// let s: String = pool.get().detach();
    /// assert_eq!(s, "x");
    /// assert_eq!(pool.stats().returns, 0);
    /// ```
    pub fn detach(mut self) -> T {
        self.value
            .take()
            .expect("a Pooled guard holds its value until dropped")
    }
}

impl<T> std::ops::Deref for Pooled<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("a Pooled guard holds its value until dropped")
    }
}

impl<T> std::ops::DerefMut for Pooled<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .expect("a Pooled guard holds its value until dropped")
    }
}

impl<T> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            self.pool.put(value);
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pooled").field(&self.value).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn panicking_reset_drops_the_object_and_keeps_the_pool_usable() {
        let created = Arc::new(AtomicUsize::new(0));
        let c = created.clone();
        let pool = ObjectPool::new(
            move || {
                c.fetch_add(1, Ordering::Relaxed);
                vec![0u8; 4]
            },
            |v: &mut Vec<u8>| {
                if v.len() == 5 {
                    panic!("reset refuses");
                }
                v.truncate(4);
            },
        );
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut v = pool.get();
            v.push(1); // len 5: reset will panic
        }));
        assert!(result.is_err());
        assert_eq!(
            pool.stats().idle,
            0,
            "the object whose reset panicked is not pooled"
        );
        drop(pool.get());
        assert_eq!(pool.stats().idle, 1);
        assert_eq!(created.load(Ordering::Relaxed), 2);
    }
}
