//! Per-thread allocation counters and the process-wide totals they feed.
//!
//! Each heap owns a `ThreadCounters`. Its owner updates it with relaxed loads and stores (never a
//! read-modify-write), and any thread may read it; readers sum heaps to get process figures. The
//! public API over these numbers is in `stats`.
//!
//! **Net bytes and peaks.** `net()` is bytes allocated minus bytes freed by the owning thread. It
//! is kept as `lo + room`: `lo` is a mark set by the slow path, and `room` is the one word the fast
//! paths write. An allocation adds its size to `room` and takes the slow path if that would pass
//! `span` (the upper mark, `hi`, minus `lo`); a free subtracts its size and takes the slow path if
//! `room` would go negative (below `lo`). Bytes freed are not counted separately: they are
//! `allocated - net()`. So an allocation costs a load, an add, a compare with `span`, a store and
//! the add to `allocated`; a free, a load, a subtract, a sign test and a store.
//!
//! The thread's own peak is exact: `hi` never exceeds `peak` (outside a climb, below), and the
//! cold path moves `peak`. A thread that sets two new peaks with no free between is *climbing*:
//! its allocations then check only the publishing mark, `room` is pushed far below zero so that
//! its next free takes the slow path and records the peak (the net just before it, since the
//! climb only rose), and `thread_peak()` reads `max(peak, net)` meanwhile. The process-wide live
//! total `LIVE` is the sum of what threads have *published*: a thread publishes when its `net` has
//! moved by more than `PUBLISH_THRESHOLD` since its last publication (the same marks), so the fast
//! path touches no shared cache line; an exiting thread publishes what it has left (`fold_into`).
//! Hence at any moment `|LIVE - true live| <= (threads + 1) * PUBLISH_THRESHOLD` (the one more is
//! the fallback heap, which serves threads being torn down), and the process peak `PEAK` (the
//! maximum `LIVE` ever took) is within the same bound of the true peak; the memory limit is checked against `LIVE` (`admits`) only for a
//! request that would publish, with the same slack.
//!
//! **Readers.** The slow path rewrites `allocated`, `lo` and `room` together inside a sequence lock
//! (`epoch`), so another thread never pairs an old `lo` with a new `room`. The fast paths write
//! single words without it: a reader racing one sees that operation either counted in `net` or
//! not, as with any counter read while it moves.

