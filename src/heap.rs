//! Thread-local heaps: the allocation fast path and everything that keeps it fast.
//!
//! # Fast path
//! Each heap has one **bin** per size class: a stack of pointers to free blocks (see `Heap`).
//! `alloc` pops the top pointer of the request's class; `dealloc` pushes one. The class comes from
//! the `Layout`, which `dealloc` receives too, so a free needs no lookup at all. Neither touches a
//! lock or an atomic read-modify-write, and neither reads or writes the block itself. The
//! statistics (`counters`) add the size to one room word and compare it with a mark. Measured with
//! `benches/callgrind.sh 64`: 56 instructions per alloc+free pair through the same interface as
//! `__rust_alloc`, 38 once the harness's loop and calls are subtracted (26 without statistics).
//!
//! # Slow paths (`#[cold]`)
//! - **Refill** (bin empty): collect other threads' frees (`drain_remote`) straight into the bins
//!   while they have room; if none was of this class, take up to half a bin from the first page in
//!   the class's queue: free-list blocks, then fresh blocks carved lazily (a page that empties is
//!   carved afresh, in address order, next time). Get a page from one of the heap's segments, or a
//!   new segment, when the queue is empty.
//! - **Flush** (bin full): the oldest half of the bin goes back to the pages it came from
//!   (`GiveBack`); the newest half, likeliest to be in cache, stays.
//!
//! # Cross-thread frees
//! A block may be freed on any thread; it lands in that thread's bin and may be reused there. When
//! a flush meets blocks of another heap `H`, it sends them as messages: the first block of a batch
//! carries the addresses of the next ones in its own memory, and consecutive messages for `H` are
//! pushed onto `H.remote` with one compare-and-swap (a Treiber push; the only consumer takes the
//! whole list with one `swap`, so there is no ABA). The freeing thread writes one block per batch,
//! and the others' cache lines never leave the owner. `H`'s owner drains `remote` on its next
//! refill into its bins, the overflow into the blocks' pages. A block is counted as used by its
//! page while in flight and while in a bin, so the segment of such a block is never released.
//!
//! # Thread lifecycle
//! A thread's first allocation finds the static `EMPTY` heap (no slots: every bin is empty and
//! full), falls into the slow path, and adopts a heap: a heap left by an exited thread if there is
//! one, else a new one carved from memory mapped for metadata. A `pthread` key destructor flushes
//! and purges the heap at thread exit, folds its counters into the process totals and leaves it on
//! the orphan list, still reachable by remote frees, for the next new thread. Thread churn
//! therefore reuses heaps instead of leaking them. After the destructor ran, the thread's heap is
//! the static `DEAD` heap, and allocation goes through a shared fallback heap under a lock. Two
//! ways a heap's thread can be gone without that destructor: the thread first allocated inside
//! another key's destructor in glibc's last round, which never runs destructors of keys set during
//! it; or the process forked, and the child has only the forking thread. `adopt_heap`, before it
//! makes a new heap, checks a few heaps for an owner the kernel no longer knows (`reclaim_ended`),
//! and the fork handler orphans the other threads' heaps in the child at once (but one whose slow
//! lock was held at the fork, which stays out of use, and with their bins emptied).
//!
//! # Returning memory
//! Emptied pages and free medium blocks are counted as dirty. Every `PURGE_DELAY_MS` while anything
//! is dirty, the next slow path walks the heap's segments (`purge`): it releases the empty pages
//! (and segments) that nothing was taken from since the previous walk, and purges the OS pages
//! inside medium blocks that stayed free since then; memory in reuse stays resident. Once more than
//! `PURGE_BOUND` bytes are dirty, it walks at once, and takes memory in reuse too if that is needed.
//! A thread that frees and then waits runs no slow path: every `IDLE_SCAN_EVERY` slow paths, a
//! thread checks (at most once a period process-wide) for heaps whose purge is a whole period
//! overdue and runs it for them under their `slow` lock (`purge_idle_heaps`), which their owners
//! also hold through their own slow paths; the fast paths never take it.

use crate::counters::{Counter, ThreadCounters, Totals};
use crate::extent;
use crate::large::{self, LargeCache};
use crate::os;
use crate::remote::RemoteList;
use crate::segment::{self, Block, Page, Segment, MEDIUM_PAGE_SHIFT, NO_CLASS, SMALL_PAGE_SHIFT};
use crate::size_class::{self, CLASSES};
use crate::sync::{ForkSafeOnce, SpinGuard, SpinLock};
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use crossbeam_utils::CachePadded;

/// Dirty bytes a heap may hold before it purges regardless of their age.
const PURGE_BOUND: usize = 64 << 20;
/// How long emptied memory is kept for reuse before it is purged.
const PURGE_DELAY_MS: u64 = 200;
/// A heap's slow paths look for idle heaps to purge once in this many (and then only if no other
/// thread looked in the last `PURGE_DELAY_MS`): it costs a clock read.
const IDLE_SCAN_EVERY: u32 = 16;

/// Free-block slots a heap keeps for class `c` (`highs[c] - lows[c]` of a live heap): about 64 KiB
/// of blocks, at least 2 and at most 512.
const fn bin_limit(c: usize) -> usize {
    let n = 64 * 1024 / size_class::BLOCK_SIZE[c] as usize;
    if n < 2 {
        2
    } else if n > 512 {
        512
    } else {
        n
    }
}

/// `BIN_START[c]` is the first slot of class `c` in a heap's slot array; the last entry is its length.
const BIN_START: [usize; CLASSES + 1] = {
    let mut t = [0; CLASSES + 1];
    let mut c = 0;
    while c < CLASSES {
        t[c + 1] = t[c] + bin_limit(c);
        c += 1;
    }
    t
};
const SLOTS: usize = BIN_START[CLASSES];

const STATE_EMPTY: u8 = 0;
const STATE_DEAD: u8 = 1;
const STATE_LIVE: u8 = 2;

/// A thread's heap. Only the owning thread (or the holder of the fallback lock, for the fallback
/// heap) touches its bins and its counters' `Cell`s; other threads push onto `remote` and read the
/// counters.
///
/// **Slow lock.** Everything the fast paths never touch (page queues, segments and their page
/// records, the large cache, the dirty bytes and purge deadline) is touched only by the holder of
/// `slow`: the owner through each of its slow paths, or another thread purging the heap while its
/// owner is idle or gone (`purge_idle_heaps`, which also takes back the blocks in `remote` into
/// their pages, never into bins). The owner takes it without contention but for those rare
/// purges; the fast paths never take it. Nothing may allocate while holding it: the allocation's
/// own slow path would wait for it forever. `lock_slow` turns that into an abort with a message
/// (except on the fallback heap, where such an allocation waits for the `FALLBACK` lock first).
///
/// **Bins.** For each class `c` the heap has a stack of free blocks: pointers in a slot array
/// (carved right after the heap by `new_heap`), `lows[c] <= tops[c] <= highs[c]`; the blocks are
/// `lows[c]..tops[c]`, newest on top. Each block is of class `c`, unused, and counted as used by
/// its page. The bins are structure-of-arrays so that the fast path addresses each field as
/// `field[class]` with a scaled index. A bin holds pointers, not linked blocks: a free writes
/// nothing into the block, so a block another thread frees never travels back to that thread's
/// cache just to be linked, and a flush reads the pointers without touching the blocks.
/// EMPTY and DEAD have null tops, lows and highs: every bin is empty and full at once.
#[repr(C)]
pub struct Heap {
    tops: [Cell<*mut *mut Block>; CLASSES],
    lows: [Cell<*mut *mut Block>; CLASSES],
    highs: [Cell<*mut *mut Block>; CLASSES],
    /// Blocks handed out and taken back per class (read by `stats`).
    pub allocs: [Counter; CLASSES],
    pub frees: [Counter; CLASSES],
    pub counters: ThreadCounters,
    /// First page of each class's queue of pages that may have free blocks (doubly linked).
    queues: [Cell<*mut Page>; CLASSES],
    /// The heap's segments of each kind (small, medium); those with free pages come first.
    segments: [Cell<*mut Segment>; 2],
    large: LargeCache,
    dirty_bytes: Cell<usize>,
    /// When the next timed purge is due (`os::now_ms`), 0 for none. Written under `slow`; read
    /// without it by `purge_idle_heaps` to pick heaps worth locking.
    purge_deadline: AtomicU64,
    /// See the struct docs.
    slow: SpinLock<()>,
    /// Slow paths taken (under `slow`), to pace `purge_idle_heaps`.
    slow_paths: Cell<u32>,
    /// The owner holds `slow` (set and cleared by it under the lock, read only by it).
    owner_in_slow: Cell<bool>,
    /// Purges of this heap by other threads (for the tests).
    #[cfg(test)]
    foreign_purges: AtomicU64,
    /// Owned by a live thread (not an orphan, the fallback heap or a test's heap): the heaps
    /// `purge_idle_heaps` may purge.
    thread_owned: AtomicBool,
    /// `(pid, tid)` of the thread that adopted the heap, for `reclaim_ended`. Written and read
    /// under the registry lock.
    owner: Cell<(i32, i32)>,
    state: Cell<u8>,
    /// Next heap in the registry's list of all heaps (set once, under the registry lock).
    next_all: Cell<*mut Heap>,
    /// Next heap in the orphan list (under the registry lock).
    next_orphan: Cell<*mut Heap>,
    /// Blocks of this heap freed by other threads (see the module docs and `remote`).
    remote: CachePadded<RemoteList<Block>>,
    /// `remote`'s head at the previous scan for idle heaps (`purge_idle_heaps`); written only by
    /// the scanning thread.
    remote_seen: AtomicPtr<Block>,
}

// SAFETY: see the struct docs: the bins' and counters' Cells are owner-only, the page-side ones are
// accessed only under the `slow` lock (whose acquire and release order them), shared fields are
// atomics.
unsafe impl Sync for Heap {}

impl Heap {
    const fn new(state: u8) -> Self {
        Heap {
            tops: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            lows: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            highs: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            allocs: [const { Counter::new() }; CLASSES],
            frees: [const { Counter::new() }; CLASSES],
            counters: ThreadCounters::new(),
            queues: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            segments: [const { Cell::new(ptr::null_mut()) }; 2],
            large: LargeCache::new(),
            dirty_bytes: Cell::new(0),
            purge_deadline: AtomicU64::new(0),
            slow: SpinLock::new(()),
            slow_paths: Cell::new(0),
            owner_in_slow: Cell::new(false),
            #[cfg(test)]
            foreign_purges: AtomicU64::new(0),
            thread_owned: AtomicBool::new(false),
            owner: Cell::new((0, 0)),
            state: Cell::new(state),
            next_all: Cell::new(ptr::null_mut()),
            next_orphan: Cell::new(ptr::null_mut()),
            remote: CachePadded::new(RemoteList::new()),
            remote_seen: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Gives a new heap its bins, empty, in `slots` (room for `SLOTS` pointers).
    fn set_bins(&self, slots: *mut *mut Block) {
        for c in 0..CLASSES {
            let low = slots.wrapping_add(BIN_START[c]);
            self.lows[c].set(low);
            self.tops[c].set(low);
            self.highs[c].set(slots.wrapping_add(BIN_START[c + 1]));
        }
    }

    /// Forgets the blocks in every bin (see `fork_child`). Only for a live heap.
    fn empty_bins(&self) {
        for c in 0..CLASSES {
            self.tops[c].set(self.lows[c].get());
        }
    }

    /// Blocks in the bin of `class`. Only for a live heap (EMPTY and DEAD have no slots).
    fn bin_len(&self, class: usize) -> usize {
        debug_assert!(self.is_live());
        // SAFETY: a live heap's `tops` and `lows` point into its slot array (struct invariant).
        unsafe { self.tops[class].get().offset_from(self.lows[class].get()) as usize }
    }

    /// Adds this heap's counters to `t`.
    pub fn add_to(&self, t: &mut Totals) {
        t.add(&self.counters, self.class_counters());
    }

    fn class_counters(&self) -> impl Iterator<Item = (&Counter, &Counter)> + Clone {
        self.allocs.iter().zip(self.frees.iter())
    }

    pub fn is_live(&self) -> bool {
        self.state.get() == STATE_LIVE
    }
}

/// The heap of threads that have not allocated yet. Never written: its bins have no slots.
static EMPTY: Heap = Heap::new(STATE_EMPTY);
/// The heap of threads whose heap was already torn down at exit. Never written.
static DEAD: Heap = Heap::new(STATE_DEAD);

thread_local! {
    static CURRENT: Cell<*const Heap> = const { Cell::new(&EMPTY as *const Heap) };
}

#[inline(always)]
fn current() -> &'static Heap {
    // The pointer leaves the closure raw: a reference there would become an `Option<&Heap>`
    // whose null the compiler cannot rule out, and it would test for it on every call.
    let heap = CURRENT.with(Cell::get);
    // SAFETY: CURRENT always holds EMPTY, DEAD, or a heap that lives forever (heaps are never freed).
    unsafe { &*heap }
}

/// The owner's hold on its heap's `slow` lock; `owner_in_slow` is set while it lasts.
struct OwnerSlow<'a> {
    heap: &'a Heap,
    _guard: SpinGuard<'a, ()>,
}

