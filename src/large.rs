//! Large blocks: above 128 KiB, or aligned beyond what a heap page can honour. `heap::realloc` also
//! puts blocks it grows to 64 KiB or more in the arena (`extent::GROWN_MIN`); they are freed here.
//!
//! Blocks of up to `extent::MAX_EXTENT` bytes aligned to at most `extent::GRANULE` come from the
//! shared extent arena (`extent`), which reuses freed memory while it is resident. The rest, and
//! any request the arena cannot serve, get a mapping each, described below.
//!
//! A mapping is `[base, base + len)`; the block starts at `p = base + offset` with
//! `offset = max(PAGE_SIZE, align)`, and the last bytes before `p` hold a [`Header`] recording `base`
//! and `len`. Knowing the real length lets a freed mapping serve any later request it fits (best
//! fit, at most `MAX_WASTE` times too big), and lets `realloc` grow into the spare room with no
//! system call, or with `mremap` (no copy) beyond it. Fresh lengths are rounded to four classes per
//! power of two so that mappings are reusable for nearby sizes.
//!
//! Freed mappings stay in a per-heap cache of `SLOTS` entries (at most `CACHE_BYTES`); the heap
//! unmaps them when it purges. Page faults are costly on the machines we measure on, so reusing a
//! mapping whose pages are already resident is the point of the cache. When no cached mapping
//! fits, one that is too big is split (the block takes a prefix, the rest stays cached) and one
//! that is too small grows, its new tail filled with other cached mappings' resident pages moved
//! there by `mremap` (`LargeCache::fill`). Such an assembled mapping may span several kernel
//! mappings, which `mremap` refuses to resize; `realloc` then copies instead.

use crate::extent;
use crate::os::{self, PAGE_SIZE};
use core::cell::Cell;
use core::ptr::{self, NonNull};

/// Cache slots per heap.
const SLOTS: usize = 8;
/// Bytes a heap's cache may hold; beyond it the oldest mapping is unmapped.
const CACHE_BYTES: usize = 64 << 20;
/// Mappings larger than this are never cached.
const MAX_CACHED: usize = 32 << 20;
/// A cached mapping serves a request only if it is at most this many times the needed length.
/// Its pages are resident already, so using it costs no more memory than keeping it cached; 8
/// lets a `Vec` that grows by doubling reuse the mapping it had at its largest.
const MAX_WASTE: usize = 8;

/// Stored just below a large block.
#[repr(C)]
struct Header {
    base: usize,
    len: usize,
}

/// The offset of the block in its mapping for an alignment.
fn offset_for(align: usize) -> usize {
    align.max(PAGE_SIZE)
}

/// A fresh mapping length for `need` bytes, rounded up to a class, or `None` if it overflows.
fn class_len(need: usize) -> Option<usize> {
    let need = need.max(PAGE_SIZE);
    let w = usize::BITS - 1 - (need - 1).leading_zeros();
    let step = (1usize << w.saturating_sub(2)).max(PAGE_SIZE);
    let len = need.checked_add(step - 1)? & !(step - 1);
    (len <= isize::MAX as usize).then_some(len)
}

/// Whether `size` with `align` can ever be mapped (the check happens before any accounting).
/// Alignments above 1 TiB are refused outright: over-mapping for them would ask for more address
/// space than a 47-bit user space has room to trim from.
pub fn is_mappable(size: usize, align: usize) -> bool {
    align <= 1 << 40
        && offset_for(align)
            .checked_add(size)
            .and_then(class_len)
            .is_some()
}

/// # Safety
/// `p` is a live large block.
unsafe fn header(p: *mut u8) -> *mut Header {
    // SAFETY: the header sits in the mapping just below every large block (module docs).
    unsafe { p.sub(core::mem::size_of::<Header>()).cast() }
}