use crate::size_class::CLASSES;
use crate::sync::Backoff;
use core::cell::Cell;
use core::sync::atomic::{
    fence, AtomicI64, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
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
/// Invariants (owner's view): `net() == lo + room`, and `freed() == allocated - net()`. When not
/// `climbing`, after each slow path `lo == published - PUBLISH_THRESHOLD` and `lo + span ==
/// min(peak, published + PUBLISH_THRESHOLD)`, so `0 <= room <= span` means `net()` lies between
/// the marks and `net() <= peak`; the fast paths keep it there or leave for the slow path, which
/// accounts the operation and recomputes the marks. While `climbing`: `net()` may pass `peak` (the
/// true peak is `max(peak, net())`, as `net` only rose since the climb began); `lo + span ==
/// published + PUBLISH_THRESHOLD` and `room < 0`, so every free takes the slow path, which ends
/// the climb. `epoch` is odd exactly while the owner rewrites `allocated`, `lo` and `room` in a slow
/// path.
pub struct ThreadCounters {
    /// Bytes allocated by this thread (reallocations count their new size).
    pub allocated: Counter,
    /// `net() - lo`. Written by the owner (load + store), read by any thread.
    room: AtomicI64,
    /// The lower mark (see `room`). Changed only in a slow path, inside the sequence lock.
    lo: AtomicI64,
    /// How far `room` may rise before an allocation must take the slow path. Owner-only.
    span: Cell<i64>,
    /// Sequence lock over `allocated`, `lo` and `room` (see the struct docs).
    epoch: AtomicU64,
    /// High-water mark of `net` since the heap was adopted or `reset_thread_peak`, except while
    /// `climbing`: then the mark is `max(peak, net())` (see `thread_peak`). Owner-only.
    peak: AtomicI64,
    pub reallocs: Counter,
    /// Reallocations that moved the block: each allocated one block and freed another, counted in
    /// the class or large figures but not in `allocations` or `deallocations`. Counted when the
    /// move begins, before those (`heap::begin_move`), and taken back if its allocation fails.
    pub realloc_moves: Counter,
    pub large_allocs: Counter,
    pub large_frees: Counter,
    /// Mapped bytes of live large blocks (after rounding) allocated minus freed by this thread.
    pub large_active: AtomicI64,
    /// Requested bytes of live large blocks allocated minus freed by this thread.
    pub large_live: AtomicI64,
    published: Cell<i64>,
    /// The thread has been allocating without freeing since its last new peak: allocations no
    /// longer check the peak (each would be one) and the first free, which ends the climb, goes
    /// to the slow path to record it. A producer thread thus takes one slow path per
    /// `PUBLISH_THRESHOLD` bytes instead of one per allocation.
    climbing: Cell<bool>,
    /// `freed()` when the last new peak was set: unchanged at the next one means no free between.
    freed_at_peak: Cell<u64>,
    /// Bytes this thread holds in `ADMITTED`: those of its last request that the limit admitted,
    /// until it is published (or the request fails). Owner-only.
    admitted: Cell<i64>,
    /// Set while the owner retries the allocation of a `realloc` that shrinks its block by moving
    /// it: the limit admits it, as the move ends with fewer live bytes than it began with.
    /// Owner-only.
    limit_exempt: Cell<bool>,
}

/// Process-wide published live bytes (see the module docs for its error bound).
pub static LIVE: CachePadded<AtomicI64> = CachePadded::new(AtomicI64::new(0));
/// Maximum of `LIVE` since start or `reset_peak`.
pub static PEAK: CachePadded<AtomicI64> = CachePadded::new(AtomicI64::new(0));
/// Live-byte limit (`u64::MAX` for none).
pub static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
/// Bytes of requests the limit admitted that are not yet in `LIVE`: each is added here before it
/// is checked, so requests checked at the same moment on several threads count each other.
static ADMITTED: CachePadded<AtomicI64> = CachePadded::new(AtomicI64::new(0));

/// Sums of per-thread counters, as plain integers: what `stats()` adds up, and what the registry
/// keeps (under its lock) for threads that exited.
#[derive(Clone, Copy)]
pub struct Totals {
    pub net: i64,
    /// Bytes allocated (freed bytes are `allocated - net`).
    pub allocated: u64,
    pub reallocs: u64,
    pub realloc_moves: u64,
    pub large_allocs: u64,
    pub large_frees: u64,
    pub large_active: i64,
    pub large_live: i64,
    pub class_allocs: [u64; CLASSES],
    pub class_frees: [u64; CLASSES],
}

impl Totals {
    pub const ZERO: Totals = Totals {
        net: 0,
        allocated: 0,
        reallocs: 0,
        realloc_moves: 0,
        large_allocs: 0,
        large_frees: 0,
        large_active: 0,
        large_live: 0,
        class_allocs: [0; CLASSES],
        class_frees: [0; CLASSES],
    };

    /// Adds one heap's counters and its per-class `(allocs, frees)` counters.
    pub fn add<'a>(
        &mut self,
        c: &ThreadCounters,
        classes: impl Iterator<Item = (&'a Counter, &'a Counter)>,
    ) {
        let (allocated, net) = c.read();
        self.net += net;
        self.allocated = self.allocated.wrapping_add(allocated);
        self.reallocs += c.reallocs.get();
        self.large_allocs += c.large_allocs.get();
        self.large_frees += c.large_frees.get();
        self.large_active += c.large_active.load(Relaxed);
        self.large_live += c.large_live.load(Relaxed);
        for (i, (a, f)) in classes.enumerate() {
            self.class_allocs[i] += a.get();
            self.class_frees[i] += f.get();
        }
        // After the counts a move touches, which it makes after this one behind a release fence
        // (`heap::begin_move`): every move whose allocation or free was read above is read here,
        // so `allocations()` and `deallocations()` never count one.
        fence(Acquire);
        self.realloc_moves += c.realloc_moves.get();
    }

    /// Adds another set of totals.
    pub fn add_totals(&mut self, o: &Totals) {
        self.net += o.net;
        self.allocated = self.allocated.wrapping_add(o.allocated);
        self.reallocs += o.reallocs;
        self.realloc_moves += o.realloc_moves;
        self.large_allocs += o.large_allocs;
        self.large_frees += o.large_frees;
        self.large_active += o.large_active;
        self.large_live += o.large_live;
        for i in 0..CLASSES {
            self.class_allocs[i] += o.class_allocs[i];
            self.class_frees[i] += o.class_frees[i];
        }
    }

    /// Bytes freed: what was allocated and is no longer held.
    pub fn freed(&self) -> u64 {
        self.allocated.wrapping_sub(self.net as u64)
    }

    /// `alloc` and `alloc_zeroed` calls: blocks handed out, less those handed out inside `realloc`.
    /// Summed while other threads run, short by the moves under way on them (see `Totals::add`).
    pub fn allocations(&self) -> u64 {
        let small: u64 = self.class_allocs.iter().sum();
        (small + self.large_allocs).saturating_sub(self.realloc_moves)
    }

    /// `dealloc` calls, likewise.
    pub fn deallocations(&self) -> u64 {
        let small: u64 = self.class_frees.iter().sum();
        (small + self.large_frees).saturating_sub(self.realloc_moves)
    }
}