impl Drop for OwnerSlow<'_> {
    fn drop(&mut self) {
        // Before the guard field is dropped: cleared while the lock is still held.
        self.heap.owner_in_slow.set(false);
    }
}

/// Takes `heap.slow` for its owner: at once, or after a foreign purge of the heap ends. If the
/// owner itself holds it, the allocator was re-entered from its own slow path (a panic inside it
/// allocates its message): abort with a message instead of waiting forever.
fn lock_slow(heap: &Heap) -> OwnerSlow<'_> {
    let guard = match heap.slow.try_lock() {
        Some(g) => g,
        None if heap.owner_in_slow.get() => {
            os::die("perfalloc: allocation inside the allocator's own slow path (a panic in it?)\n")
        }
        None => heap.slow.lock(),
    };
    heap.owner_in_slow.set(true);
    OwnerSlow {
        heap,
        _guard: guard,
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points (called by `global`).

/// Marks the branch that calls it unlikely, so the compiler lays the other one out straight
/// (as `core::hint::cold_path` does on compilers newer than this crate's `rust-version`).
#[cold]
#[inline(always)]
fn cold() {}

/// Allocates `size` bytes aligned to `align`; null on failure.
///
/// Written for the instruction count (here and in `free`; `benches/callgrind.sh` measures it):
/// - the two tests of `is_table_size` are apart, each leaving for its own function and marked
///   unlikely: two compares and two untaken branches; with one target the compiler folds them into
///   flag arithmetic two instructions longer;
/// - every path gets the heap read first, so that a caller into which both `alloc` and `free` are
///   inlined (a loop in the program's own crate) can look the thread-local up once for both;
/// - the slow paths take their arguments in the registers the entry point already holds them in,
///   which saves the moves between.
#[inline(always)]
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    let heap = current();
    if size > size_class::TABLE_MAX {
        cold();
        return alloc_general(size, align, heap);
    }
    if align > size_class::FAST_ALIGN {
        cold();
        return alloc_aligned(size, align, heap);
    }
    debug_assert!(size_class::is_table_size(size, align));
    alloc_small(heap, size_class::table_class(size), size)
}

/// A table size with an alignment above `FAST_ALIGN`. Alignment 16 has its own test and class
/// (`size_class::class_16`): every `HashMap` table asks for it (hashbrown's control groups are 16
/// bytes). `heap` is the calling thread's `current()`, as for every function here that takes one.
#[inline(never)]
fn alloc_aligned(size: usize, align: usize, heap: &Heap) -> *mut u8 {
    debug_assert!(size <= size_class::TABLE_MAX);
    if align == 16 {
        return alloc_small(heap, size_class::class_16(size), size);
    }
    alloc_general(size, align, heap)
}

/// Every request the table does not cover: aligned, above 4 KiB, or large. `heap` is `current()`.
#[inline(never)]
fn alloc_general(size: usize, align: usize, heap: &Heap) -> *mut u8 {
    match size_class::class_above_table(size, align) {
        Some(class) => alloc_small(heap, class, size),
        None => alloc_large(size, align, false, heap),
    }
}

/// Allocates zeroed memory.
#[inline]
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    match size_class::class_of(size, align) {
        Some(class) => {
            let p = alloc_small(current(), class, size);
            if !p.is_null() {
                // SAFETY: `p` is a fresh block of at least `size` bytes.
                unsafe { ptr::write_bytes(p, 0, size) };
            }
            p
        }
        None => alloc_large(size, align, true, current()),
    }
}

/// Frees a block.
///
/// # Safety
/// `p` was returned by `alloc`/`alloc_zeroed`/`realloc` with this `size` and `align`, and is not used
/// again.
#[inline(always)]
pub unsafe fn free(p: *mut u8, size: usize, align: usize) {
    let heap = current();
    if size > size_class::TABLE_MAX {
        cold();
        // SAFETY: forwarded caller promise.
        return unsafe { free_general(p, size, align, heap) };
    }
    if align > size_class::FAST_ALIGN {
        cold();
        // SAFETY: forwarded caller promise.
        return unsafe { free_aligned(p, size, align, heap) };
    }
    debug_assert!(size_class::is_table_size(size, align));
    // SAFETY: forwarded caller promise.
    unsafe { free_small(heap, p.cast(), size_class::table_class(size), size) }
}

/// `alloc_aligned`'s counterpart.
///
/// # Safety
/// As for `free`, and `heap` is `current()`.
#[inline(never)]
unsafe fn free_aligned(p: *mut u8, size: usize, align: usize, heap: &Heap) {
    debug_assert!(size <= size_class::TABLE_MAX);
    if align == 16 {
        // SAFETY: forwarded caller promise; a table size has no arena block (`extent::GROWN_MIN`).
        return unsafe { free_small(heap, p.cast(), size_class::class_16(size), size) };
    }
    // SAFETY: forwarded caller promise.
    unsafe { free_general(p, size, align, heap) }
}

/// # Safety
/// As for `free`, and `heap` is `current()`.
#[inline(never)]
unsafe fn free_general(p: *mut u8, size: usize, align: usize, heap: &Heap) {
    match size_class::class_above_table(size, align) {
        // SAFETY: forwarded caller promise. Not in an arena region, so (the invariant at
        // `extent::GROWN_MIN`) a block of the class: segments and regions are separate mappings.
        Some(class) if grown_region(p, size).is_none() => unsafe {
            free_small(heap, p.cast(), class, size)
        },
        // SAFETY: forwarded caller promise: a block above the classes, or one of a class's size
        // in an arena region, which only `realloc_to_arena` puts there (`extent::GROWN_MIN`).
        _ => unsafe { free_large(p, size, heap) },
    }
}

/// The arena region of `p`, a live block of `size` bytes that has a size class, if `realloc` grew
/// it into the arena (the invariant at `extent::GROWN_MIN`).
#[inline]
fn grown_region(p: *mut u8, size: usize) -> Option<extent::RegionId> {
    if size >= extent::GROWN_MIN {
        extent::region_of(p)
    } else {
        None
    }
}

/// Resizes a block; null (old block untouched) on failure.
///
/// # Safety
/// As for `free`, and `new_size` is non-zero and does not overflow `isize` when rounded to `align`.
#[inline]
pub unsafe fn realloc(p: *mut u8, old: usize, align: usize, new: usize) -> *mut u8 {
    // The common case, a small block moving to another table class (a `String` or `Vec` growing),
    // without the general path's frame: a pop, a copy and a push.
    if size_class::is_table_size(old, align) && size_class::is_table_size(new, align) {
        let (old_class, new_class) = (size_class::table_class(old), size_class::table_class(new));
        let heap = current();
        if old_class != new_class && heap.is_live() {
            begin_move(heap);
            // The memory limit is checked by the allocation, as for any small one.
            let q = alloc_small(heap, new_class, new);
            if q.is_null() {
                // SAFETY: forwarded caller promise; the move is begun on `heap`, this thread's.
                return unsafe { small_move_refused(heap, p, (old_class, old), new) };
            }
            // SAFETY: both blocks are live and distinct; each holds at least min(old, new) bytes;
            // `p` is a block of `old_class` that the caller gives up (forwarded promise), and
            // `heap` is still this thread's heap (a live heap stays so).
            unsafe {
                ptr::copy_nonoverlapping(p, q, old.min(new));
                free_small(heap, p.cast(), old_class, old);
            }
            end_move(heap);
            return q;
        }
    }
    // SAFETY: forwarded caller promise.
    unsafe { realloc_general(p, old, align, new) }
}

/// The allocation of `realloc`'s small move of `p` came back null: retried exempt from the memory
/// limit if the move shrinks the block (it ends with fewer live bytes), else the move is given up
/// (null, `p` untouched, the move's count taken back).
///
/// # Safety
/// As for `realloc`; `p` is a block of `old.0`, `heap` is this thread's live heap, and
/// `begin_move` counted the move on it.
#[cold]
#[inline(never)]
unsafe fn small_move_refused(
    heap: &Heap,
    p: *mut u8,
    (old_class, old): (usize, usize),
    new: usize,
) -> *mut u8 {
    // The class is computed again rather than kept live across the first allocation: on the path
    // every small realloc takes, one register fewer saved.
    let new_class = size_class::table_class(new);
    let q = if new <= old {
        heap.counters
            .exempt_from_limit(|| alloc_small(heap, new_class, new))
    } else {
        ptr::null_mut()
    };
    if q.is_null() {
        cancel_move(heap);
        return q;
    }
    // SAFETY: as in `realloc`: both blocks are live and distinct, `p` is the caller's to give up.
    unsafe {
        ptr::copy_nonoverlapping(p, q, new);
        free_small(heap, p.cast(), old_class, old);
    }
    end_move(heap);
    q
}

// A moving realloc (an allocation, a copy and a free) is counted as one realloc, not as an
// allocation and a deallocation: its allocation and free count in the class or large figures like
// any other, and `realloc_moves` takes them back out of `Stats::allocations` and `deallocations`.
// It is counted *before* them (`begin_move`), behind a release fence, and readers read it after
// them (`Totals::add`): a reader that sees the move's allocation or free also sees it, so those
// two derived counts can fall short while a move is under way but never overshoot, and `stats`
// keeps them monotonic by reporting the most it has seen. All three functions act on the heap
// that counts the move's allocation and free, live or the fallback heap.

/// Counts a move that is about to allocate (see above).
#[inline(always)]
fn begin_move(heap: &Heap) {
    if cfg!(feature = "stats") {
        heap.counters.realloc_moves.add(1);
        fence(Ordering::Release);
    }
}

/// Takes back `begin_move` for a move whose allocation failed.
#[inline]
fn cancel_move(heap: &Heap) {
    if cfg!(feature = "stats") {
        let moves = &heap.counters.realloc_moves;
        moves.set(moves.get().wrapping_sub(1));
    }
}

/// Counts the realloc of a move that is done.
#[inline(always)]
fn end_move(heap: &Heap) {
    if cfg!(feature = "stats") {
        heap.counters.reallocs.add(1);
    }
}