/// A per-heap cache of freed large mappings.
///
/// Invariants: `slots[i] = (base, len)` with `base == 0` for an empty slot; every cached range is a
/// page-aligned range of `len` bytes of our mappings that nobody uses (a whole mapping, or a piece
/// of one after a split); `bytes` is the sum of the cached `len`s.
pub struct LargeCache {
    slots: [Cell<(usize, usize)>; SLOTS],
    next: Cell<usize>,
    bytes: Cell<usize>,
}

impl LargeCache {
    pub const fn new() -> Self {
        LargeCache {
            slots: [const { Cell::new((0, 0)) }; SLOTS],
            next: Cell::new(0),
            bytes: Cell::new(0),
        }
    }

    /// Takes the smallest cached mapping of at least `need` (and at most `MAX_WASTE * need`) bytes
    /// whose base is aligned to `align`.
    fn take_fit(&self, need: usize, align: usize) -> Option<(usize, usize)> {
        let mut best: Option<&Cell<(usize, usize)>> = None;
        for slot in &self.slots {
            let (base, len) = slot.get();
            let fits = base != 0 && len >= need && len / MAX_WASTE <= need && base % align == 0;
            if fits && best.is_none_or(|b| b.get().1 > len) {
                best = Some(slot);
            }
        }
        Some(self.empty(best?))
    }

    /// Empties a slot and returns what it held.
    fn empty(&self, slot: &Cell<(usize, usize)>) -> (usize, usize) {
        let (base, len) = slot.replace((0, 0));
        self.bytes.set(self.bytes.get() - len);
        (base, len)
    }

    /// The slot holding the largest cached range, if any.
    fn largest(&self) -> Option<&Cell<(usize, usize)>> {
        self.slots
            .iter()
            .filter(|s| s.get().0 != 0)
            .max_by_key(|s| s.get().1)
    }

    /// Takes the largest cached mapping, to be resized, if the alignment allows moving it.
    fn take_resizable(&self, align: usize) -> Option<(usize, usize)> {
        if align > PAGE_SIZE {
            return None;
        }
        Some(self.empty(self.largest()?))
    }

    /// Moves the resident pages of cached mappings into `[dst, dst + len)` (the fresh, not yet
    /// faulted tail of a mapping that just grew), so that they need no page faults. A cached
    /// mapping larger than what is left is split: its remainder stays cached.
    fn fill(&self, mut dst: usize, mut len: usize) {
        while len > 0 {
            let Some(slot) = self.largest() else { return };
            let (base, slot_len) = self.empty(slot);
            let n = slot_len.min(len);
            // SAFETY: the cached range is ours and unused (struct invariant); `dst` is the
            // caller's own fresh range, disjoint from every cached range.
            if !unsafe { os::move_pages(base, n, dst) } {
                // SAFETY: it is still a range of ours, unused.
                unsafe { self.put(base, slot_len) };
                return;
            }
            if n < slot_len {
                // SAFETY: the rest of the cached range is still mapped and unused.
                unsafe { self.put(base + n, slot_len - n) };
            }
            dst += n;
            len -= n;
        }
    }

    /// Takes back a range: cached if it fits, otherwise unmapped.
    ///
    /// # Safety
    /// `[base, base + len)` is a page-aligned range of our large mappings that nobody uses any more.
    unsafe fn put(&self, base: usize, len: usize) {
        if len > MAX_CACHED {
            // SAFETY: caller promise.
            unsafe { unmap(base, len) };
            return;
        }
        // An empty slot if there is one; otherwise round robin, which overwrites the oldest entry.
        let i = self
            .slots
            .iter()
            .position(|s| s.get().0 == 0)
            .unwrap_or_else(|| {
                let i = self.next.get();
                self.next.set((i + 1) % SLOTS);
                i
            });
        let (old, old_len) = self.slots[i].replace((base, len));
        self.bytes.set(self.bytes.get() + len);
        if old != 0 {
            self.bytes.set(self.bytes.get() - old_len);
            // SAFETY: cached ranges are ours and unused (struct invariant).
            unsafe { unmap(old, old_len) };
        }
        while self.bytes.get() > CACHE_BYTES {
            self.evict_one();
        }
    }

