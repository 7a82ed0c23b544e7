//! The extent arena: large blocks of up to `MAX_EXTENT` bytes, carved from a few big regions.
//!
//! A block above the heap pages' range used to get a mapping of its own, and a program that
//! replaces large buffers of changing sizes then faulted in most of every new one, even with a
//! cache of freed mappings (a freed 3 MiB mapping cannot serve a 3.5 MiB request). Here every such
//! block is a run of `GRANULE`-sized granules in a region of `REGION_SIZE` bytes; freed runs
//! coalesce with their free neighbours in the region's bitmap, so the memory a freed block leaves
//! behind serves the next request of any size, and its pages are still resident: no page faults in
//! a steady state. First fit keeps the blocks packed at the low end of the lowest region, which
//! bounds how much of the arena is ever touched.
//!
//! Freed granules stay resident ("dirty") until a purge releases their pages with
//! `MADV_DONTNEED`: a timed purge every `PURGE_DELAY_MS` while anything is dirty takes the granules
//! that stayed free for a whole period (those in steady reuse stay) and unmaps regions that stayed
//! empty; one that runs at once when more than `DIRTY_BOUND` bytes are dirty takes those, then
//! the rest if still needed. Purged granules read as zero, which saves zeroing them
//! for `alloc_zeroed`.
//!
//! The arena is shared by all threads under one lock: a large request writes or at least touches
//! tens of KiB, next to which the lock is cheap, and a shared arena lets any thread reuse what any
//! other freed. Blocks carry no header: `free` is given the block's size and finds the region
//! from the address (regions are aligned to their size).

use crate::os::{self, PAGE_SIZE};
use crate::sync::SpinLock;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The unit of allocation in a region, and the alignment of every block.
pub const GRANULE: usize = 16 << 10;
/// Bytes of address space per region (reserved, not committed: pages are faulted in when used).
const REGION_SIZE: usize = 128 << 20;
const GRANULES: usize = REGION_SIZE / GRANULE;
const WORDS: usize = GRANULES / 64;
/// At most this many regions (4 GiB of large blocks); beyond, blocks get mappings of their own.
const MAX_REGIONS: usize = 32;
/// The largest block the arena serves. Larger ones are rare and big enough for a mapping each.
pub const MAX_EXTENT: usize = 16 << 20;
/// The smallest block of a size class's size that the arena holds. `realloc` puts a block that
/// grows to at least this size here, so that its next growth can be in place (a size class's
/// pages hold blocks of one size; a `Vec` growing from 32 to 256 KiB would otherwise be copied
/// three times). Invariant: a block whose size has a class (`size_class::class_of`) lives in
/// the arena exactly when it is at least `GROWN_MIN` bytes and `region_of` finds its address;
/// only `heap::realloc` puts one here, through `alloc` and `resize` (never a direct mapping).
pub const GROWN_MIN: usize = 64 << 10;
/// Words needed for the dirty bits of one block.
const RUN_WORDS: usize = MAX_EXTENT / GRANULE / 64 + 1;
/// Freed bytes kept resident before a purge regardless of their age.
const DIRTY_BOUND: usize = 64 << 20;
/// How long freed granules stay resident for reuse.
const PURGE_DELAY_MS: u64 = 200;

static_assertions::const_assert!(REGION_SIZE % (GRANULE * 64) == 0);
static_assertions::const_assert!(GRANULE % PAGE_SIZE == 0);
static_assertions::const_assert!(MAX_EXTENT <= REGION_SIZE);
// A grown block is never freed by `heap::free`'s inline path or `heap::free_aligned`'s
// 16-aligned one, which take only table sizes, without asking `region_of`.
static_assertions::const_assert!(
    GROWN_MIN % GRANULE == 0
        && GROWN_MIN <= crate::size_class::MAX_SMALL_SIZE
        && GROWN_MIN > crate::size_class::TABLE_MAX
);