/// # Safety
/// As for `realloc`.
#[inline(never)]
unsafe fn realloc_general(p: *mut u8, old: usize, align: usize, new: usize) -> *mut u8 {
    let mut old_class = size_class::class_of(old, align);
    let new_class = size_class::class_of(new, align);
    let heap = current();
    if heap.is_live() {
        // Check first, obtain the memory, then account: a refused or failed request changes no
        // figure.
        if !heap.counters.admits(new.saturating_sub(old)) {
            return ptr::null_mut();
        }
        // The arena region of a large block, or of one that an earlier realloc grew into the
        // arena: a large block whatever its size.
        let grown = match old_class {
            Some(_) => grown_region(p, old),
            None => extent::region_of(p),
        };
        if grown.is_some() {
            old_class = None;
        }
        if old_class.is_some() && old_class == new_class {
            heap.counters.realloc(old, new);
            return p;
        }
        // A block growing to `GROWN_MIN` or more goes to the arena, where its next growth can be
        // in place; one already there stays while it keeps that size. If the arena has no room,
        // it moves to a size class below.
        let to_arena = new_class.is_some()
            && new >= extent::GROWN_MIN
            && align <= extent::GRANULE
            && (new > old || grown.is_some());
        if to_arena {
            // SAFETY: forwarded caller promise; `grown` is `p`'s region if it has one, and
            // `old_class` its class otherwise; `heap` is this thread's live heap.
            if let Some(q) = unsafe { realloc_to_arena(heap, p, old, old_class, grown, new) } {
                return q;
            }
        } else if old_class.is_none() && new_class.is_none() {
            let resized = {
                let _slow = lock_slow(heap);
                // SAFETY: forwarded caller promise: `p` is a live large block of `old` bytes.
                unsafe { large::realloc(&heap.large, p, old, new, align) }
            };
            let Some((q, old_len, new_len)) = resized else {
                heap.counters.withdraw(); // admitted, but no memory
                return ptr::null_mut();
            };
            count_large_resized(heap, (old, old_len), (new, new_len));
            return q;
        }
    }
    // Move: a fresh block, a copy, and a free, counted as one realloc on the heap that serves
    // them: this thread's (adopted now if it has none yet), or else the fallback heap, under one
    // hold of its lock, so that no heap adopted meanwhile serves part of the move.
    let Some(heap) = (if heap.is_live() {
        Some(heap)
    } else {
        thread_heap(heap)
    }) else {
        // SAFETY: forwarded caller promise; `with_fallback` holds the fallback heap's lock.
        let moved = with_fallback(|h| unsafe { move_on(h, p, old, align, new) });
        return moved.map_or(ptr::null_mut(), NonNull::as_ptr);
    };
    begin_move(heap);
    let mut q = alloc(new, align);
    if q.is_null() && new <= old {
        // The limit does not refuse a move that shrinks the block.
        q = heap.counters.exempt_from_limit(|| alloc(new, align));
    }
    if q.is_null() {
        heap.counters.withdraw(); // a reservation the check above took for the limit
        cancel_move(heap);
        return q;
    }
    // SAFETY: both blocks are live and distinct; each holds at least min(old, new) bytes.
    unsafe {
        ptr::copy_nonoverlapping(p, q, old.min(new));
        free(p, old, align);
    }
    end_move(heap);
    q
}

/// A moving realloc served and counted entirely by `heap`, the fallback heap, with the routing of
/// `alloc` and `free` but none of their heap lookups. `None` (nothing changed) on failure.
///
/// # Safety
/// As for `realloc`, and the caller holds the fallback heap's lock.
unsafe fn move_on(
    heap: &Heap,
    p: *mut u8,
    old: usize,
    align: usize,
    new: usize,
) -> Option<NonNull<u8>> {
    begin_move(heap);
    let alloc = || match size_class::class_of(new, align) {
        Some(class) => alloc_small(heap, class, new),
        None => alloc_large_in(heap, new, align, false),
    };
    let mut q = alloc();
    if q.is_null() && new <= old {
        // The limit does not refuse a move that shrinks the block.
        q = heap.counters.exempt_from_limit(alloc);
    }
    let Some(q) = NonNull::new(q) else {
        cancel_move(heap);
        return None;
    };
    // SAFETY: both blocks are live and distinct, each of at least `min(old, new)` bytes; `p` is
    // the caller's to give up, routed as `free_general` routes it.
    unsafe {
        ptr::copy_nonoverlapping(p, q.as_ptr(), old.min(new));
        match size_class::class_of(old, align) {
            Some(class) if grown_region(p, old).is_none() => free_small(heap, p.cast(), class, old),
            _ => free_large_in(heap, p, old),
        }
    }
    end_move(heap);
    Some(q)
}

/// Resizes `p` in the arena (`grown` is its region) or moves it there (from a block of
/// `old_class`), as `realloc` to `new` bytes, a size with a class of at least `GROWN_MIN` bytes.
/// `None` (nothing changed) if the arena has no room. Only `extent` is asked, never `large`: a
/// direct mapping of a class's size could not be told from a small block when it is freed.
///
/// # Safety
/// As for `realloc`; exactly one of `old_class` and `grown` is `Some`, and `heap` is `current()`,
/// live.
unsafe fn realloc_to_arena(
    heap: &Heap,
    p: *mut u8,
    old: usize,
    old_class: Option<usize>,
    grown: Option<extent::RegionId>,
    new: usize,
) -> Option<*mut u8> {
    debug_assert!(old_class.is_some() != grown.is_some());
    if let Some(region) = grown {
        // SAFETY: `p` is a live block of `old` bytes in `region`, the caller's; `new` is below
        // `MAX_EXTENT`.
        if let Some(new_len) = unsafe { extent::resize(region, p, old, new) } {
            count_large_resized(heap, (old, extent::len_of(old)), (new, new_len));
            return Some(p);
        }
    }
    let (q, len) = extent::alloc(new, false)?;
    // Counted as an allocation and a free, and as one move, like any moving realloc.
    begin_move(heap);
    count_large_alloc(heap, new, len);
    // SAFETY: both blocks are live and distinct, each of at least `min(old, new)` bytes; `p` is
    // the caller's to give up, a block of `old_class` or a large one in the arena.
    unsafe {
        ptr::copy_nonoverlapping(p, q, old.min(new));
        match old_class {
            Some(class) => free_small(heap, p.cast(), class, old),
            None => free_large_in(heap, p, old),
        }
    }
    end_move(heap);
    Some(q)
}

// ---------------------------------------------------------------------------------------------
// Small blocks.

#[inline(always)]
fn alloc_small(heap: &Heap, class: usize, size: usize) -> *mut u8 {
    debug_assert!(class < CLASSES);
    // SAFETY: every class is `< CLASSES` (the table is range-checked at compile time).
    let top = unsafe { heap.tops.get_unchecked(class) }.get();
    // SAFETY: as above.
    let low = unsafe { heap.lows.get_unchecked(class) }.get();
    // The order of this test matters: the shared EMPTY and DEAD heaps have empty bins, so they
    // leave here before `try_alloc_fast` could write their counters.
    if top == low || !heap.counters.try_alloc_fast(size) {
        return alloc_small_slow(size, class, heap);
    }
    debug_assert!(heap.is_live());
    // SAFETY: the bin is not empty.
    unsafe { pop(heap, class, top) }
}

/// Takes the top block of a bin and counts it handed out.
///
/// # Safety
/// The bin of `class` is not empty and `top` is its top.
#[inline(always)]
unsafe fn pop(heap: &Heap, class: usize, top: *mut *mut Block) -> *mut u8 {
    // SAFETY: the bin holds a block below `top` (caller promise); `class < CLASSES`.
    unsafe {
        let top = top.sub(1);
        heap.tops.get_unchecked(class).set(top);
        if cfg!(feature = "stats") {
            heap.allocs.get_unchecked(class).add(1);
        }
        (*top).cast()
    }
}

#[cold]
#[inline(never)]
fn alloc_small_slow(size: usize, class: usize, heap: &Heap) -> *mut u8 {
    if !heap.is_live() {
        return match thread_heap(heap) {
            Some(h) => alloc_small(h, class, size),
            None => with_fallback(|h| alloc_small(h, class, size)),
        };
    }
    if heap.bin_len(class) > 0 && heap.counters.new_peak(size) {
        // Only a new thread peak: the block is in the bin and nothing needs publishing.
        // SAFETY: the bin is not empty.
        return unsafe { pop(heap, class, heap.tops[class].get()) };
    }
    if !heap.counters.admits(size) {
        return ptr::null_mut(); // over the memory limit
    }
    if heap.bin_len(class) == 0 && !refill(heap, class) {
        heap.counters.withdraw(); // admitted, but no memory
        return ptr::null_mut();
    }
    heap.counters.alloc_slow(size);
    // SAFETY: the bin is non-empty (it was, or a refill succeeded).
    unsafe { pop(heap, class, heap.tops[class].get()) }
}

/// # Safety
/// `b` is a live block of `class`, freed by the caller.
#[inline(always)]
unsafe fn free_small(heap: &Heap, b: *mut Block, class: usize, size: usize) {
    debug_assert!(class < CLASSES);
    // SAFETY: as in `alloc_small`.
    let top = unsafe { heap.tops.get_unchecked(class) }.get();
    // SAFETY: as above.
    let high = unsafe { heap.highs.get_unchecked(class) }.get();
    // As in `alloc_small`: EMPTY and DEAD have full bins, so they leave before any write.
    if top == high || !heap.counters.try_free_fast(size) {
        // SAFETY: forwarded caller promise.
        return unsafe { free_small_slow(b, size, class, heap) };
    }
    // SAFETY: the caller gives the block up; the bin has room.
    unsafe { push(heap, class, top, b) }
}

/// Puts a freed block on top of a bin and counts it taken back.
///
/// # Safety
/// `b` is a block of `class` that nobody uses any more; `top` is the bin's top, below its high end.
#[inline(always)]
unsafe fn push(heap: &Heap, class: usize, top: *mut *mut Block, b: *mut Block) {
    // SAFETY: `top` is a free slot of the bin (caller promise); `class < CLASSES`.
    unsafe {
        *top = b;
        heap.tops.get_unchecked(class).set(top.add(1));
        if cfg!(feature = "stats") {
            heap.frees.get_unchecked(class).add(1);
        }
    }
}

#[cold]
#[inline(never)]
unsafe fn free_small_slow(b: *mut Block, size: usize, class: usize, heap: &Heap) {
    if !heap.is_live() {
        match thread_heap(heap) {
            // SAFETY: forwarded caller promise.
            Some(h) => unsafe { free_small(h, b, class, size) },
            // SAFETY: forwarded caller promise.
            None => with_fallback(|h| unsafe { free_small(h, b, class, size) }),
        }
        return;
    }
    heap.counters.free_slow(size);
    let _slow = lock_slow(heap);
    let limit = bin_limit(class);
    if heap.bin_len(class) >= limit {
        flush(heap, class, limit / 2);
    }
    // SAFETY: the caller gives the block up; the bin has room: it had, or the flush made it.
    unsafe { push(heap, class, heap.tops[class].get(), b) };
    maybe_purge(heap);
}

/// Fills the bin of `class`: with the blocks other threads sent back if any are of its class, else
/// with up to half its limit from its pages. False if no memory could be had.
fn refill(heap: &Heap, class: usize) -> bool {
    let _slow = lock_slow(heap);
    drain_remote(heap, true);
    let filled = heap.bin_len(class) > 0 || fill_bin(heap, class);
    // After, not before: purging first could release the empty pages the bin is about to use.
    maybe_purge(heap);
    filled
}

