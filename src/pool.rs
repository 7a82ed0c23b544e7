//! Pools: [`BufferPool`] (byte buffers in power-of-two size classes, with a per-thread cache) and
//! [`ObjectPool`] (any expensive-to-build object, with a reset step).
//!
//! A pool is worth it when what it saves (an allocation, page faults on fresh memory, an
//! expensive constructor) costs more than its own bookkeeping. The README's Toolkit section gives
//! the measured crossover points; in short, against a fast allocator a byte-buffer pool pays off
//! for large buffers (256 KiB and up in our measurements) and loses for small ones (4-12x slower at
//! 64 B), and an object pool pays off when building the object allocates several times or
//! fills a lot of memory, and loses for objects one small allocation builds.
//!
//! Both pools hand out guards that borrow the pool (`PooledBuffer<'_>`, `Pooled<'_, T>`), which
//! keeps the fast path free of reference counting. Put a pool in a `static` (for example with
//! `once_cell::sync::Lazy`) when guards must be `'static`.

mod buffer;
mod object;

pub use buffer::{BufferPool, BufferPoolConfig, BufferPoolStats, ClassStats, PooledBuffer};
pub use object::{ObjectPool, ObjectPoolStats, Pooled};

/// Locks a mutex, ignoring poisoning: every critical section in this module leaves its data
/// consistent at every point a panic could occur (they only push, pop and add), so a panic
/// elsewhere while the lock was held cannot have broken anything.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