impl ThreadCounters {
    pub const fn new() -> Self {
        ThreadCounters {
            allocated: Counter::new(),
            // The marks of a fresh heap: net 0, published 0, peak 0 (`settle` with all zero).
            room: AtomicI64::new(PUBLISH_THRESHOLD),
            lo: AtomicI64::new(-PUBLISH_THRESHOLD),
            span: Cell::new(PUBLISH_THRESHOLD),
            epoch: AtomicU64::new(0),
            peak: AtomicI64::new(0),
            reallocs: Counter::new(),
            realloc_moves: Counter::new(),
            large_allocs: Counter::new(),
            large_frees: Counter::new(),
            large_active: AtomicI64::new(0),
            large_live: AtomicI64::new(0),
            published: Cell::new(0),
            climbing: Cell::new(false),
            freed_at_peak: Cell::new(u64::MAX),
            admitted: Cell::new(0),
            limit_exempt: Cell::new(false),
        }
    }

    /// Bytes allocated minus bytes freed by this thread (the owner's view).
    #[inline(always)]
    pub fn net(&self) -> i64 {
        self.lo.load(Relaxed) + self.room.load(Relaxed)
    }

    /// Bytes freed by this thread (the owner's view).
    fn freed(&self) -> u64 {
        self.allocated.get().wrapping_sub(self.net() as u64)
    }

    /// `(allocated, net)` as any thread may read them: retried while the owner is inside a slow
    /// path's update, so that `lo` and `room` come from the same one.
    pub fn read(&self) -> (u64, i64) {
        // A reader that keeps finding the update open waits for an owner preempted inside it.
        let mut backoff = Backoff::new();
        loop {
            let e = self.epoch.load(Acquire);
            if e & 1 == 0 {
                let allocated = self.allocated.get();
                let net = self.lo.load(Relaxed) + self.room.load(Relaxed);
                fence(Acquire);
                if self.epoch.load(Relaxed) == e {
                    return (allocated, net);
                }
            }
            backoff.snooze();
        }
    }

    /// In a child after `fork`, for every heap: closes an update its owner, a thread that does not
    /// exist in the child, was making, so that readers do not wait for it (its figures may be off
    /// by that one update), and forgets the heap's reservation for the limit (`clear_admitted`
    /// drops them all).
    pub fn after_fork(&self) {
        let e = self.epoch.load(Relaxed);
        if e & 1 == 1 {
            self.epoch.store(e.wrapping_add(1), Release);
        }
        self.admitted.set(0);
    }

    /// In a child after `fork`: drops every reservation for the limit. Those of requests being
    /// made on other threads would never be withdrawn (the threads do not exist in the child), and
    /// the forking thread makes none while it forks.
    pub fn clear_admitted() {
        ADMITTED.store(0, Relaxed);
    }

    /// Fast path of an allocation of `size` bytes: true if it was accounted without crossing a
    /// mark; false (nothing changed) if the caller must go to its slow path.
    #[inline(always)]
    pub fn try_alloc_fast(&self, size: usize) -> bool {
        if cfg!(feature = "stats") {
            let room = self.room.load(Relaxed) + size as i64;
            if room > self.span.get() {
                return false;
            }
            self.room.store(room, Relaxed);
            self.allocated.add(size as u64);
        }
        true
    }