/// Requires an empty bin: refills run only when an allocation finds none.
fn fill_bin(heap: &Heap, class: usize) -> bool {
    debug_assert_eq!(heap.bin_len(class), 0);
    let want = bin_limit(class).div_ceil(2) as u32;
    let low = heap.lows[class].get();
    loop {
        let mut page = heap.queues[class].get();
        if page.is_null() {
            match new_page(heap, class) {
                Some(p) => page = p,
                None => return false,
            }
        }
        // SAFETY: pages in our queues are in use and owned by this heap.
        let page = unsafe { &mut *page };
        // SAFETY: as above; the bin is empty, so its slots have room for `want <= limit` blocks.
        let (n, redirtied) = unsafe { page.take(low, want) };
        heap.dirty_bytes
            .set(heap.dirty_bytes.get().saturating_sub(redirtied));
        if !page.has_free() {
            queue_remove(heap, page);
        }
        if n > 0 {
            heap.tops[class].set(low.wrapping_add(n as usize));
            return true;
        }
    }
}

/// Sends all but `keep` blocks of a bin back to their pages or owners: the oldest ones, at the
/// bottom of the bin, which are the least likely to be in cache; the newest stay.
fn flush(heap: &Heap, class: usize, keep: usize) {
    let len = heap.bin_len(class);
    let n = len - keep.min(len);
    if n == 0 {
        return;
    }
    let low = heap.lows[class].get();
    let mut back = GiveBack::new(heap, size_class::block_size(class));
    for i in 0..n {
        // SAFETY: `low[..len]` are the bin's blocks.
        back.block(unsafe { *low.add(i) });
    }
    back.finish();
    // SAFETY: both ranges lie in the bin's slots; `copy` allows overlap.
    unsafe { ptr::copy(low.add(n), low, len - n) };
    heap.tops[class].set(low.wrapping_add(len - n));
}

/// Returns blocks to their pages (ours) or owners (others'), in batches.
///
/// Consecutive blocks of one of our pages are linked into a run and spliced into the page at once.
/// Blocks of another heap travel as **messages**: the first block of a batch for one owner becomes
/// a carrier and holds the addresses of the next ones in its own memory: word 0 is the link of the
/// remote list, words `1..size / 8` the addresses, ended by a null unless all are used. So the
/// sender writes one block per batch (a carrier of up to 63 addresses for 512-byte blocks, 1 for 16-byte ones)
/// instead of every block. An 8-byte block has no room: it is a message of its own. Consecutive
/// messages for one owner are pushed with one compare-and-swap.
///
/// Invariants: the run's blocks are of page `run.0`, linked from `run.1` to `run.2`, `run.3` of
/// them; the messages in `sent` and the carrier are all for `owner`; `carried <= capacity`.
struct GiveBack<'a> {
    heap: &'a Heap,
    /// The local run being built: page, head, tail, count.
    run: (*mut Page, *mut Block, *mut Block, u32),
    /// The owner the pending messages go to, and those messages (head, tail), sealed.
    owner: *mut Heap,
    sent: (*mut Block, *mut Block),
    /// The carrier being filled and how many addresses it holds.
    carrier: *mut Block,
    carried: usize,
    /// How many addresses a carrier holds: from the block size of the bin being flushed (so the
    /// sender never reads the owner's page records, whose cache lines the owner is writing).
    capacity: usize,
}

/// Addresses a message block of `block_size` bytes can carry.
fn carrier_capacity(block_size: usize) -> usize {
    block_size / 8 - 1
}

impl<'a> GiveBack<'a> {
    /// `block_size` is that of every block that may go to another heap (a flush is of one class);
    /// any value for a drain, which only meets our own blocks.
    fn new(heap: &'a Heap, block_size: usize) -> Self {
        GiveBack {
            heap,
            run: (ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), 0),
            owner: ptr::null_mut(),
            sent: (ptr::null_mut(), ptr::null_mut()),
            carrier: ptr::null_mut(),
            carried: 0,
            capacity: carrier_capacity(block_size),
        }
    }

    /// Returns one block: unused, of some heap's page, and counted as used by that page.
    fn block(&mut self, b: *mut Block) {
        let seg = segment::segment_of(b.cast());
        // SAFETY: the block is live from its page's view, so its segment is live and `heap` stable.
        let owner = unsafe { (*seg).heap }.cast::<Heap>();
        if ptr::eq(owner, self.heap) {
            self.local(b);
        } else {
            self.foreign(owner, b);
        }
    }

    /// Adds a block of one of our pages to the run.
    fn local(&mut self, b: *mut Block) {
        // SAFETY: the block is of one of our pages, which is in use.
        let page = unsafe { segment::page_of(b.cast()) };
        if page == self.run.0 {
            // SAFETY: prepend `b` to the run being built; nobody else uses it.
            unsafe { (*b).next = self.run.1 };
            self.run.1 = b;
            self.run.3 += 1;
        } else {
            // SAFETY: the run holds unused blocks of its page.
            unsafe { put_run(self.heap, self.run) };
            // SAFETY: `b` is an unused block of one of our pages that nobody else touches; it
            // starts a new run.
            unsafe { (*b).next = ptr::null_mut() };
            self.run = (page, b, b, 1);
        }
    }

    fn foreign(&mut self, owner: *mut Heap, b: *mut Block) {
        if owner != self.owner {
            self.send();
            self.owner = owner;
        }
        if !self.carrier.is_null() && self.carried < self.capacity {
            // SAFETY: the carrier is a block of `capacity + 1` words that we own until it is
            // sent; word `1 + carried <= capacity` is inside it.
            unsafe { *self.carrier.cast::<*mut Block>().add(1 + self.carried) = b };
            self.carried += 1;
            return;
        }
        self.seal();
        self.carrier = b;
        self.carried = 0;
    }

    /// Closes the carrier and appends it to the messages for `owner`.
    fn seal(&mut self) {
        let m = self.carrier;
        if m.is_null() {
            return;
        }
        // SAFETY: the carrier is ours until sent; when it is not full, word `1 + carried` is
        // inside it (`carried < capacity`).
        unsafe {
            (*m).next = ptr::null_mut();
            if self.carried < self.capacity {
                *m.cast::<*mut Block>().add(1 + self.carried) = ptr::null_mut();
            }
            if self.sent.1.is_null() {
                self.sent.0 = m;
            } else {
                (*self.sent.1).next = m;
            }
        }
        self.sent.1 = m;
        self.carrier = ptr::null_mut();
    }

    /// Pushes the sealed messages onto their owner's remote list.
    fn send(&mut self) {
        self.seal();
        if !self.sent.0.is_null() {
            // SAFETY: heaps are never freed, so `owner` is valid; the messages' blocks are unused
            // and stay counted as used by their pages until the owner takes them.
            unsafe { (*self.owner).remote.push_chain(self.sent.0, self.sent.1) };
        }
        self.sent = (ptr::null_mut(), ptr::null_mut());
    }

    fn finish(mut self) {
        self.send();
        // SAFETY: the run holds unused blocks of its page.
        unsafe { put_run(self.heap, self.run) };
    }
}

/// Takes back the blocks other threads freed. With `to_bins`, each goes into its class's bin while
/// the bin has room, where the next allocations reuse it without its page record being touched: a
/// producer thread whose blocks a consumer frees gets them back for a pointer copy each, instead of
/// linking them into their pages and taking them out again. The rest, and all of them without
/// `to_bins` (a trim, which wants the pages emptied), go back into their pages. Under `heap.slow`;
/// without `to_bins` it touches no bin, so a thread other than the owner may run it (a foreign
/// purge: the owner's fast paths touch only bins).
fn drain_remote(heap: &Heap, to_bins: bool) {
    if heap.remote.is_empty() {
        return;
    }
    let mut m = heap.remote.take_all();
    let mut back = GiveBack::new(heap, 8);
    while !m.is_null() {
        // SAFETY: the Acquire swap makes the senders' writes visible; every message is a block of
        // one of our pages, sealed by `GiveBack::seal`, and so are the blocks it carries, all of
        // the message's class (a flush is of one class). Its words are all read before the
        // message itself is given back. Bin slots below `stop` are inside the bin (`stop <= high`).
        unsafe {
            let next = (*m).next;
            let page = segment::page_of(m.cast());
            let class = (*page).class as usize;
            let capacity = carrier_capacity((*page).block_size as usize);
            let (mut top, stop) = if to_bins {
                (heap.tops[class].get(), heap.highs[class].get())
            } else {
                (ptr::null_mut(), ptr::null_mut()) // no slot: every block goes to its page
            };
            let words = m.cast::<*mut Block>();
            let mut put = |b: *mut Block| {
                if top < stop {
                    *top = b;
                    top = top.add(1);
                } else {
                    back.local(b);
                }
            };
            // Words 1..=capacity; an exclusive range compiles to a tighter loop than `1..=capacity`.
            for i in 1..capacity + 1 {
                let b = *words.add(i);
                if b.is_null() {
                    break;
                }
                put(b);
            }
            put(m);
            if to_bins {
                heap.tops[class].set(top);
            }
            m = next;
        }
    }
    back.finish();
}

/// Puts a run `(page, head, tail, count)` of blocks back into their page (of this heap).
///
/// # Safety
/// The run's blocks are unused blocks of `page`, which belongs to this heap and is in use.
unsafe fn put_run(heap: &Heap, (page, head, tail, n): (*mut Page, *mut Block, *mut Block, u32)) {
    if page.is_null() {
        return;
    }
    // SAFETY: caller promise.
    let page = unsafe { &mut *page };
    // SAFETY: caller promise.
    let empty = unsafe { page.put_chain(head, tail, n) };
    if !page.in_queue {
        queue_push(heap, page);
    }
    let dirty = if page.is_medium() {
        n as usize * page.block_size as usize
    } else if empty {
        page.empty_dirty = true;
        1 << SMALL_PAGE_SHIFT
    } else {
        0
    };
    if dirty > 0 {
        add_dirty(heap, dirty);
    }
}

fn add_dirty(heap: &Heap, bytes: usize) {
    arm_purge(heap);
    heap.dirty_bytes.set(heap.dirty_bytes.get() + bytes);
}

/// Schedules a purge `PURGE_DELAY_MS` from now unless one is already scheduled.
fn arm_purge(heap: &Heap) {
    if heap.purge_deadline.load(Ordering::Relaxed) == 0 {
        heap.purge_deadline
            .store(os::now_ms() + PURGE_DELAY_MS, Ordering::Relaxed);
    }
}

fn queue_push(heap: &Heap, page: &mut Page) {
    let q = &heap.queues[page.class as usize];
    let first = q.get();
    page.prev = ptr::null_mut();
    page.next = first;
    if !first.is_null() {
        // SAFETY: queue members are valid pages of this heap.
        unsafe { (*first).prev = page };
    }
    q.set(page);
    page.in_queue = true;
}

fn queue_remove(heap: &Heap, page: &mut Page) {
    if !page.in_queue {
        return;
    }
    // SAFETY: queue neighbours are valid pages of this heap.
    unsafe {
        if page.prev.is_null() {
            heap.queues[page.class as usize].set(page.next);
        } else {
            (*page.prev).next = page.next;
        }
        if !page.next.is_null() {
            (*page.next).prev = page.prev;
        }
    }
    page.next = ptr::null_mut();
    page.prev = ptr::null_mut();
    page.in_queue = false;
}