/// One region's bookkeeping.
///
/// Invariants: `base == 0` for an unused slot, else `[base, base + REGION_SIZE)` is a mapping of
/// ours aligned to `REGION_SIZE`. Bit `i` of `used` is set iff granule `i` belongs to a live block;
/// bit `i` of `dirty` is clear only if the granule reads as zero (never used since it was mapped
/// or purged). Bit `i` of `stale` is set only if granule `i` is dirty and has been free since the
/// last timed purge. `used_granules` counts the set bits of `used`.
struct Region {
    base: usize,
    used: [u64; WORDS],
    dirty: [u64; WORDS],
    stale: [u64; WORDS],
    used_granules: usize,
}

/// Invariant: `dirty_free` is the size of the granules, over all regions, that are dirty and not
/// used; `regions[i].base == BASES[i]`.
struct Arena {
    regions: [Region; MAX_REGIONS],
    dirty_free: usize,
}

static ARENA: SpinLock<Arena> = SpinLock::new(Arena {
    regions: [const {
        Region {
            base: 0,
            used: [0; WORDS],
            dirty: [0; WORDS],
            stale: [0; WORDS],
            used_granules: 0,
        }
    }; MAX_REGIONS],
    dirty_free: 0,
});

/// The region bases, readable without the lock (written under it). A live block's region is never
/// unmapped, so `region_of` may read these while another thread changes other slots.
static BASES: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
/// One more than the highest slot ever given a region (it never falls): `region_of` reads no
/// slot at or above it, so a program with one region pays one load, and one with none pays none
/// (every free of a 64-128 KiB block asks). Written under the lock before the slot's base.
static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);
/// When the next purge is due (milliseconds of `os::now_ms`), or 0 if nothing is dirty.
static DEADLINE: AtomicU64 = AtomicU64::new(0);

/// Whether a block of `size` bytes aligned to `align` is served here.
#[inline]
pub fn serves(size: usize, align: usize) -> bool {
    size <= MAX_EXTENT && align <= GRANULE
}

/// The bytes a block of `size` occupies.
#[inline]
pub fn len_of(size: usize) -> usize {
    size.div_ceil(GRANULE) * GRANULE
}

/// A region of the arena, by its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId(usize);

/// The region holding `p`, a live block of any kind, if it was allocated here. A direct mapping
/// or a heap segment never lies in a region (each is a mapping of its own, and a region's slot is
/// cleared before it is unmapped), and the region of a live block is never unmapped, so the answer
/// is stable for as long as the block lives. `heap::free` asks it for blocks of a class's size of
/// `GROWN_MIN` or more. (An empty slot holds 0, which a direct mapping in the lowest
/// 128 MiB of the address space would match without the `base != 0` test.)
#[inline]
pub fn region_of(p: *mut u8) -> Option<RegionId> {
    let base = p as usize & !(REGION_SIZE - 1);
    let used = SLOTS_USED.load(Relaxed).min(MAX_REGIONS);
    BASES[..used]
        .iter()
        .position(|b| base != 0 && b.load(Relaxed) == base)
        .map(RegionId)
}

/// Allocates a block of `size` bytes (`serves(size, align)` holds), zeroed if `zero`. Returns it
/// and the bytes it occupies, or `None` if no region has room and no new one can be mapped.
pub fn alloc(size: usize, zero: bool) -> Option<(*mut u8, usize)> {
    debug_assert!(size > 0 && size <= MAX_EXTENT);
    #[cfg(test)]
    if tests::REFUSE.get() {
        return None;
    }
    let n = size.div_ceil(GRANULE);
    let (p, dirty) = {
        let mut arena = ARENA.lock();
        let (r, i) = arena
            .find(n)
            .or_else(|| arena.add_region().map(|r| (r, 0)))?;
        arena.take(r, i, n)
    };
    if zero {
        for g in 0..n {
            if dirty[g / 64] >> (g % 64) & 1 != 0 {
                let len = GRANULE.min(size - g * GRANULE);
                // SAFETY: granule `g` of the block is inside it and ours; the rest is zero already.
                unsafe { ptr::write_bytes(p.add(g * GRANULE), 0, len) };
            }
        }
    }
    maybe_purge();
    Some((p, n * GRANULE))
}