    /// An allocation that crossed the upper mark. If it has nothing to publish (usually it only
    /// sets a new thread peak), account it here: a thread whose memory keeps growing (a producer)
    /// sets a new peak with almost every allocation, and the full slow path for each would cost it
    /// dearly. False (nothing changed) if the caller must take the slow path to publish. Called
    /// at the top of the allocation slow path (a call from the fast path itself would make it
    /// save registers on every allocation).
    #[inline]
    pub fn new_peak(&self, size: usize) -> bool {
        if !cfg!(feature = "stats") {
            return false;
        }
        let net = self.net() + size as i64;
        if net - self.published.get() > PUBLISH_THRESHOLD {
            return false;
        }
        self.lift_peak(net);
        // A second new peak with no free since the first: the thread is climbing.
        let freed = self.freed();
        if freed == self.freed_at_peak.get() {
            self.climbing.set(true);
        }
        self.freed_at_peak.set(freed);
        self.settle(self.allocated.get().wrapping_add(size as u64), net);
        true
    }

    /// Fast path of a free of `size` bytes, as `try_alloc_fast`.
    #[inline(always)]
    pub fn try_free_fast(&self, size: usize) -> bool {
        if cfg!(feature = "stats") {
            let room = self.room.load(Relaxed);
            if room < size as i64 {
                return false;
            }
            self.room.store(room - size as i64, Relaxed);
        }
        true
    }

    /// Whether the memory limit admits `bytes` more now. Checked before the memory is obtained,
    /// so that a refused or failed request changes no figure. Only a request that would make the
    /// thread publish is checked (see the module docs for the slack this gives).
    #[inline]
    pub fn admits(&self, bytes: usize) -> bool {
        let limit = LIMIT.load(Relaxed);
        !cfg!(feature = "stats") || limit == u64::MAX || self.admits_under(limit, bytes)
    }

