//! Memory statistics, always on and cheap, queried at runtime by the program itself. Their cost is
//! 12 instructions per allocation and free together, with owner-only stores: up to 28% of the time
//! of a loop that does nothing but allocate and free, 0-6% on realistic workloads (measured figures
//! in the README); build without the default `stats` feature to drop them.
//!
//! Each thread counts its own allocations in its heap with plain (relaxed load + store) writes; a
//! reader sums the heaps, so `stats()` costs O(threads × size classes) and stops nobody. Counts and
//! byte totals are exact once the threads involved are quiet; while they run, a snapshot mixes
//! moments a few instructions apart ("consistent enough"). `allocations` and `deallocations` never
//! go backwards from one snapshot to the next, and never count a realloc, even one that is moving
//! its block at that moment. In a child process after `fork`, a move that another thread of the
//! parent had under way stays half counted: the child's two counts may stay short by one each.
//!
//! Peaks exist at three levels, each resettable:
//! - **process** ([`Stats::peak_live_bytes`], [`reset_peak`]): threads publish their net change to a
//!   shared total once it moves by more than [`PUBLISH_THRESHOLD`] bytes, and the peak is taken
//!   there, so it is within `(threads + 1) × PUBLISH_THRESHOLD` of the true high-water mark (the
//!   one more is the heap that serves threads being torn down); a thread that exits publishes
//!   what it leaves live;
//! - **thread** ([`ThreadStats::peak_bytes`], [`reset_thread_peak`]): exact;
//! - **scope** ([`measure`]): exact, for the calling thread.
//!
//! The memory limit ([`set_limit`]) is checked when a thread publishes, so it may be overshot by
//! the same `(threads + 1) × PUBLISH_THRESHOLD`; any single allocation larger than the threshold
//! is always checked, and requests checked at the same moment on several threads count each other
//! (each reserves its bytes before it checks, until it is published). A `realloc` that shrinks its
//! block is never refused: it ends with fewer live bytes than it began with.
//!
//! Build without the default `stats` feature to remove the counters from the fast path; every
//! figure except `mapped_bytes`, `resident_bytes` and `threads` then reads zero, and
//! [`set_limit`] has no effect (the limit is checked where counters publish). The examples below
//! return early in such a build.

use crate::counters::{self, Totals, LIMIT, LIVE, PEAK};
use crate::heap::{self, Heap};
use crate::os;
use crate::size_class::{self, CLASSES};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Relaxed};
use serde::{Deserialize, Serialize};

/// Bytes a thread's net change may reach before it is published to the process totals: the unit
/// of the error bound on the process peak and on the memory limit.
pub const PUBLISH_THRESHOLD: u64 = counters::PUBLISH_THRESHOLD as u64;

/// A snapshot of the whole process's memory, from [`stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes the program holds now: requested sizes of blocks not yet freed.
    pub live_bytes: u64,
    /// High-water mark of `live_bytes` since start or [`reset_peak`] (see the module docs for its
    /// error bound).
    pub peak_live_bytes: u64,
    /// `alloc` and `alloc_zeroed` calls.
    pub allocations: u64,
    /// `dealloc` calls.
    pub deallocations: u64,
    /// `realloc` calls.
    pub reallocations: u64,
    /// Bytes in blocks handed out, after rounding to size classes and pages.
    pub active_bytes: u64,
    /// Bytes currently mapped from the OS by the allocator.
    pub mapped_bytes: u64,
    /// Resident set of the whole process, from `/proc/self/statm` (0 where the OS cannot tell).
    pub resident_bytes: u64,
    /// Heaps in use by live threads.
    pub threads: u64,
    /// Size classes that have served at least one allocation, smallest first.
    pub size_classes: Vec<ClassStats>,
    /// Blocks kept outside the size classes' pages: requests above the largest class or aligned
    /// beyond what a class can honour, and blocks that `realloc` grew to 64 KiB or more (they
    /// move to the arena of large blocks so that they can keep growing in place).
    pub large: LargeStats,
}

