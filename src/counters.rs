//! Per-thread allocation counters and the process-wide totals they feed.
//!
//! Each heap owns a `ThreadCounters`. Its owner updates it with relaxed loads and stores (never a
//! read-modify-write), and any thread may read it; readers sum heaps to get process figures. The
//! public API over these numbers is in `stats`.
//!
//! **Net bytes and peaks.** `net()` is bytes allocated minus bytes freed by the owning thread. An
//! fast path keeps two owner-only *rooms* instead of comparing `net` with marks: `alloc_room` is how
//! far `net` may rise before the next mark, `free_room` how far it may fall; an allocation takes
//! from one and gives to the other, and a room going negative sends the operation to the slow
//! path. That is a subtract, a sign test and two adds per operation. The
//! thread's own peak is exact: `alloc_room` never exceeds `peak - net`, and the cold
//! path moves `peak`. The process-wide live total `LIVE` is the sum of what threads have
//! *published*: a thread publishes when its `net` has moved by more than `PUBLISH_THRESHOLD` since
//! its last publication (the same rooms), so the fast path touches no
//! shared cache line. Hence at any moment `|LIVE - true live| <= threads * PUBLISH_THRESHOLD`, and
//! the process peak `PEAK` (the maximum `LIVE` ever took) is within the same bound of the true peak;
//! the memory limit is checked against `LIVE` at publication, with the same slack.

use crate::size_class::CLASSES;
use core::cell::Cell;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use crossbeam_utils::CachePadded;

/// A thread publishes its net change to `LIVE` once it exceeds this many bytes either way.
pub const PUBLISH_THRESHOLD: i64 = 128 * 1024;

/// A counter written by one thread only (load + store, no RMW) and read by any.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
    #[inline(always)]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed)
    }
}

/// Counters of one heap. All byte figures are requested sizes (what the program asked for).
///
/// Invariants (owner's view): `net() <= peak`; `alloc_room == min(peak, published +
/// PUBLISH_THRESHOLD) - net()`; `free_room == net() - (published - PUBLISH_THRESHOLD)`; both rooms
/// are `>= 0` between calls.
pub struct ThreadCounters {
    /// Bytes allocated by this thread (reallocations count their new size).
    pub allocated: Counter,
    /// Bytes freed by this thread (reallocations count their old size).
    pub freed: Counter,
    /// High-water mark of `net` since the heap was adopted or `reset_thread_peak`.
    pub peak: AtomicI64,
    pub reallocs: Counter,
    /// Blocks allocated (resp. freed) inside `realloc`; counted in the class or large figures but not
    /// in `allocations` (resp. `deallocations`).
    pub realloc_allocs: Counter,
    pub realloc_frees: Counter,
    pub large_allocs: Counter,
    pub large_frees: Counter,
    /// Mapped bytes of live large blocks (after rounding) allocated minus freed by this thread.
    pub large_active: AtomicI64,
    /// Requested bytes of live large blocks allocated minus freed by this thread.
    pub large_live: AtomicI64,
    /// `hi_mark - net()`: bytes this thread may allocate before its slow path must run, where
    /// `hi_mark = min(peak, published + PUBLISH_THRESHOLD)`. Owner-only.
    alloc_room: Cell<i64>,
    /// `net() - lo_mark`, with `lo_mark = published - PUBLISH_THRESHOLD`. Owner-only.
    free_room: Cell<i64>,
    published: Cell<i64>,
}

/// Process-wide published live bytes (see the module docs for its error bound).
pub static LIVE: CachePadded<AtomicI64> = CachePadded::new(AtomicI64::new(0));
/// Maximum of `LIVE` since start or `reset_peak`.
pub static PEAK: CachePadded<AtomicI64> = CachePadded::new(AtomicI64::new(0));
/// Live-byte limit (`u64::MAX` for none).
pub static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Totals folded in from heaps whose threads exited.
pub struct Exited {
    pub net: AtomicI64,
    pub freed: AtomicU64,
    pub reallocs: AtomicU64,
    pub realloc_allocs: AtomicU64,
    pub realloc_frees: AtomicU64,
    pub large_allocs: AtomicU64,
    pub large_frees: AtomicU64,
    pub large_active: AtomicI64,
    pub large_live: AtomicI64,
    pub class_allocs: [AtomicU64; CLASSES],
    pub class_frees: [AtomicU64; CLASSES],
}