/// A fresh page for `class` from the heap's segments or a new segment.
fn new_page(heap: &Heap, class: usize) -> Option<*mut Page> {
    let kind = size_class::is_medium(class) as usize;
    let list = &heap.segments[kind];
    let mut seg = list.get();
    // SAFETY: list members are live segments of this heap.
    if seg.is_null() || unsafe { (*seg).free_pages } == 0 {
        let shift = if kind == 1 {
            MEDIUM_PAGE_SHIFT
        } else {
            SMALL_PAGE_SHIFT
        };
        let huge = !seg.is_null();
        seg = segment::acquire(heap as *const Heap as *mut segment::Owner, shift, huge)?.as_ptr();
        seg_push_front(heap, kind, seg);
    }
    // SAFETY: `seg` is ours, of the right kind, and has a free page.
    let seg_ref = unsafe { &mut *seg };
    // SAFETY: as above.
    let page = unsafe { seg_ref.take_page(class)? };
    if seg_ref.free_pages == 0 {
        // Full segments go to the back so that the front one always has a free page if any has.
        seg_unlink(heap, kind, seg);
        seg_push_back(heap, kind, seg);
    }
    // SAFETY: the page was just initialised.
    queue_push(heap, unsafe { &mut *page });
    Some(page)
}

fn seg_push_front(heap: &Heap, kind: usize, seg: *mut Segment) {
    let list = &heap.segments[kind];
    // SAFETY: `seg` and list members are live segments of this heap.
    unsafe {
        (*seg).prev = ptr::null_mut();
        (*seg).next = list.get();
        if !list.get().is_null() {
            (*list.get()).prev = seg;
        }
    }
    list.set(seg);
}

fn seg_push_back(heap: &Heap, kind: usize, seg: *mut Segment) {
    let list = &heap.segments[kind];
    let mut last = list.get();
    if last.is_null() {
        return seg_push_front(heap, kind, seg);
    }
    // SAFETY: list members are live segments of this heap. (Walks the list: only when a segment
    // fills up, once per 64 or 7 pages.)
    unsafe {
        while !(*last).next.is_null() {
            last = (*last).next;
        }
        (*last).next = seg;
        (*seg).prev = last;
        (*seg).next = ptr::null_mut();
    }
}

fn seg_unlink(heap: &Heap, kind: usize, seg: *mut Segment) {
    // SAFETY: `seg` is a member of the list; its neighbours are too.
    unsafe {
        if (*seg).prev.is_null() {
            heap.segments[kind].set((*seg).next);
        } else {
            (*(*seg).prev).next = (*seg).next;
        }
        if !(*seg).next.is_null() {
            (*(*seg).next).prev = (*seg).prev;
        }
        (*seg).next = ptr::null_mut();
        (*seg).prev = ptr::null_mut();
    }
}

// ---------------------------------------------------------------------------------------------
// Purging.

/// Purges if one is scheduled and due, or if too much dirty memory is waiting; now and then, also
/// other threads' heaps that have been idle past their own purge. Called under `heap.slow`.
#[inline]
fn maybe_purge(heap: &Heap) {
    let n = heap.slow_paths.get().wrapping_add(1);
    heap.slow_paths.set(n);
    if n % IDLE_SCAN_EVERY == 0 {
        purge_idle_heaps(heap);
    }
    let deadline = heap.purge_deadline.load(Ordering::Relaxed);
    if deadline == 0 {
        return;
    }
    if heap.dirty_bytes.get() > PURGE_BOUND {
        // Idle memory first; memory in reuse too only if that was not enough.
        purge(heap, false);
        if heap.dirty_bytes.get() > PURGE_BOUND / 2 {
            purge(heap, true);
        }
    } else if os::now_ms() >= deadline {
        purge(heap, false);
    }
}

/// A purge pass: releases empty pages and segments, purges free medium blocks, and clears the
/// large cache. With `all` false (a timed pass) it releases only empty pages that stayed `idle`
/// (nothing taken) since the previous pass, and purges only medium blocks free since then
/// (`stale_mask`); it marks the rest for the next pass. So memory that a program empties and
/// refills in a loop (a batch job that frees everything each round) stays resident instead of
/// being faulted in again after every pass, while memory left alone goes back within two
/// periods (given slow paths to run the passes). The passes go on while anything is dirty.
///
/// Segment and page records are reached through raw pointers with short-lived references: page
/// queues link page records of the same segment, so no reference to a whole segment may be held
/// while `queue_remove` writes through those links.
fn purge(heap: &Heap, all: bool) {
    let mut left = 0;
    for kind in 0..2 {
        let mut seg = heap.segments[kind].get();
        while !seg.is_null() {
            // SAFETY: (whole block) list members are live segments of this heap; each access
            // below is a short-lived borrow of one field or one page record.
            unsafe {
                let next = (*seg).next;
                let had_free = (*seg).free_pages != 0;
                for idx in 0..(*seg).page_count as usize {
                    let page: *mut Page = ptr::addr_of_mut!((*seg).pages[idx]);
                    if (*page).class == NO_CLASS {
                        continue;
                    }
                    let idle = all || (*page).idle;
                    (*page).idle = true;
                    if (*page).used == 0 && idle {
                        queue_remove(heap, &mut *page);
                        // No block of the page is live or in any bin or list (`used == 0`).
                        (*seg).release_page(idx);
                        continue;
                    }
                    if (*page).is_medium() {
                        // Blocks free since the previous pass, even on a page in use.
                        let stale = if all { u64::MAX } else { (*page).stale_mask };
                        (*page).purge_free_blocks(stale);
                        (*page).stale_mask = (*page).free_mask;
                    }
                    left += (*page).dirty_bytes();
                }
                if (*seg).free_pages == (*seg).all_pages_mask() {
                    seg_unlink(heap, kind, seg);
                    segment::release(seg);
                } else if !had_free && (*seg).free_pages != 0 {
                    seg_unlink(heap, kind, seg);
                    seg_push_front(heap, kind, seg);
                }
                seg = next;
            }
        }
    }
    heap.large.clear();
    heap.dirty_bytes.set(left);
    heap.purge_deadline.store(0, Ordering::Relaxed);
    if left > 0 {
        arm_purge(heap);
    }
    // The arena purges on large allocations and frees; a thread that has stopped making them
    // brings the arena's next timed purge along on its own.
    if extent::maybe_purge() {
        arm_purge(heap);
    }
}

/// Held by the one thread scanning for idle heaps, and by `fork_prepare`, so that no foreign purge
/// is half done (holding some heap's `slow`) in a forked child.
static IDLE_SCAN: SpinLock<()> = SpinLock::new(());
/// When the next scan for idle heaps may run (`os::now_ms`).
static NEXT_IDLE_SCAN: AtomicU64 = AtomicU64::new(0);