/// Frees a block; returns the bytes it occupied.
///
/// # Safety
/// `p` is a live block of `size` bytes in region `r` (from `region_of`), and nobody uses it any
/// more.
pub unsafe fn free(RegionId(r): RegionId, p: *mut u8, size: usize) -> usize {
    let n = size.div_ceil(GRANULE);
    {
        let mut arena = ARENA.lock();
        let i = (p as usize - arena.regions[r].base) / GRANULE;
        arena.release(r, i, n);
    }
    maybe_purge();
    n * GRANULE
}

/// Resizes a block in place if the granules after it are free (growing) or by freeing its tail
/// (shrinking). Returns the bytes it occupies now, or `None` (nothing changed) if it cannot grow in
/// place.
///
/// # Safety
/// `p` is a live block of `old` bytes in region `r`, owned by the caller; `new <= MAX_EXTENT`.
pub unsafe fn resize(RegionId(r): RegionId, p: *mut u8, old: usize, new: usize) -> Option<usize> {
    let (n_old, n_new) = (old.div_ceil(GRANULE), new.div_ceil(GRANULE));
    let mut arena = ARENA.lock();
    let i = (p as usize - arena.regions[r].base) / GRANULE;
    if n_new < n_old {
        arena.release(r, i + n_new, n_old - n_new);
    } else if n_new > n_old {
        let end = i + n_new;
        if end > GRANULES || next_set(|w| arena.regions[r].used[w], i + n_old) < end {
            return None;
        }
        // The new tail's contents are unspecified for `realloc`, so its dirty bits are not needed.
        let _ = arena.take(r, i + n_old, n_new - n_old);
    }
    Some(n_new * GRANULE)
}

/// Purges if a purge is due. Cheap when none is: one relaxed load. Returns whether a purge is
/// still scheduled (dirty granules are left), so that an idle heap can come back for it.
pub fn maybe_purge() -> bool {
    let due = |deadline: u64| deadline != 0 && os::now_ms() >= deadline;
    if due(DEADLINE.load(Relaxed)) {
        let mut arena = ARENA.lock();
        // Checked again under the lock: another thread may have just purged, and a second
        // timed purge right after it would release what was freed a moment ago.
        if due(DEADLINE.load(Relaxed)) {
            arena.purge(Purge::Timed);
        }
    }
    DEADLINE.load(Relaxed) != 0
}

/// Whether a timed purge is scheduled (something is dirty).
#[cfg(test)]
pub fn purge_scheduled() -> bool {
    DEADLINE.load(Relaxed) != 0
}

/// Purges now, whatever the delay (for `trim`).
pub fn purge_now() {
    ARENA.lock().purge(Purge::All);
}

pub(crate) fn lock_for_fork() {
    ARENA.raw_lock();
}

pub(crate) fn unlock_after_fork() {
    // SAFETY: called only by the fork handlers after `lock_for_fork` on the same thread.
    unsafe { ARENA.raw_unlock() };
}