    fn evict_one(&self) {
        if let Some(slot) = self.slots.iter().find(|s| s.get().0 != 0) {
            let (base, len) = self.empty(slot);
            // SAFETY: cached ranges are ours and unused (struct invariant).
            unsafe { unmap(base, len) };
        }
    }

    /// Unmaps every cached mapping.
    pub fn clear(&self) {
        while self.bytes.get() > 0 {
            self.evict_one();
        }
    }
}

/// # Safety
/// `[base, base + len)` is a page-aligned range of our large mappings that belongs to the caller,
/// with no alignment beyond `PAGE_SIZE` relied on. (A range spanning several kernel mappings makes
/// `mremap` fail, which is reported as `None`.)
unsafe fn remap(base: usize, len: usize, new_len: usize) -> Option<usize> {
    // SAFETY: caller promise; `base` is non-null because it starts a range of ours.
    unsafe { os::remap(NonNull::new_unchecked(base as *mut u8), len, new_len) }
        .map(|q| q.as_ptr() as usize)
}

/// # Safety
/// `[base, base + len)` is a page-aligned range of our large mappings that nobody uses any more.
unsafe fn unmap(base: usize, len: usize) {
    // SAFETY: caller promise; `base` is non-null because it starts a range of ours.
    unsafe { os::unmap(NonNull::new_unchecked(base as *mut u8), len) };
}

/// Allocates a large block; returns it and its mapping length, or `None` if the OS refuses.
/// The caller checked `is_mappable(size, align)`.
pub fn alloc(
    cache: &LargeCache,
    size: usize,
    align: usize,
    zero: bool,
) -> Option<(*mut u8, usize)> {
    if extent::serves(size, align) {
        if let Some(block) = extent::alloc(size, zero) {
            return Some(block);
        }
        // The arena is full or could not grow: a mapping of its own may still be had.
    }
    let offset = offset_for(align);
    let need = offset.checked_add(size)?;
    let (base, len, fresh) = match cache.take_fit(need, align.max(PAGE_SIZE)) {
        Some((base, len)) => (base, len, false),
        None => {
            let len = class_len(need)?;
            match cache.take_resizable(align) {
                // Too big to hand out whole: use a prefix and keep the rest (resident) cached.
                Some((old_base, old_len)) if old_len >= len => {
                    if old_len > len {
                        // SAFETY: the rest of an unused range of ours is itself one.
                        unsafe { cache.put(old_base + len, old_len - len) };
                    }
                    (old_base, len, false)
                }
                // Too small: grow it; its resident pages stay, and the new tail takes resident
                // pages from other cached mappings where there are any.
                // SAFETY: the cached range is unused and now ours.
                Some((old_base, old_len)) => match unsafe { remap(old_base, old_len, len) } {
                    Some(base) => {
                        if len > old_len {
                            cache.fill(base + old_len, len - old_len);
                        }
                        (base, len, false)
                    }
                    None => {
                        // SAFETY: as above; the failed remap left it unchanged.
                        unsafe { unmap(old_base, old_len) };
                        (
                            os::map_aligned(len, PAGE_SIZE)?.as_ptr() as usize,
                            len,
                            true,
                        )
                    }
                },
                None => (
                    os::map_aligned(len, align.max(PAGE_SIZE))?.as_ptr() as usize,
                    len,
                    true,
                ),
            }
        }
    };
    let p = (base + offset) as *mut u8;
    // SAFETY: `[base, base + len)` is ours and `p - size_of::<Header>()` lies inside it.
    unsafe {
        header(p).write(Header { base, len });
        if zero && !fresh {
            ptr::write_bytes(p, 0, size);
        }
    }
    Some((p, len))
}