/// Runs the timed purge of other threads' heaps whose owners have let it pass by a whole period
/// more without a slow path: a thread that frees its memory and then waits would otherwise keep
/// it until it next allocates. At most one thread scans per `PURGE_DELAY_MS`; a heap whose owner
/// is in a slow path (holding `slow`) is skipped. The passes are the owner's own (`purge` with
/// `all` false), so an idle heap's empty pages go back within about four periods of its last
/// free, given slow paths on any other thread. Each pass first takes back into their pages the
/// blocks other threads sent the heap.
///
/// An owner that runs no slow path (waiting, or allocating only from its bins) does not take the
/// blocks other threads free into its heap either: they wait in its remote list, holding their
/// pages. A list whose head has not moved between two scans has not been taken for a period; the
/// scan takes it back into the pages, which arms the heap's timed purge like any free that empties
/// a page, and the scans after that purge it while the owner stays away.
///
/// Orphaned heaps (their thread exited) have no owner at all: blocks that other threads free into
/// them (a producer thread that exited, its consumer freeing what it made) wait in their remote
/// list, holding their pages, until a new thread adopts the heap. The scan takes them back and
/// purges the heap with the same timed pass: pages that emptied are released unless a thread
/// adopted the heap and used them since its last pass (the exit's full purge was one).
#[cold]
#[inline(never)]
fn purge_idle_heaps(me: &Heap) {
    let now = os::now_ms();
    let next = NEXT_IDLE_SCAN.load(Ordering::Relaxed);
    if now < next
        || NEXT_IDLE_SCAN
            .compare_exchange(
                next,
                now + PURGE_DELAY_MS,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return;
    }
    let Some(_scan) = IDLE_SCAN.try_lock() else {
        return;
    };
    let overdue = |h: &Heap| {
        let deadline = h.purge_deadline.load(Ordering::Relaxed);
        if h.thread_owned.load(Ordering::Relaxed) {
            deadline != 0 && now >= deadline + PURGE_DELAY_MS
        } else {
            // The fallback heap, orphans, and a heap whose thread is in its exit destructor
            // (which waits for `slow` in `trim_heap`).
            !h.remote.is_empty() || (deadline != 0 && now >= deadline)
        }
    };
    // Blocks sent back that nobody took for a whole period (see above).
    let stale_remote = |h: &Heap| {
        let head = h.remote.head();
        !head.is_null() && h.remote_seen.swap(head, Ordering::Relaxed) == head
    };
    // The list is walked without the registry lock (see `heaps_from`).
    let first = REGISTRY.lock().all;
    for heap in heaps_from(first) {
        if ptr::eq(heap, me) {
            continue;
        }
        let stale = stale_remote(heap);
        if !stale && !overdue(heap) {
            continue;
        }
        if let Some(_slow) = heap.slow.try_lock() {
            if stale {
                drain_remote(heap, false);
            }
            // Checked again under the lock: the owner may have purged it meanwhile.
            if overdue(heap) {
                drain_remote(heap, false);
                purge(heap, false);
                // Nothing left to purge: if `purge` re-armed the heap, it was only to bring the
                // arena's purge along, which `me`, a running thread, does instead.
                if heap.dirty_bytes.get() == 0
                    && heap.purge_deadline.swap(0, Ordering::Relaxed) != 0
                {
                    arm_purge(me);
                }
                #[cfg(test)]
                heap.foreign_purges.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large blocks.

/// `heap` is `current()`.
#[cold]
#[inline(never)]
fn alloc_large(size: usize, align: usize, zero: bool, heap: &Heap) -> *mut u8 {
    if !heap.is_live() {
        return match thread_heap(heap) {
            Some(h) => alloc_large_in(h, size, align, zero),
            None => with_fallback(|h| alloc_large_in(h, size, align, zero)),
        };
    }
    alloc_large_in(heap, size, align, zero)
}

fn alloc_large_in(heap: &Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    // Sizes that cannot be mapped fail before they are counted (and cannot overflow the counters).
    if !large::is_mappable(size, align) || !heap.counters.admits(size) {
        return ptr::null_mut();
    }
    let taken = {
        let _slow = lock_slow(heap);
        large::alloc(&heap.large, size, align, zero)
    };
    let Some((p, len)) = taken else {
        heap.counters.withdraw(); // admitted, but no memory
        return ptr::null_mut();
    };
    count_large_alloc(heap, size, len);
    p
}

/// Counts a large block of `size` bytes, occupying `len`, handed out by `heap`.
fn count_large_alloc(heap: &Heap, size: usize, len: usize) {
    let c = &heap.counters;
    c.alloc_slow(size);
    if cfg!(feature = "stats") {
        c.large_allocs.add(1);
        ThreadCounters::bump(&c.large_live, size as i64);
        ThreadCounters::bump(&c.large_active, len as i64);
    }
}

/// Counts a large block resized where it is, from `(size, len)` `old` to `new` (requested bytes
/// and bytes occupied).
fn count_large_resized(heap: &Heap, old: (usize, usize), new: (usize, usize)) {
    let c = &heap.counters;
    c.realloc(old.0, new.0);
    if cfg!(feature = "stats") {
        ThreadCounters::bump(&c.large_active, new.1 as i64 - old.1 as i64);
        ThreadCounters::bump(&c.large_live, new.0 as i64 - old.0 as i64);
    }
}

/// # Safety
/// As for `free`, and `heap` is `current()`.
#[cold]
#[inline(never)]
unsafe fn free_large(p: *mut u8, size: usize, heap: &Heap) {
    if !heap.is_live() {
        match thread_heap(heap) {
            // SAFETY: forwarded caller promise.
            Some(h) => unsafe { free_large_in(h, p, size) },
            // SAFETY: forwarded caller promise.
            None => with_fallback(|h| unsafe { free_large_in(h, p, size) }),
        }
        return;
    }
    // SAFETY: forwarded caller promise.
    unsafe { free_large_in(heap, p, size) }
}

unsafe fn free_large_in(heap: &Heap, p: *mut u8, size: usize) {
    heap.counters.free_slow(size);
    let _slow = lock_slow(heap);
    // SAFETY: forwarded caller promise.
    let len = unsafe { large::free(&heap.large, p, size) };
    if cfg!(feature = "stats") {
        let c = &heap.counters;
        c.large_frees.add(1);
        ThreadCounters::bump(&c.large_live, -(size as i64));
        ThreadCounters::bump(&c.large_active, -(len as i64));
    }
    arm_purge(heap);
    maybe_purge(heap);
}

// ---------------------------------------------------------------------------------------------
// Thread lifecycle and the registry of heaps.

/// Every heap ever made (`all`, linked by `next_all`), the orphans among them, the number owned by
/// live threads, the metadata arena heaps are carved from, and the totals of exited threads.
struct Registry {
    all: *mut Heap,
    /// Where `reclaim_ended` looks next (null: at `all`).
    scan: *mut Heap,
    orphans: *mut Heap,
    live: usize,
    arena: usize,
    arena_end: usize,
    exited: Totals,
}

// SAFETY: only addresses of heaps (which live forever) are stored; access is under the lock.
unsafe impl Send for Registry {}

impl Registry {
    /// Every heap ever made, live or orphaned.
    fn heaps(&self) -> impl Iterator<Item = &'static Heap> {
        heaps_from(self.all)
    }
}

/// The registered heaps from `first` (a value `Registry::all` had) to the oldest. Needs no lock:
/// a heap's `next_all` is written once, before the heap becomes the head under the registry lock,
/// and a caller that read that head under the lock sees it.
fn heaps_from(first: *mut Heap) -> impl Iterator<Item = &'static Heap> {
    let mut h = first;
    core::iter::from_fn(move || {
        // SAFETY: registered heaps live forever; `next_all` as above.
        let heap = unsafe { h.as_ref() }?;
        h = heap.next_all.get();
        Some(heap)
    })
}

static REGISTRY: SpinLock<Registry> = SpinLock::new(Registry {
    all: ptr::null_mut(),
    scan: ptr::null_mut(),
    orphans: ptr::null_mut(),
    live: 0,
    arena: 0,
    arena_end: 0,
    exited: Totals::ZERO,
});

/// The heap for threads past their exit destructor (made on first use), used under its lock.
static FALLBACK: SpinLock<FallbackHeap> = SpinLock::new(FallbackHeap(ptr::null_mut()));

struct FallbackHeap(*mut Heap);

// SAFETY: the pointer is to a heap that lives forever; the lock serialises its users.
unsafe impl Send for FallbackHeap {}

/// The thread-exit key and the fork handlers, set up once, by the first thread that needs a heap
/// (`ForkSafeOnce`: a child forked in the middle finishes the setup instead of waiting forever).
static KEY_SETUP: ForkSafeOnce = ForkSafeOnce::new();
/// The steps of that setup done so far, so that a forked child that finishes it does neither twice.
const KEY_NONE: u8 = 0;
const KEY_MADE: u8 = 1;
const KEY_FAILED: u8 = 2;
static KEY_CREATED: AtomicU8 = AtomicU8::new(KEY_NONE);
/// Set after `pthread_atfork` returns, and by `fork_prepare` (which runs only once registered):
/// a child forked between the two still knows its handlers are in place.
static HANDLERS_SET: AtomicBool = AtomicBool::new(false);
static mut KEY: libc::pthread_key_t = 0;

/// Adds every heap's counters and the exited threads' totals to `t`, under the registry lock, and
/// returns the number of live threads. Exiting threads fold their counters into the exited totals
/// under the same lock, so every thread is counted exactly once.
pub fn sum_heaps(t: &mut Totals) -> usize {
    let reg = REGISTRY.lock();
    for heap in reg.heaps() {
        heap.add_to(t);
    }
    t.add_totals(&reg.exited);
    reg.live
}

/// The calling thread's heap, if it has one (for per-thread statistics).
pub fn current_live() -> Option<&'static Heap> {
    let heap = current();
    if heap.is_live() {
        return Some(heap);
    }
    thread_heap(heap)
}

/// Purges the calling thread's heap and the shared arena now (see `perfalloc::trim`).
pub fn trim_current() {
    trim_heap();
    extent::purge_now();
}

/// Purges the calling thread's heap now: its bins emptied, the blocks sent back taken, and every
/// empty page and segment released. The shared arena keeps its timed purge: a thread that exits
/// has no reason to release what the other threads freed a moment ago and may reuse.
fn trim_heap() {
    if let Some(heap) = current_live() {
        let _slow = lock_slow(heap);
        drain_remote(heap, false);
        for class in 0..CLASSES {
            flush(heap, class, 0);
        }
        drain_remote(heap, false);
        purge(heap, true);
    }
}

/// Gives the calling thread a live heap if it can have one: adopts or creates one for a thread
/// that has none yet. `None` for a thread past its exit destructor, or if no memory is left.
#[cold]
fn thread_heap(current: &Heap) -> Option<&'static Heap> {
    if current.state.get() == STATE_DEAD || !ensure_key() {
        return None;
    }
    let heap = adopt_heap(true)?;
    // SAFETY: adopted heaps live forever.
    unsafe { (*heap).thread_owned.store(true, Ordering::Relaxed) };
    CURRENT.with(|c| c.set(heap));
    // SAFETY: KEY was created (ensure_key); the value is only read back by our destructor.
    unsafe { libc::pthread_setspecific(KEY, heap.cast()) };
    // SAFETY: adopted heaps live forever.
    Some(unsafe { &*heap })
}

/// Adopts an orphaned heap or makes a new one. `thread` says whether a thread will own it (and
/// count in `Stats::threads`); the fallback heap is owned by whoever holds its lock.
fn adopt_heap(thread: bool) -> Option<*mut Heap> {
    let ids = if thread { os::thread_ids() } else { (0, 0) };
    let mut reg = REGISTRY.lock();
    if thread && reg.orphans.is_null() {
        reclaim_ended(&mut reg, ids.0, RECLAIM_CHECKS);
    }
    let heap = if !reg.orphans.is_null() {
        let h = reg.orphans;
        // SAFETY: orphans are registered heaps, which live forever.
        reg.orphans = unsafe { (*h).next_orphan.get() };
        h
    } else {
        new_heap(&mut reg)?
    };
    reg.live += usize::from(thread);
    // SAFETY: the heap is on no list and owned by nobody else: the calling thread (or the holder of
    // the fallback lock) is its only user from here on.
    unsafe {
        (*heap).state.set(STATE_LIVE);
        (*heap).next_orphan.set(ptr::null_mut());
        (*heap).owner.set(ids);
    }
    Some(heap)
}

/// Heaps `adopt_heap` looks at for an ended owner before it makes a new heap.
const RECLAIM_CHECKS: usize = 4;

/// Looks at up to `n` heaps, from where the last look stopped, and orphans those whose owning
/// thread, of process `pid`, has ended without its exit destructor having run. glibc runs key
/// destructors in at most four rounds and never runs the destructor of a key set during the last
/// one: a thread whose first allocation comes from a destructor in that round adopts a heap that
/// nothing would hand back. A heap whose `slow` lock is held (a foreign purge) waits for a later
/// look. A heap adopted in another process (a child made without `fork`'s handlers) is never
/// taken: its owner's id means nothing here.
fn reclaim_ended(reg: &mut Registry, pid: i32, n: usize) {
    for _ in 0..n {
        let h = if reg.scan.is_null() {
            reg.all
        } else {
            reg.scan
        };
        // SAFETY: registered heaps live forever.
        let Some(heap) = (unsafe { h.as_ref() }) else {
            return;
        };
        reg.scan = heap.next_all.get();
        let (owner_pid, tid) = heap.owner.get();
        let ended = heap.thread_owned.load(Ordering::Relaxed)
            && owner_pid == pid
            && os::thread_ended(pid, tid);
        if ended {
            if let Some(_slow) = heap.slow.try_lock() {
                // SAFETY: its thread ended (the kernel has no such thread; a reused id reads as
                // alive), so nothing uses the heap; `thread_owned` means it was adopted for a
                // thread and counted in `live`. The thread's last writes are ours to read because
                // its exit and our `tgkill` both pass through the kernel, which orders them (the
                // Rust memory model has no edge for this); `slow` held keeps foreign purges out.
                unsafe { orphan(reg, h) };
            }
        }
    }
}

/// Hands back the heap of a thread that is gone or going (under the registry lock): its counters
/// fold into the exited threads' totals and it joins the orphans. Blocks left in its bins stay
/// there for the next owner.
///
/// # Safety
/// `heap_ptr` is a registered, live heap adopted for a thread (counted in `reg.live`), and no
/// thread uses it now or will again but through the orphan list.
unsafe fn orphan(reg: &mut Registry, heap_ptr: *mut Heap) {
    // SAFETY: registered heaps live forever; the owner-only fields are ours (caller promise).
    let heap = unsafe { &*heap_ptr };
    heap.thread_owned.store(false, Ordering::Relaxed);
    heap.state.set(STATE_DEAD);
    heap.counters
        .fold_into(&mut reg.exited, heap.class_counters());
    heap.next_orphan.set(reg.orphans);
    reg.orphans = heap_ptr;
    reg.live -= 1;
}

/// Carves a new heap and its bins' slots from the metadata arena and registers it.
fn new_heap(reg: &mut Registry) -> Option<*mut Heap> {
    let heap_size = core::mem::size_of::<Heap>().next_multiple_of(128);
    let size = heap_size + (SLOTS * core::mem::size_of::<*mut Block>()).next_multiple_of(128);
    if reg.arena + size > reg.arena_end {
        let chunk = size.max(256 * 1024).next_multiple_of(os::PAGE_SIZE);
        let p = os::map_aligned(chunk, os::PAGE_SIZE)?.as_ptr() as usize;
        reg.arena = p;
        reg.arena_end = p + chunk;
    }
    let h = reg.arena as *mut Heap;
    reg.arena += size;
    // SAFETY: `h` is fresh, suitably aligned (128) metadata memory of at least `size` bytes,
    // the heap and then room for `SLOTS` pointers.
    unsafe {
        h.write(Heap::new(STATE_LIVE));
        (*h).next_all.set(reg.all);
        (*h).set_bins(h.cast::<u8>().add(heap_size).cast());
    }
    reg.all = h;
    Some(h)
}

/// Runs at thread exit (pthread key destructor): hands the heap back for reuse.
unsafe extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let heap_ptr = value as *mut Heap;
    // SAFETY: the value is the heap this thread adopted in `thread_heap`.
    let heap = unsafe { &*heap_ptr };
    heap.thread_owned.store(false, Ordering::Relaxed);
    trim_heap();
    CURRENT.with(|c| c.set(&DEAD));
    // SAFETY: this thread's heap, adopted by `thread_heap`; the thread uses DEAD from here on.
    unsafe { orphan(&mut REGISTRY.lock(), heap_ptr) };
}