/// One size class in [`Stats::size_classes`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStats {
    /// The block size of the class.
    pub block_size: u64,
    /// Blocks of the class in use now.
    pub live_blocks: u64,
    /// Blocks of the class handed out so far.
    pub allocations: u64,
}

/// Live large blocks in [`Stats::large`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeStats {
    /// Large blocks in use now.
    pub live_blocks: u64,
    /// Requested bytes of those blocks.
    pub live_bytes: u64,
    /// Large blocks handed out so far.
    pub allocations: u64,
}

/// The calling thread's own figures, from [`thread_stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStats {
    /// Bytes this thread allocated (reallocations count their new size).
    pub allocated_bytes: u64,
    /// Bytes this thread freed (reallocations count their old size), whoever allocated them.
    pub freed_bytes: u64,
    /// `alloc`/`alloc_zeroed` calls on this thread.
    pub allocations: u64,
    /// `dealloc` calls on this thread.
    pub deallocations: u64,
    /// `realloc` calls on this thread.
    pub reallocations: u64,
    /// `allocated_bytes - freed_bytes`: negative when the thread frees more than it allocates
    /// (a consumer of other threads' blocks).
    pub net_bytes: i64,
    /// High-water mark of `net_bytes` since the thread started or [`reset_thread_peak`] (0 if it
    /// never rose above zero).
    pub peak_bytes: u64,
}

/// What the calling thread did inside a closure passed to [`measure`]. Exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// Bytes allocated inside the closure.
    pub allocated_bytes: u64,
    /// Bytes freed inside the closure.
    pub freed_bytes: u64,
    /// Allocations inside the closure.
    pub allocations: u64,
    /// Deallocations inside the closure.
    pub deallocations: u64,
    /// Reallocations inside the closure.
    pub reallocations: u64,
    /// High-water mark of the net bytes allocated inside the closure (0 if it never rose).
    pub peak_bytes: u64,
}

impl Measurement {
    /// Net bytes the closure left allocated (negative if it freed more than it allocated).
    pub fn net_bytes(&self) -> i64 {
        self.allocated_bytes as i64 - self.freed_bytes as i64
    }
}

fn clamp(v: i64) -> u64 {
    v.max(0) as u64
}

/// A snapshot of the process's memory. Cheap: O(threads × size classes), no stop-the-world.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
///
/// # if !cfg!(feature = "stats") { return; } // the figures below need the default feature
/// let before = perfalloc::stats();
/// let v = vec![0u8; 1 << 20];
/// let after = perfalloc::stats();
/// // Other test threads may allocate too, but our megabyte is certainly live.
/// assert!(after.peak_live_bytes >= 1 << 20);
/// assert!(after.allocations > before.allocations);
/// drop(v);
/// println!("{after}");
/// ```
pub fn stats() -> Stats {
    let mut t = Totals::ZERO;
    let threads = heap::sum_heaps(&mut t) as u64;
    // Summed while other threads run, these two fall short by the reallocs moving a block at that
    // moment and never overshoot (`Totals::add`): the most ever reported is a true lower bound, and
    // reporting it keeps them monotonic, and exact once the threads are quiet.
    let allocations = ALLOCATIONS_SEEN
        .fetch_max(t.allocations(), Relaxed)
        .max(t.allocations());
    let deallocations = DEALLOCATIONS_SEEN
        .fetch_max(t.deallocations(), Relaxed)
        .max(t.deallocations());
    let live = clamp(t.net);
    let mut size_classes = Vec::new();
    let mut active = clamp(t.large_active);
    for c in 0..CLASSES {
        let live_blocks = t.class_allocs[c].saturating_sub(t.class_frees[c]);
        let block_size = size_class::block_size(c) as u64;
        active += live_blocks * block_size;
        if t.class_allocs[c] > 0 {
            size_classes.push(ClassStats {
                block_size,
                live_blocks,
                allocations: t.class_allocs[c],
            });
        }
    }
    Stats {
        live_bytes: live,
        peak_live_bytes: clamp(PEAK.load(Relaxed)).max(live),
        allocations,
        deallocations,
        reallocations: t.reallocs,
        active_bytes: active,
        mapped_bytes: os::mapped_bytes() as u64,
        resident_bytes: os::resident_bytes().unwrap_or(0),
        threads,
        size_classes,
        large: LargeStats {
            live_blocks: t.large_allocs.saturating_sub(t.large_frees),
            live_bytes: clamp(t.large_live),
            allocations: t.large_allocs,
        },
    }
}