/// Frees a large block; returns its mapping length.
///
/// # Safety
/// `p` came from `alloc`/`realloc` here, or from `extent::alloc`/`extent::resize` (a block
/// `heap::realloc` grew into the arena), with `size` bytes, and is no longer used.
pub unsafe fn free(cache: &LargeCache, p: *mut u8, size: usize) -> usize {
    if let Some(region) = extent::region_of(p) {
        // SAFETY: forwarded caller promise; `p` is in the arena.
        return unsafe { extent::free(region, p, size) };
    }
    // SAFETY: caller promise: `p` is a live large block with its header.
    let Header { base, len } = unsafe { header(p).read() };
    // SAFETY: the header describes the block's whole mapping, which the caller gives up.
    unsafe { cache.put(base, len) };
    len
}

/// Resizes a large block to another large size. Returns the block and its old and new mapping
/// lengths; `None` (old block untouched) on failure.
///
/// # Safety
/// As for `free`; `align` is the block's alignment and `old` its size.
pub unsafe fn realloc(
    cache: &LargeCache,
    p: *mut u8,
    old: usize,
    new: usize,
    align: usize,
) -> Option<(*mut u8, usize, usize)> {
    if let Some(region) = extent::region_of(p) {
        let old_len = extent::len_of(old);
        if extent::serves(new, align) {
            // SAFETY: forwarded caller promise; `p` is in the arena.
            if let Some(new_len) = unsafe { extent::resize(region, p, old, new) } {
                return Some((p, old_len, new_len));
            }
        }
        // SAFETY: forwarded caller promise.
        return unsafe { move_block(cache, p, old, new, align, old_len) };
    }
    // SAFETY: caller promise: `p` is a live large block with its header.
    let Header { base, len } = unsafe { header(p).read() };
    let offset = p as usize - base;
    let need = offset.checked_add(new)?;
    if need <= len {
        // Fits in the mapping. When the block shrinks, give back the tail if most of it would be
        // unused; a growing block keeps it (a Vec that doubles will want it next).
        let shrunk = class_len(need)?;
        if new < old && shrunk <= len / 2 {
            // SAFETY: `[base, base + len)` is the block's whole mapping, which the caller owns;
            // shrinking keeps the block's data and never moves the mapping.
            if let Some(q) = unsafe { remap(base, len, shrunk) } {
                debug_assert_eq!(q, base, "mremap never moves a shrinking mapping");
                // SAFETY: the header is still inside the mapping.
                unsafe { (*header(p)).len = shrunk };
                return Some((p, len, shrunk));
            }
        }
        return Some((p, len, len));
    }
    let new_len = class_len(need)?;
    if align <= PAGE_SIZE {
        // SAFETY: `[base, base + len)` is the block's whole mapping (alignment at most
        // `PAGE_SIZE`), which the caller owns; MREMAP_MAYMOVE keeps its contents.
        if let Some(base) = unsafe { remap(base, len, new_len) } {
            let np = (base + offset) as *mut u8;
            // SAFETY: the header moved with the mapping and is inside it.
            unsafe { header(np).write(Header { base, len: new_len }) };
            return Some((np, len, new_len));
        }
        // mremap refuses a range that spans several kernel mappings, which a mapping assembled
        // from moved pages (`LargeCache::fill`) can be: copy instead.
    }
    // Over-aligned (mremap may move to an address without the alignment) or not remappable.
    // SAFETY: forwarded caller promise.
    unsafe { move_block(cache, p, old, new, align, len) }
}

/// `realloc` by allocating, copying and freeing; `old_len` is what `p` occupies.
///
/// # Safety
/// As for `realloc`.
unsafe fn move_block(
    cache: &LargeCache,
    p: *mut u8,
    old: usize,
    new: usize,
    align: usize,
    old_len: usize,
) -> Option<(*mut u8, usize, usize)> {
    let (q, q_len) = alloc(cache, new, align, false)?;
    // SAFETY: both blocks are live and distinct, of at least `min(old, new)` bytes; `p` is ours
    // to free (caller promise).
    unsafe {
        ptr::copy_nonoverlapping(p, q, old.min(new));
        free(cache, p, old);
    }
    Some((q, old_len, q_len))
}