/// Creates the thread-exit key and registers the fork handlers if no thread of this process has;
/// whether the key exists.
fn ensure_key() -> bool {
    KEY_SETUP.run(os::process_id, || {
        if KEY_CREATED.load(Ordering::Acquire) == KEY_NONE {
            // SAFETY: runs once per process (guarded by KEY_SETUP and KEY_CREATED); KEY is written
            // before KEY_SETUP publishes the setup done (Release) and read only after a caller
            // sees it done (Acquire).
            let made = unsafe {
                libc::pthread_key_create(ptr::addr_of_mut!(KEY), Some(on_thread_exit)) == 0
            };
            let created = if made { KEY_MADE } else { KEY_FAILED };
            KEY_CREATED.store(created, Ordering::Release);
        }
        if !HANDLERS_SET.load(Ordering::Acquire) {
            // Parent and child release what `fork_prepare` took; the child also closes counter
            // updates that threads it lacks were making.
            // SAFETY: the handlers are `extern "C"` functions that live forever.
            unsafe {
                libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child))
            };
            HANDLERS_SET.store(true, Ordering::Release);
        }
        KEY_CREATED.load(Ordering::Acquire) == KEY_MADE
    })
}

/// Runs `f` on the shared fallback heap under its lock; null-like default if none can be made.
fn with_fallback<R: Default>(f: impl FnOnce(&Heap) -> R) -> R {
    let mut fallback = FALLBACK.lock();
    if fallback.0.is_null() {
        match adopt_heap(false) {
            Some(h) => fallback.0 = h,
            None => return R::default(),
        }
    }
    // The counters of this heap are written by one thread after another: a reader that sees this
    // thread's counts must also see what earlier holders wrote before them (a move's
    // `realloc_moves` before its allocation's count: see `begin_move`). The lock orders the
    // holders; this fence carries that order to readers, which pair it with their acquire fence.
    fence(Ordering::Release);
    // SAFETY: heaps live forever; holding the lock makes us the heap's only user.
    f(unsafe { &*fallback.0 })
}

extern "C" fn fork_prepare() {
    HANDLERS_SET.store(true, Ordering::Relaxed);
    IDLE_SCAN.raw_lock();
    FALLBACK.raw_lock();
    REGISTRY.raw_lock();
    segment::lock_for_fork();
    extent::lock_for_fork();
}

extern "C" fn fork_child() {
    fork_parent();
    let me = current();
    let fallback = FALLBACK.lock();
    let mut reg = REGISTRY.lock();
    if me.is_live() {
        // The forking thread, the only one here, has new ids.
        me.owner.set(os::thread_ids());
    }
    // Requests the limit admitted on threads that do not exist here will never be published.
    ThreadCounters::clear_admitted();
    for heap in heaps_from(reg.all) {
        // A thread that was inside a counters update at the fork does not exist here to finish it.
        heap.counters.after_fork();
        // Nor do the other threads: every live heap but ours and the fallback heap goes back for
        // reuse (including one whose thread was adopting it or inside its exit destructor), but
        // for one whose `slow` lock was held at the fork: its pages may be half updated, so it
        // stays out of use. Its owner may have been inside a bin's push or pop, so its bins are
        // emptied; their blocks stay counted as used by their pages, a leak in the child only.
        let mine = ptr::eq(heap, me) || ptr::eq(heap, fallback.0);
        if heap.is_live() && !mine {
            if let Some(_slow) = heap.slow.try_lock() {
                heap.empty_bins();
                // SAFETY: a live heap other than the fallback one was adopted for a thread and
                // counted in `live`; its thread does not exist in the child.
                unsafe { orphan(&mut reg, ptr::from_ref(heap).cast_mut()) };
            }
        }
    }
}