/// The largest `Stats::allocations` and `deallocations` reported so far (see `stats`).
static ALLOCATIONS_SEEN: AtomicU64 = AtomicU64::new(0);
static DEALLOCATIONS_SEEN: AtomicU64 = AtomicU64::new(0);

/// Resets the process peak to the current (published) live bytes. What other threads publish
/// while it runs and still hold when it returns stays in the peak.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
/// drop(vec![0u8; 64 << 20]);
/// perfalloc::reset_peak();
/// // The 64 MiB block is gone; only what is live now (plus the documented slack) remains.
/// assert!(perfalloc::stats().peak_live_bytes < 64 << 20);
/// ```
pub fn reset_peak() {
    // A thread that published between the load and the swap had its `fetch_max` (a release)
    // overwritten; the swap acquires it, so the second load sees what that thread added to `LIVE`
    // and, if it still holds it, the peak keeps it. (What it published and took back within the
    // call is forgotten, as if the reset came after.)
    PEAK.swap(LIVE.load(Relaxed), AcqRel);
    PEAK.fetch_max(LIVE.load(Relaxed), Relaxed);
}

fn thread_totals(h: &Heap) -> Totals {
    let mut t = Totals::ZERO;
    h.add_to(&mut t);
    t
}

/// The calling thread's figures.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
/// # if !cfg!(feature = "stats") { return; } // the figures below need the default feature
/// let before = perfalloc::thread_stats();
/// let b = Box::new([0u8; 100]);
/// let after = perfalloc::thread_stats();
/// assert_eq!(after.allocations - before.allocations, 1);
/// assert_eq!(after.allocated_bytes - before.allocated_bytes, 100);
/// drop(b);
/// ```
pub fn thread_stats() -> ThreadStats {
    let Some(h) = heap::current_live() else {
        return ThreadStats::default();
    };
    let t = thread_totals(h);
    ThreadStats {
        allocated_bytes: t.allocated,
        freed_bytes: t.freed(),
        allocations: t.allocations(),
        deallocations: t.deallocations(),
        reallocations: t.reallocs,
        net_bytes: t.net,
        peak_bytes: clamp(h.counters.thread_peak()),
    }
}

/// Resets the calling thread's peak to its current net bytes.
pub fn reset_thread_peak() {
    if let Some(h) = heap::current_live() {
        h.counters.reset_peak();
    }
}

/// Runs `f` and returns what the calling thread allocated and freed inside it, exactly.
///
/// Allocations made by other threads are not counted, even if `f` waits for them.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
/// # if !cfg!(feature = "stats") { return; } // the figures below need the default feature
/// let (sum, m) = perfalloc::measure(|| {
///     let v: Vec<u64> = (0..1000).collect(); // one allocation of 8000 bytes
///     v.iter().sum::<u64>()
/// });
/// assert_eq!(sum, 499_500);
/// assert_eq!(m.allocations, 1);
/// assert_eq!(m.deallocations, 1);
/// assert_eq!(m.peak_bytes, 8000);
/// assert_eq!(m.net_bytes(), 0);
/// ```
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Measurement) {
    let Some(h) = heap::current_live() else {
        return (f(), Measurement::default());
    };
    let before = thread_totals(h);
    let outer_peak = h.counters.reset_peak();
    let r = f();
    let after = thread_totals(h);
    let scope_peak = h.counters.thread_peak() - before.net;
    h.counters.raise_peak(outer_peak);
    let allocated = after.allocated.wrapping_sub(before.allocated);
    let m = Measurement {
        allocated_bytes: allocated,
        freed_bytes: after.freed().wrapping_sub(before.freed()),
        allocations: after.allocations() - before.allocations(),
        deallocations: after.deallocations() - before.deallocations(),
        reallocations: after.reallocs - before.reallocs,
        peak_bytes: clamp(scope_peak),
    };
    (r, m)
}