pub static EXITED: Exited = Exited {
    net: AtomicI64::new(0),
    freed: AtomicU64::new(0),
    reallocs: AtomicU64::new(0),
    realloc_allocs: AtomicU64::new(0),
    realloc_frees: AtomicU64::new(0),
    large_allocs: AtomicU64::new(0),
    large_frees: AtomicU64::new(0),
    large_active: AtomicI64::new(0),
    large_live: AtomicI64::new(0),
    class_allocs: [const { AtomicU64::new(0) }; CLASSES],
    class_frees: [const { AtomicU64::new(0) }; CLASSES],
};

impl ThreadCounters {
    pub const fn new() -> Self {
        ThreadCounters {
            allocated: Counter::new(),
            freed: Counter::new(),
            peak: AtomicI64::new(0),
            reallocs: Counter::new(),
            realloc_allocs: Counter::new(),
            realloc_frees: Counter::new(),
            large_allocs: Counter::new(),
            large_frees: Counter::new(),
            large_active: AtomicI64::new(0),
            large_live: AtomicI64::new(0),
            alloc_room: Cell::new(0),
            free_room: Cell::new(PUBLISH_THRESHOLD),
            published: Cell::new(0),
        }
    }

    /// Bytes allocated minus bytes freed by this thread.
    #[inline(always)]
    pub fn net(&self) -> i64 {
        self.allocated.get().wrapping_sub(self.freed.get()) as i64
    }

    /// Fast path of an allocation of `size` bytes: true if it was accounted without crossing a
    /// mark; false if the caller must go to its slow path (nothing was changed).
    #[inline(always)]
    pub fn try_alloc_fast(&self, size: usize) -> bool {
        if cfg!(feature = "stats") {
            let room = self.alloc_room.get() - size as i64;
            if room < 0 {
                return false;
            }
            self.alloc_room.set(room);
            self.free_room.set(self.free_room.get() + size as i64);
            self.allocated.add(size as u64);
        }
        true
    }

    /// An allocation that crosses `alloc_room`. If that only sets a new thread peak (nothing to
    /// publish), account it here: a thread whose memory keeps growing (a producer) sets a new
    /// peak with almost every allocation, and the full slow path for each would cost it dearly.
    /// False (nothing changed) if the caller must take the slow path to publish. Called at the
    /// top of the allocation slow path (a call from the fast path itself would make it save
    /// registers on every allocation).
    #[inline]
    pub fn new_peak(&self, size: usize) -> bool {
        if !cfg!(feature = "stats") {
            return false;
        }
        let net = self.net() + size as i64;
        if net - self.published.get() > PUBLISH_THRESHOLD {
            return false;
        }
        // Below the publication mark, so the crossed mark was the peak: `net` is the new peak.
        self.peak.store(net, Relaxed);
        self.alloc_room.set(0);
        self.free_room.set(self.free_room.get() + size as i64);
        self.allocated.add(size as u64);
        true
    }

    /// Fast path of a free of `size` bytes, as `try_alloc_fast`.
    #[inline(always)]
    pub fn try_free_fast(&self, size: usize) -> bool {
        if cfg!(feature = "stats") {
            let room = self.free_room.get() - size as i64;
            if room < 0 {
                return false;
            }
            self.free_room.set(room);
            self.alloc_room.set(self.alloc_room.get() + size as i64);
            self.freed.add(size as u64);
        }
        true
    }

    /// Whether the memory limit admits `bytes` more now. Checked before the memory is obtained,
    /// so that a refused or failed request changes no figure. Only a request that would make the
    /// thread publish is checked (see the module docs for the slack this gives).
    pub fn admits(&self, bytes: usize) -> bool {
        let limit = LIMIT.load(Relaxed);
        if !cfg!(feature = "stats") || limit == u64::MAX {
            return true;
        }
        let unpublished = (self.net() - self.published.get()).saturating_add(bytes as i64);
        unpublished <= PUBLISH_THRESHOLD
            || LIVE.load(Relaxed).saturating_add(unpublished) <= limit as i64
    }

    /// Accounts an allocation of `size` bytes that was obtained (after `admits`), publishing if
    /// needed.
    #[cold]
    #[inline(never)]
    pub fn alloc_slow(&self, size: usize) {
        self.change(size as u64, 0);
    }