impl Arena {
    /// The first free run of `n` granules: its region and first granule.
    fn find(&self, n: usize) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(r, region)| {
            if region.base == 0 || GRANULES - region.used_granules < n {
                return None;
            }
            find_run(&region.used, n).map(|i| (r, i))
        })
    }

    /// Maps a new region into a free slot; returns the slot.
    fn add_region(&mut self) -> Option<usize> {
        let r = self.regions.iter().position(|region| region.base == 0)?;
        let base = os::map_aligned(REGION_SIZE, REGION_SIZE)?.as_ptr() as usize;
        let region = &mut self.regions[r];
        region.base = base;
        region.used = [0; WORDS];
        region.dirty = [0; WORDS];
        region.stale = [0; WORDS];
        region.used_granules = 0;
        if SLOTS_USED.load(Relaxed) <= r {
            SLOTS_USED.store(r + 1, Relaxed);
        }
        BASES[r].store(base, Relaxed);
        Some(r)
    }

    /// Marks granules `[i, i + n)` of region `r` (all free) used; returns their address and what
    /// their dirty bits were (bit `g` for granule `i + g`).
    fn take(&mut self, r: usize, i: usize, n: usize) -> (*mut u8, [u64; RUN_WORDS]) {
        let region = &mut self.regions[r];
        let mut dirty = [0u64; RUN_WORDS];
        let mut was_dirty = 0;
        for g in 0..n {
            if get(&region.dirty, i + g) {
                dirty[g / 64] |= 1 << (g % 64);
                was_dirty += 1;
            }
        }
        set_range(&mut region.used, i, n, true);
        set_range(&mut region.dirty, i, n, true);
        set_range(&mut region.stale, i, n, false);
        region.used_granules += n;
        self.dirty_free -= was_dirty * GRANULE;
        ((region.base + i * GRANULE) as *mut u8, dirty)
    }

    /// Marks granules `[i, i + n)` of region `r` (all used) free; they stay dirty until the purge
    /// this schedules (or does, past `DIRTY_BOUND`).
    fn release(&mut self, r: usize, i: usize, n: usize) {
        let region = &mut self.regions[r];
        set_range(&mut region.used, i, n, false);
        region.used_granules -= n;
        self.dirty_free += n * GRANULE;
        if self.dirty_free > DIRTY_BOUND {
            self.purge(Purge::Bound);
        } else if DEADLINE.load(Relaxed) == 0 {
            DEADLINE.store(os::now_ms() + PURGE_DELAY_MS, Relaxed);
        }
    }

    /// Releases the pages of dirty free granules (see `Purge` for which) and schedules the next
    /// timed purge while anything is left dirty.
    fn purge(&mut self, how: Purge) {
        if how == Purge::Bound {
            // What stayed free since the last timed purge goes first; the rest only if needed.
            self.purge(Purge::Timed);
            if self.dirty_free <= DIRTY_BOUND {
                return;
            }
        }
        let all = how != Purge::Timed;
        self.dirty_free = 0;
        for (r, region) in self.regions.iter_mut().enumerate() {
            if region.base == 0 {
                continue;
            }
            let idle = (0..WORDS).all(|w| region.dirty[w] & !region.stale[w] == 0);
            if region.used_granules == 0 && (how == Purge::All || (how == Purge::Timed && idle)) {
                BASES[r].store(0, Relaxed);
                // SAFETY: the region is a mapping of ours with no live block in it.
                unsafe { os::unmap(NonNull::new_unchecked(region.base as *mut u8), REGION_SIZE) };
                region.base = 0;
                continue;
            }
            let Region {
                base,
                used,
                dirty,
                stale,
                ..
            } = region;
            let target = |w: usize| dirty[w] & !used[w] & if all { !0 } else { stale[w] };
            let mut purged = [0u64; WORDS];
            let mut i = next_set(target, 0);
            while i < GRANULES {
                let end = next_set(|w| !target(w), i);
                // SAFETY: granules `[i, end)` are in our region and belong to no block.
                if unsafe { os::purge((*base + i * GRANULE) as *mut u8, (end - i) * GRANULE) } {
                    set_range(&mut purged, i, end - i, true);
                }
                i = next_set(target, end);
            }
            // Only what the kernel really purged reads as zero; the rest stays dirty.
            for w in 0..WORDS {
                dirty[w] &= !purged[w];
                stale[w] = dirty[w] & !used[w];
                self.dirty_free += stale[w].count_ones() as usize * GRANULE;
            }
        }
        let next = if self.dirty_free > 0 {
            os::now_ms() + PURGE_DELAY_MS
        } else {
            0
        };
        DEADLINE.store(next, Relaxed);
    }
}