/// Sets (or with `None` removes) a limit on live bytes: an allocation that would take the
/// process past it returns null, so `Vec::try_reserve` fails cleanly and infallible collections
/// call `handle_alloc_error`. A `realloc` that shrinks its block is never refused. See the module
/// docs for the slack. Without the default `stats` feature the limit is stored but not enforced.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
/// # if !cfg!(feature = "stats") { return; } // the figures below need the default feature
/// let live = perfalloc::stats().live_bytes;
/// perfalloc::set_limit(Some(live + (256 << 20)));
/// let mut v: Vec<u8> = Vec::new();
/// assert!(v.try_reserve(1 << 30).is_err());
/// assert!(v.try_reserve(1 << 20).is_ok());
/// perfalloc::set_limit(None);
/// ```
pub fn set_limit(limit: Option<u64>) {
    // No limit is `u64::MAX`, which `admits` tests before anything else; a limit no count of live
    // bytes (an `i64`) can reach is none.
    let stored = match limit {
        Some(l) if l < i64::MAX as u64 => l,
        _ => u64::MAX,
    };
    LIMIT.store(stored, Relaxed);
}

/// The current limit, if any.
pub fn limit() -> Option<u64> {
    match LIMIT.load(Relaxed) {
        l if l >= i64::MAX as u64 => None,
        l => Some(l),
    }
}

/// Returns the calling thread's cached free memory to its pages and the OS now, and the free
/// memory of the arena all threads' large blocks share, instead of after the usual delay (like
/// `malloc_trim`). A thread's exit does the first part for it, not the second.
pub fn trim() {
    heap::trim_current();
}

struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 < 1024 {
            write!(f, "{} B", self.0)
        } else if b < 1024.0 * 1024.0 {
            write!(f, "{:.1} KiB", b / 1024.0)
        } else if b < 1024.0 * 1024.0 * 1024.0 {
            write!(f, "{:.1} MiB", b / (1024.0 * 1024.0))
        } else {
            write!(f, "{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "live {} (peak {}), active {}, mapped {}, resident {}",
            Bytes(self.live_bytes),
            Bytes(self.peak_live_bytes),
            Bytes(self.active_bytes),
            Bytes(self.mapped_bytes),
            Bytes(self.resident_bytes)
        )?;
        writeln!(
            f,
            "allocations {}, deallocations {}, reallocations {}, threads {}",
            self.allocations, self.deallocations, self.reallocations, self.threads
        )?;
        writeln!(
            f,
            "large: {} live blocks, {} live ({} allocated so far)",
            self.large.live_blocks,
            Bytes(self.large.live_bytes),
            self.large.allocations
        )?;
        writeln!(
            f,
            "{:>10} {:>12} {:>12} {:>14}",
            "block", "live blocks", "live bytes", "allocations"
        )?;
        for c in self.size_classes.iter().filter(|c| c.live_blocks > 0) {
            writeln!(
                f,
                "{:>10} {:>12} {:>12} {:>14}",
                Bytes(c.block_size).to_string(),
                c.live_blocks,
                Bytes(c.live_blocks * c.block_size).to_string(),
                c.allocations
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocated {} in {} allocations, freed {} in {} deallocations, {} reallocations, peak {}",
            Bytes(self.allocated_bytes),
            self.allocations,
            Bytes(self.freed_bytes),
            self.deallocations,
            self.reallocations,
            Bytes(self.peak_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No limit, however it is asked for, is the value `admits` tests before anything else, so
    /// that removing a limit restores the unchecked path (these calls set no real limit, which
    /// would disturb the tests running beside this one).
    #[test]
    fn no_limit_is_stored_as_the_unchecked_value() {
        for none in [None, Some(u64::MAX), Some(i64::MAX as u64)] {
            set_limit(none);
            assert_eq!(LIMIT.load(Relaxed), u64::MAX, "set_limit({none:?})");
            assert_eq!(limit(), None);
        }
    }
}