    /// Accounts a free of `size` bytes, publishing if needed.
    #[cold]
    #[inline(never)]
    pub fn free_slow(&self, size: usize) {
        self.change(0, size as u64);
    }

    /// Accounts a `realloc` from `old` to `new` bytes that succeeded.
    pub fn realloc(&self, old: usize, new: usize) {
        self.change(new as u64, old as u64);
        if cfg!(feature = "stats") {
            self.reallocs.add(1);
        }
    }

    fn change(&self, allocated: u64, freed: u64) {
        if !cfg!(feature = "stats") {
            return;
        }
        let net = self.net() + allocated as i64 - freed as i64;
        let unpublished = net - self.published.get();
        if !(-PUBLISH_THRESHOLD..=PUBLISH_THRESHOLD).contains(&unpublished) {
            let live = LIVE.fetch_add(unpublished, Relaxed) + unpublished;
            PEAK.fetch_max(live, Relaxed);
            self.published.set(net);
        }
        self.allocated.add(allocated);
        self.freed.add(freed);
        if net > self.peak.load(Relaxed) {
            self.peak.store(net, Relaxed);
        }
        self.refresh_marks();
    }

    fn refresh_marks(&self) {
        let published = self.published.get();
        let net = self.net();
        let hi_mark = self.peak.load(Relaxed).min(published + PUBLISH_THRESHOLD);
        self.alloc_room.set(hi_mark - net);
        self.free_room.set(net - (published - PUBLISH_THRESHOLD));
    }

    /// Sets the thread peak to the current net bytes; returns the old peak.
    pub fn reset_peak(&self) -> i64 {
        let old = self.peak.swap(self.net(), Relaxed);
        self.refresh_marks();
        old
    }

    /// Raises the thread peak to at least `peak` (used by `measure` to restore the outer peak).
    pub fn raise_peak(&self, peak: i64) {
        if peak > self.peak.load(Relaxed) {
            self.peak.store(peak, Relaxed);
        }
        self.refresh_marks();
    }

    /// Moves everything into `EXITED` and the published total, leaving the counters (and the
    /// per-class counters given) at zero. Called by the owner as its thread exits, under the
    /// registry lock, so that `stats()` never sees a thread both in its heap and in `EXITED`.
    pub fn fold_into_exited<'a>(&self, classes: impl Iterator<Item = (&'a Counter, &'a Counter)>) {
        let net = self.net();
        LIVE.fetch_add(net - self.published.get(), Relaxed);
        EXITED.net.fetch_add(net, Relaxed);
        EXITED.freed.fetch_add(self.freed.get(), Relaxed);
        EXITED.reallocs.fetch_add(self.reallocs.get(), Relaxed);
        EXITED
            .realloc_allocs
            .fetch_add(self.realloc_allocs.get(), Relaxed);
        EXITED
            .realloc_frees
            .fetch_add(self.realloc_frees.get(), Relaxed);
        EXITED
            .large_allocs
            .fetch_add(self.large_allocs.get(), Relaxed);
        EXITED
            .large_frees
            .fetch_add(self.large_frees.get(), Relaxed);
        EXITED
            .large_active
            .fetch_add(self.large_active.load(Relaxed), Relaxed);
        EXITED
            .large_live
            .fetch_add(self.large_live.load(Relaxed), Relaxed);
        for (c, (a, f)) in classes.enumerate() {
            EXITED.class_allocs[c].fetch_add(a.get(), Relaxed);
            EXITED.class_frees[c].fetch_add(f.get(), Relaxed);
            a.set(0);
            f.set(0);
        }
        for c in [
            &self.allocated,
            &self.freed,
            &self.reallocs,
            &self.realloc_allocs,
        ] {
            c.set(0);
        }
        for c in [&self.realloc_frees, &self.large_allocs, &self.large_frees] {
            c.set(0);
        }
        self.peak.store(0, Relaxed);
        self.large_active.store(0, Relaxed);
        self.large_live.store(0, Relaxed);
        self.published.set(0);
        self.refresh_marks();
    }

    /// Adds `v` to one of the owner-written signed gauges.
    #[inline]
    pub fn bump(gauge: &AtomicI64, v: i64) {
        gauge.store(gauge.load(Relaxed) + v, Relaxed);
    }
}

impl Default for ThreadCounters {
    fn default() -> Self {
        Self::new()
    }
}