/// Which dirty free granules a purge releases.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purge {
    /// Those free since the previous timed purge; regions empty since then are unmapped.
    Timed,
    /// Past `DIRTY_BOUND`: a `Timed` purge first (ahead of its deadline), then, if still past the
    /// bound, every dirty free granule, without unmapping any further region.
    Bound,
    /// All of them, and every empty region is unmapped (`trim`).
    All,
}

// ---------------------------------------------------------------------------------------------
// Bitmaps of `GRANULES` bits, one `u64` word per 64 granules.

/// The first `i' >= i` whose bit is set in the bitmap whose words `word` gives, or `GRANULES`.
fn next_set(word: impl Fn(usize) -> u64, i: usize) -> usize {
    let mut w = i / 64;
    if w >= WORDS {
        return GRANULES;
    }
    let mut bits = word(w) & (!0u64 << (i % 64));
    loop {
        if bits != 0 {
            return w * 64 + bits.trailing_zeros() as usize;
        }
        w += 1;
        if w == WORDS {
            return GRANULES;
        }
        bits = word(w);
    }
}

/// The first run of `n` clear bits, by first fit.
fn find_run(used: &[u64; WORDS], n: usize) -> Option<usize> {
    let mut i = next_set(|w| !used[w], 0);
    while i + n <= GRANULES {
        let end = next_set(|w| used[w], i);
        if end - i >= n {
            return Some(i);
        }
        i = next_set(|w| !used[w], end);
    }
    None
}

fn get(bits: &[u64; WORDS], i: usize) -> bool {
    bits[i / 64] >> (i % 64) & 1 != 0
}

fn set_range(bits: &mut [u64; WORDS], mut i: usize, n: usize, value: bool) {
    let end = i + n;
    while i < end {
        let (w, b) = (i / 64, i % 64);
        let k = (64 - b).min(end - i);
        let mask = if k == 64 { !0 } else { ((1u64 << k) - 1) << b };
        if value {
            bits[w] |= mask;
        } else {
            bits[w] &= !mask;
        }
        i += k;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::cell::Cell;

    std::thread_local! {
        /// Makes `alloc` on this thread act as if the arena were full (every region used and no
        /// slot left for another), for the tests of what falls back from it.
        pub(crate) static REFUSE: Cell<bool> = const { Cell::new(false) };
    }

    fn bitmap(used: &[(usize, usize)]) -> [u64; WORDS] {
        let mut bits = [0; WORDS];
        for &(i, n) in used {
            set_range(&mut bits, i, n, true);
        }
        bits
    }

    #[test]
    fn find_run_is_first_fit_across_words() {
        let bits = bitmap(&[(0, 3), (5, 70), (80, 200)]);
        assert_eq!(find_run(&bits, 1), Some(3));
        assert_eq!(find_run(&bits, 2), Some(3));
        assert_eq!(find_run(&bits, 3), Some(75));
        assert_eq!(find_run(&bits, 5), Some(75));
        assert_eq!(find_run(&bits, 6), Some(280));
        assert_eq!(find_run(&bits, GRANULES - 280), Some(280));
        assert_eq!(find_run(&bits, GRANULES - 279), None);
        assert_eq!(find_run(&bitmap(&[(0, GRANULES)]), 1), None);
        assert_eq!(find_run(&bitmap(&[]), GRANULES), Some(0));
    }

    #[test]
    fn set_range_touches_exactly_its_bits() {
        for (i, n) in [
            (0, 1),
            (3, 61),
            (63, 2),
            (64, 64),
            (10, 300),
            (GRANULES - 1, 1),
        ] {
            let bits = bitmap(&[(i, n)]);
            for g in 0..GRANULES {
                assert_eq!(
                    get(&bits, g),
                    g >= i && g < i + n,
                    "range ({i}, {n}) bit {g}"
                );
            }
            let mut cleared = [!0; WORDS];
            set_range(&mut cleared, i, n, false);
            assert_eq!(
                cleared
                    .iter()
                    .map(|w| w.count_zeros() as usize)
                    .sum::<usize>(),
                n
            );
        }
    }
}