extern "C" fn fork_parent() {
    extent::unlock_after_fork();
    segment::unlock_after_fork();
    // SAFETY: taken by `fork_prepare` on this thread.
    unsafe {
        REGISTRY.raw_unlock();
        FALLBACK.raw_unlock();
        IDLE_SCAN.raw_unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of `heap`'s pages of `class` that are neither free in a page nor in its bin: those
    /// the program holds, or that sit in another heap's bin or remote list.
    fn held(heap: &Heap, class: usize) -> i64 {
        let mut used = 0i64;
        for kind in 0..2 {
            let mut seg = heap.segments[kind].get();
            while !seg.is_null() {
                // SAFETY: the heap's segments are live; the test owns the heap.
                unsafe {
                    for idx in 0..(*seg).page_count as usize {
                        let page = &(*seg).pages[idx];
                        if page.class as usize == class {
                            used += page.used as i64;
                        }
                    }
                    seg = (*seg).next;
                }
            }
        }
        used - heap.bin_len(class) as i64
    }

    /// A new heap (never an orphan, which may hold segments of its own), for a test to own. It is
    /// no thread's heap, so a test drives it on its own thread through `alloc_small`, `free_small`,
    /// `flush` and `purge` without spawning one.
    fn fresh_heap() -> &'static Heap {
        let heap = new_heap(&mut REGISTRY.lock()).expect("a heap");
        // SAFETY: heaps live forever; this one is registered but on no list a thread adopts from,
        // so the test is its only user.
        unsafe { &*heap }
    }

    /// Blocks of a heap freed on another heap travel back as messages (a carrier block holding the
    /// addresses of the others) and all come back: for 8-byte blocks, which cannot carry, 16-byte
    /// ones, which carry one, larger ones and medium ones. A refill's drain puts them into the bin
    /// until it is full and the rest into their pages; a trim's drain puts all into pages.
    #[test]
    fn blocks_freed_on_another_heap_come_back_to_their_heap() {
        std::thread::spawn(|| {
            let here = current_live().expect("a heap");
            // A second heap, owned by nobody else: this thread plays its owner.
            // SAFETY: a live heap from the registry, used only by this test from here on.
            let there = unsafe { &*adopt_heap(false).expect("a heap") };
            for size in [8, 16, 24, 48, 512, 4096, 20_000] {
                for to_bins in [false, true] {
                    let class = size_class::class_of(size, 8).unwrap();
                    let before = held(there, class);
                    let n = 3 * bin_limit(class) + 7;
                    let blocks: Vec<*mut u8> =
                        (0..n).map(|_| alloc_small(there, class, size)).collect();
                    assert!(blocks.iter().all(|p| !p.is_null()));
                    assert_eq!(held(there, class), before + n as i64, "size {size}");
                    for &p in &blocks {
                        // SAFETY: allocated above with this size; freed once, on this thread's heap.
                        unsafe { free_small(here, p.cast(), class, size) };
                    }
                    {
                        // `here` is this thread's own heap: others may purge it when idle.
                        let _slow = lock_slow(here);
                        flush(here, class, 0);
                    }
                    flush(there, class, 0);
                    assert!(!there.remote.is_empty(), "size {size}: nothing was sent");
                    drain_remote(there, to_bins);
                    assert_eq!(
                        held(there, class),
                        before,
                        "size {size}, to bins {to_bins}: blocks did not come back"
                    );
                    let in_bin = if to_bins { bin_limit(class) } else { 0 };
                    assert_eq!(
                        there.bin_len(class),
                        in_bin,
                        "size {size}, to bins {to_bins}"
                    );
                }
            }
        })
        .join()
        .unwrap();
    }

    /// A timed purge pass releases an empty page only if nothing was taken from it since the
    /// previous pass: pages a program empties and refills stay resident, idle ones go.
    #[test]
    fn timed_purges_release_idle_pages_and_keep_pages_in_reuse() {
        let heap = fresh_heap();
        let (size, class) = (24, size_class::class_of(24, 8).unwrap());
        // A block of another class keeps the segment in use, so its records stay mapped.
        let keep = alloc_small(heap, size_class::class_of(8, 8).unwrap(), 8);
        let pages_of = |blocks: &[*mut u8]| {
            // SAFETY: the blocks are live blocks of this heap's pages.
            let mut v: Vec<*mut Page> = blocks
                .iter()
                .map(|&b| unsafe { segment::page_of(b) })
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let cycle = |n: usize| {
            let blocks: Vec<*mut u8> = (0..n).map(|_| alloc_small(heap, class, size)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            let pages = pages_of(&blocks);
            for &p in &blocks {
                // SAFETY: allocated above with this size; freed once.
                unsafe { free_small(heap, p.cast(), class, size) };
            }
            flush(heap, class, 0);
            pages
        };
        // SAFETY: page records of a segment in use (held by `keep`) stay mapped.
        let class_of_page = |p: *mut Page| unsafe { (*p).class };
        let all = cycle(4 * (64 * 1024 / 24));
        assert!(all.len() >= 3, "{} pages", all.len());
        purge(heap, false);
        assert!(
            all.iter().all(|&p| class_of_page(p) == class as u8),
            "released at once"
        );
        // The kept pages stay counted as dirty, and a next pass is due.
        assert_eq!(heap.dirty_bytes.get(), all.len() << SMALL_PAGE_SHIFT);
        assert_ne!(heap.purge_deadline.load(Ordering::Relaxed), 0);
        let reused = cycle(1);
        assert_eq!(reused.len(), 1);
        purge(heap, false);
        for &p in &all {
            let kept = class_of_page(p) == class as u8;
            assert_eq!(kept, reused.contains(&p), "page {p:?}: kept {kept}");
        }
        assert_eq!(heap.dirty_bytes.get(), 1 << SMALL_PAGE_SHIFT);
        // Left alone since, the reused page goes at the next pass, and nothing is left to do.
        purge(heap, false);
        assert_eq!(class_of_page(reused[0]), NO_CLASS);
        assert_eq!(heap.dirty_bytes.get(), 0);
        // Re-armed only to bring along a purge of the arena, where tests running beside this one
        // free large blocks (a thread's exit leaves the arena to its timed purges).
        assert!(
            heap.purge_deadline.load(Ordering::Relaxed) == 0 || extent::purge_scheduled(),
            "re-armed with nothing to purge"
        );
        // SAFETY: allocated above with this size.
        unsafe { free_small(heap, keep.cast(), size_class::class_of(8, 8).unwrap(), 8) };
    }

    /// A timed pass purges the free blocks of a medium page in use only once they have stayed
    /// free for a whole period: blocks freed since the previous pass wait for the next.
    #[test]
    fn timed_purges_purge_medium_blocks_free_for_a_whole_period() {
        let heap = fresh_heap();
        let size = 20_000;
        let class = size_class::class_of(size, 8).unwrap();
        let bs = size_class::block_size(class);
        let cycle = |n: usize| {
            let blocks: Vec<*mut u8> = (0..n).map(|_| alloc_small(heap, class, size)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            for &p in &blocks {
                // SAFETY: allocated above with this size; freed once.
                unsafe { free_small(heap, p.cast(), class, size) };
            }
            flush(heap, class, 0);
        };
        // One live block keeps the page in use, so it is never released whole.
        let keep = alloc_small(heap, class, size);
        cycle(7);
        let freed = heap.dirty_bytes.get();
        assert!(freed >= 7 * bs, "{freed} dirty bytes");
        purge(heap, false);
        assert_eq!(
            heap.dirty_bytes.get(),
            freed,
            "purged blocks freed just now"
        );
        purge(heap, false);
        assert_eq!(
            heap.dirty_bytes.get(),
            0,
            "kept blocks free for a whole period"
        );
        // Reused and freed again: dirty once more, and purged only at the second pass.
        cycle(1);
        let again = heap.dirty_bytes.get();
        assert!(again > 0);
        purge(heap, false);
        assert_eq!(heap.dirty_bytes.get(), again);
        purge(heap, false);
        assert_eq!(heap.dirty_bytes.get(), 0);
        // SAFETY: allocated above with this size.
        unsafe { free_small(heap, keep.cast(), class, size) };
    }

    /// The `VmFlags` of the mapping holding `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.to_string());
                }
            }
        }
        None
    }

    /// A heap's first segment of small pages is kept off huge pages (a thread that allocates
    /// little stays small); its later ones are advised onto them.
    #[test]
    fn only_a_heaps_later_small_segments_get_huge_pages() {
        // Whether this kernel takes the advice at all (THP built in), on a scratch mapping.
        let scratch = os::map_aligned(1 << 21, 1 << 21).expect("a mapping");
        // SAFETY: mapped just above, unused.
        let supported = unsafe { os::advise_huge_pages(scratch.as_ptr(), 1 << 21, true) };
        // SAFETY: as above; nobody uses it.
        unsafe { os::unmap(scratch, 1 << 21) };
        if !supported {
            eprintln!("this kernel has no transparent huge pages: nothing to check");
            return;
        }
        let heap = fresh_heap();
        let (size, class) = (1024, size_class::class_of(1024, 8).unwrap());
        // 6 MiB of blocks: more than one 4 MiB segment.
        let blocks: Vec<*mut u8> = (0..6 * 1024)
            .map(|_| alloc_small(heap, class, size))
            .collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        let mut segs: Vec<usize> = blocks
            .iter()
            .map(|&b| segment::segment_of(b) as usize)
            .collect();
        segs.sort();
        segs.dedup();
        assert!(segs.len() >= 2, "{} segments", segs.len());
        let flags: Vec<String> = segs
            .iter()
            .map(|&s| vm_flags(s).expect("a mapping"))
            .collect();
        let huge = flags.iter().filter(|f| f.contains(" hg")).count();
        let off = flags.iter().filter(|f| f.contains(" nh")).count();
        assert_eq!((huge, off), (segs.len() - 1, 1), "{flags:?}");
        for &p in &blocks {
            // SAFETY: allocated above with this size; freed once.
            unsafe { free_small(heap, p.cast(), class, size) };
        }
    }

    /// Emptying a page adds its size to the dirty bytes and reusing it takes the same amount off,
    /// so filling and emptying the same pages over and over must not make the total creep up
    /// (when it did, the heap purged and re-faulted memory in constant use).
    #[test]
    fn dirty_bytes_do_not_creep_under_steady_reuse() {
        std::thread::spawn(|| {
            const N: usize = 20_000;
            let mut ptrs = Vec::with_capacity(N); // a large block: not on the pages measured
            let mut dirty_after_free = Vec::new();
            for _ in 0..10 {
                ptrs.extend((0..N).map(|_| alloc(24, 8)));
                assert!(ptrs.iter().all(|p| !p.is_null()));
                for p in ptrs.drain(..) {
                    // SAFETY: allocated just above with this size and alignment.
                    unsafe { free(p, 24, 8) };
                }
                let dirty = {
                    // Others may purge this heap when it is idle. Nothing may allocate under the
                    // lock: the allocation's slow path would take it again.
                    let _slow = lock_slow(current());
                    current().dirty_bytes.get()
                };
                dirty_after_free.push(dirty);
            }
            // N blocks of 24 B fill 8 pages of 64 KiB; the dirty total may cover those pages
            // (and a few more, for blocks that other tests' threads left in this heap).
            let bound = 12 << SMALL_PAGE_SHIFT;
            assert!(
                dirty_after_free.iter().all(|&d| d <= bound),
                "dirty bytes crept up over the cycles: {dirty_after_free:?}"
            );
        })
        .join()
        .unwrap();
    }

    /// Threads that sleep past their purge while holding blocks, their heaps purged meanwhile by
    /// the threads that keep working, then wake and go on: every block keeps its contents, and
    /// foreign purges did happen.
    #[test]
    fn heaps_purged_by_other_threads_while_idle_keep_their_blocks() {
        let purged = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let purged = purged.clone();
                std::thread::spawn(move || {
                    let mut rng = t * 7919 + 1;
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
                    let heap = current_live().expect("a heap");
                    let before = heap.foreign_purges.load(Ordering::Relaxed);
                    for round in 0..4u64 {
                        for i in 0..1500 {
                            // Mostly small blocks; one in ten medium, whose frees are dirty at once.
                            let size = if i % 10 == 0 {
                                10_000 + (next() % 30_000) as usize
                            } else {
                                1 + (next() % 2048) as usize
                            };
                            let p = alloc(size, 8);
                            assert!(!p.is_null());
                            let tag = next() as u8;
                            // SAFETY: a fresh block of `size` bytes.
                            unsafe { ptr::write_bytes(p, tag, size) };
                            live.push((p, size, tag));
                        }
                        live.retain(|&(p, size, tag)| {
                            // SAFETY: a live block of `size` bytes, written with `tag`.
                            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
                            assert!(bytes.iter().all(|&b| b == tag), "block {p:?} changed");
                            if next() % 10 == 0 {
                                return true;
                            }
                            // SAFETY: allocated above with this size; freed once.
                            unsafe { free(p, size, 8) };
                            false
                        });
                        if (t + round) % 2 == 0 {
                            // Idle past the purge and a whole period more: others purge for us.
                            std::thread::sleep(std::time::Duration::from_millis(
                                3 * PURGE_DELAY_MS,
                            ));
                        } else {
                            // Busy: slow paths, which scan for idle heaps.
                            let until = os::now_ms() + 3 * PURGE_DELAY_MS;
                            while os::now_ms() < until {
                                let batch: Vec<*mut u8> = (0..600).map(|_| alloc(48, 8)).collect();
                                for p in batch {
                                    // SAFETY: allocated just above with this size.
                                    unsafe { free(p, 48, 8) };
                                }
                            }
                        }
                    }
                    for (p, size, tag) in live {
                        // SAFETY: as above.
                        let bytes = unsafe { core::slice::from_raw_parts(p, size) };
                        assert!(bytes.iter().all(|&b| b == tag), "block {p:?} changed");
                        // SAFETY: allocated above with this size; freed once.
                        unsafe { free(p, size, 8) };
                    }
                    let after = heap.foreign_purges.load(Ordering::Relaxed);
                    purged.fetch_add(after - before, Ordering::Relaxed);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            purged.load(Ordering::Relaxed) > 0,
            "none of this test's heaps was purged by another thread"
        );
    }

    /// An allocation while the owner holds its heap's `slow` lock (a panic inside a slow path
    /// would make one) aborts with a message instead of waiting for the lock forever.
    #[test]
    fn an_allocation_under_the_owners_slow_lock_aborts_instead_of_hanging() {
        // SAFETY: the child only allocates and exits; the parent waits for it.
        unsafe {
            let mut fds = [0; 2];
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                // No core file for the expected abort; its message goes to the parent.
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::dup2(fds[1], 2);
                let heap = current_live().expect("a heap");
                let _slow = lock_slow(heap);
                // More blocks than a bin holds: one of them takes the slow path.
                for _ in 0..1000 {
                    alloc(100_000, 8);
                }
                libc::_exit(0);
            }
            // A child that waits for the lock forever is killed and reported, not waited for.
            let mut status = 0;
            let start = std::time::Instant::now();
            while libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
                if start.elapsed() > std::time::Duration::from_secs(10) {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                    panic!("the child still waited for the lock after 10 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            libc::close(fds[1]);
            let mut buf = [0u8; 256];
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            libc::close(fds[0]);
            let said = String::from_utf8_lossy(&buf[..n.max(0) as usize]);
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
                "the child did not abort: status {status:#x}, stderr {said:?}"
            );
            assert!(
                said.contains("allocation inside the allocator's own slow path"),
                "the child aborted for another reason: {said:?}"
            );
        }
    }

    /// An owner whose slow path finds its `slow` lock held by another thread (a purge of its
    /// heap) waits until that thread lets go, instead of working on its pages beside it.
    #[test]
    fn an_owner_waits_for_a_foreign_purge_of_its_heap() {
        let (heap_tx, heap_rx) = std::sync::mpsc::channel::<usize>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let owner = std::thread::spawn(move || {
            heap_tx
                .send(current_live().expect("a heap") as *const Heap as usize)
                .unwrap();
            go_rx.recv().unwrap();
            // More blocks than the bin of this class holds (2): a refill, under `slow`.
            let blocks: Vec<*mut u8> = (0..4).map(|_| alloc(100_000, 8)).collect();
            let done = std::time::Instant::now();
            for p in blocks {
                assert!(!p.is_null());
                // SAFETY: allocated just above with this size.
                unsafe { free(p, 100_000, 8) };
            }
            done
        });
        // SAFETY: heaps live forever.
        let heap = unsafe { &*(heap_rx.recv().unwrap() as *const Heap) };
        // The owner waits on the channel, outside any slow path; another test's scan may be
        // purging its heap (an adopted orphan may come with a purge due) for a moment.
        let purge = loop {
            if let Some(g) = heap.slow.try_lock() {
                break g;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        go_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let released = std::time::Instant::now();
        drop(purge);
        let done = owner.join().unwrap();
        assert!(
            done >= released,
            "the owner refilled its bin while another thread held its heap's lock"
        );
    }

    fn fill(p: *mut u8, len: usize, seed: u8) {
        // SAFETY: the callers' blocks hold at least `len` bytes.
        unsafe { (0..len).for_each(|i| *p.add(i) = seed ^ (i % 251) as u8) };
    }

    fn holds(p: *mut u8, len: usize, seed: u8) -> bool {
        // SAFETY: as in `fill`.
        unsafe { (0..len).all(|i| *p.add(i) == seed ^ (i % 251) as u8) }
    }

    /// When the arena has no room, a block that grows to `GROWN_MIN` or more moves to its size
    /// class instead (never to a mapping of its own, which a free could not tell from a small
    /// block) and is freed as one; a grown block that cannot grow in place moves out the same way.
    #[test]
    fn growth_falls_back_to_a_size_class_when_the_arena_has_no_room() {
        std::thread::spawn(|| {
            let (small, grown, more) = (48 << 10, 100 << 10, 120 << 10);
            let class = size_class::class_of(grown, 8).unwrap();
            // SAFETY: every block is used within its size and freed once with it.
            unsafe {
                let heap = current_live().expect("a heap");
                let before = held(heap, class);
                extent::tests::REFUSE.set(true);
                let p = alloc(small, 8);
                fill(p, small, 1);
                let q = realloc(p, small, 8, grown);
                assert!(!q.is_null() && grown_region(q, grown).is_none());
                assert_eq!(
                    held(heap, class),
                    before + 1,
                    "moved to a block of the class"
                );
                assert!(holds(q, small, 1), "the move kept the contents");
                free(q, grown, 8);
                // Freed into its class's bin, whose top it is now.
                let r = alloc_small(current(), class, grown);
                assert_eq!(r, q, "a block of the class was freed as one");
                free(r, grown, 8);
                extent::tests::REFUSE.set(false);

                // Now in the arena, with every granule up to its end taken (first fit fills the
                // lowest holes first), so that it cannot grow in place.
                let a = realloc(alloc(small, 8), small, 8, grown);
                let region = grown_region(a, grown).expect("grown into the arena");
                fill(a, grown, 2);
                let end = a as usize + extent::len_of(grown);
                // Take granules until one past `a` in its region comes back (or none is left):
                // first fit hands out every lower free granule first, in any region.
                let mut taken = Vec::new();
                while let Some((g, _)) = extent::alloc(extent::GRANULE, false) {
                    taken.push(g);
                    if extent::region_of(g) == Some(region) && g as usize >= end {
                        break;
                    }
                }
                extent::tests::REFUSE.set(true);
                let b = realloc(a, grown, 8, more);
                extent::tests::REFUSE.set(false);
                assert!(!b.is_null() && b != a && grown_region(b, more).is_none());
                assert!(holds(b, grown, 2), "the move kept the contents");
                free(b, more, 8);
                for g in taken {
                    let r = extent::region_of(g).expect("an arena block");
                    extent::free(r, g, extent::GRANULE);
                }
            }
        })
        .join()
        .unwrap();
    }
}