    /// A request that would publish is checked against `LIVE` and every reservation; if it fits,
    /// it reserves its bytes in `ADMITTED` and checks again, and keeps the reservation until its
    /// publication (`change`) or its failure (`withdraw`). Two requests racing each other thus
    /// cannot both pass on the same `LIVE`, and the limit keeps the slack the module docs give. A
    /// request refused by the first check reserves nothing, so one that can never fit (a program
    /// probing with `try_reserve`) does not hold others back, and no reservation exceeds the limit.
    #[cold]
    #[inline(never)]
    fn admits_under(&self, limit: u64, bytes: usize) -> bool {
        self.withdraw();
        if self.limit_exempt.get() {
            return true;
        }
        let unpublished = (self.net() - self.published.get()).saturating_add(bytes as i64);
        if unpublished <= PUBLISH_THRESHOLD {
            return true;
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let fits = |pending: i64| LIVE.load(Relaxed).saturating_add(pending) <= limit;
        if !fits(ADMITTED.load(Acquire).saturating_add(unpublished)) {
            return false;
        }
        // AcqRel: a reservation that no longer counts here was withdrawn after its bytes went
        // into `LIVE` (`change`), so the load in `fits` sees them.
        let pending = ADMITTED
            .fetch_add(unpublished, AcqRel)
            .saturating_add(unpublished);
        if fits(pending) {
            self.admitted.set(unpublished);
            return true;
        }
        ADMITTED.fetch_sub(unpublished, Release);
        false
    }

    /// Runs `alloc` with the memory limit lifted for this thread: the allocation of a `realloc`
    /// that shrinks its block by moving it, refused once (see `limit_exempt`).
    #[cold]
    pub fn exempt_from_limit(&self, alloc: impl FnOnce() -> *mut u8) -> *mut u8 {
        self.limit_exempt.set(true);
        let q = alloc();
        self.limit_exempt.set(false);
        q
    }

    /// Gives back this thread's reservation in `ADMITTED`, if it holds one: its request has been
    /// published, or failed after the limit admitted it.
    #[inline]
    pub fn withdraw(&self) {
        let held = self.admitted.replace(0);
        if held != 0 {
            ADMITTED.fetch_sub(held, Release);
        }
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
        // A free ends a climb; an allocation continues it.
        let climbing = self.settle_climb() && freed == 0;
        self.climbing.set(climbing);
        let net = self.net() + allocated as i64 - freed as i64;
        let unpublished = net - self.published.get();
        if !(-PUBLISH_THRESHOLD..=PUBLISH_THRESHOLD).contains(&unpublished) {
            let live = LIVE.fetch_add(unpublished, Relaxed) + unpublished;
            PEAK.fetch_max(live, Release); // pairs with `stats::reset_peak`
            self.published.set(net);
        }
        // After the publication: a request that no longer sees the reservation sees the bytes.
        self.withdraw();
        self.lift_peak(net);
        self.settle(self.allocated.get().wrapping_add(allocated), net);
    }

    /// Stores `allocated` and `net` (as `lo` and `room`) under the sequence lock, with marks for the
    /// current `published`, `peak` and `climbing`.
    fn settle(&self, allocated: u64, net: i64) {
        let publish_mark = self.published.get() + PUBLISH_THRESHOLD;
        let (lo, hi) = if self.climbing.get() {
            // `room` starts at -4 thresholds, below any value the allocations before the next slow
            // path can raise it to (they add at most `2 * PUBLISH_THRESHOLD`, from the lower
            // publishing mark to the upper): the first free fails its test.
            (net + 4 * PUBLISH_THRESHOLD, publish_mark)
        } else {
            let lo = self.published.get() - PUBLISH_THRESHOLD;
            (lo, self.peak.load(Relaxed).min(publish_mark))
        };
        let e = self.epoch.load(Relaxed);
        self.epoch.store(e.wrapping_add(1), Relaxed);
        fence(Release);
        self.allocated.set(allocated);
        self.lo.store(lo, Relaxed);
        self.room.store(net - lo, Relaxed);
        self.epoch.store(e.wrapping_add(2), Release);
        self.span.set(hi - lo);
    }

    /// Recomputes the marks after `peak`, `published` or `climbing` changed.
    fn refresh_marks(&self) {
        self.settle(self.allocated.get(), self.net());
    }

    /// Ends a climb, if one is on, by recording its peak (the current net: it only rose).
    /// Returns whether one was on.
    fn settle_climb(&self) -> bool {
        if !self.climbing.get() {
            return false;
        }
        self.climbing.set(false);
        self.lift_peak(self.net());
        true
    }

    /// Raises `peak` to `v` if it is lower. Owner-only (a load and a store, like every counter).
    fn lift_peak(&self, v: i64) {
        if v > self.peak.load(Relaxed) {
            self.peak.store(v, Relaxed);
        }
    }

    /// The thread's peak: the high-water mark of its net bytes.
    pub fn thread_peak(&self) -> i64 {
        let peak = self.peak.load(Relaxed);
        if self.climbing.get() {
            peak.max(self.net())
        } else {
            peak
        }
    }

    /// Sets the thread peak to the current net bytes; returns the old peak.
    pub fn reset_peak(&self) -> i64 {
        self.settle_climb();
        let old = self.peak.swap(self.net(), Relaxed);
        self.refresh_marks();
        old
    }

    /// Raises the thread peak to at least `peak` (used by `measure` to restore the outer peak).
    pub fn raise_peak(&self, peak: i64) {
        self.settle_climb();
        self.lift_peak(peak);
        self.refresh_marks();
    }

    /// Moves everything into `exited` (the registry's totals of exited threads) and the published
    /// total, leaving the counters and the per-class counters given at zero. Called by the owner as
    /// its thread exits, under the registry lock, so that a reader summing heaps and `exited` under
    /// the same lock never sees a thread twice.
    pub fn fold_into<'a, I>(&self, exited: &mut Totals, classes: I)
    where
        I: Iterator<Item = (&'a Counter, &'a Counter)> + Clone,
    {
        // Published like any other change, so the process peak sees what the thread leaves live.
        let unpublished = self.net() - self.published.get();
        let live = LIVE.fetch_add(unpublished, Relaxed) + unpublished;
        PEAK.fetch_max(live, Release); // pairs with `stats::reset_peak`
        self.withdraw();
        exited.add(self, classes.clone());
        for (a, f) in classes {
            a.set(0);
            f.set(0);
        }
        let counters = [
            &self.reallocs,
            &self.realloc_moves,
            &self.large_allocs,
            &self.large_frees,
        ];
        for c in counters {
            c.set(0);
        }
        for g in [&self.peak, &self.large_active, &self.large_live] {
            g.store(0, Relaxed);
        }
        self.published.set(0);
        self.climbing.set(false);
        self.freed_at_peak.set(u64::MAX);
        self.settle(0, 0);
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
