//! Segments and pages: how memory from the OS is cut up and how a pointer finds its metadata.
//!
//! A **segment** is a `SEGMENT_SIZE` (4 MiB) region aligned to its size, so the segment of any block
//! is `addr & !(SEGMENT_SIZE - 1)`. It is cut into **pages** of one size each, 64 small pages of
//! 64 KiB or 8 medium pages of 512 KiB, and its header (this struct) sits at its start: in the first
//! `SMALL_HEADER_SIZE` bytes of a small segment, whose page 0 serves blocks after it, and in the whole
//! of a medium segment's page 0. A page serves one size class at a time, and
//! `(addr - segment) >> page_shift` finds its `Page` in O(1).
//!
//! Small pages keep returned blocks on an intrusive list (`free`) and carve fresh blocks lazily
//! (`bump`), so untouched memory is never faulted in. A list that comes back scrambled (blocks
//! freed in random address order, as when a map is dropped) is sorted when blocks are taken from
//! it, so that consecutive allocations get neighbouring blocks again. Medium pages (blocks of
//! 10-128 KiB, at most 64 per page) keep a bitmap instead: no link word lives inside a free block,
//! so the whole OS pages inside every free block can be handed back to the OS
//! (`purge_free_blocks`) while neighbours are still live.
//!
//! Ownership: a segment belongs to one heap (`heap`), and only the thread that owns that heap
//! touches its pages. Other threads read `heap` (to route a remote free) only while they hold a live
//! block in the segment, which keeps the segment from being released or re-owned meanwhile.

use crate::os;
use crate::size_class;
use crate::sync::SpinLock;
use core::ptr::{self, NonNull};

pub const SEGMENT_SHIFT: usize = 22;
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
pub const SMALL_PAGE_SHIFT: u32 = 16;
pub const MEDIUM_PAGE_SHIFT: u32 = 19;
const MAX_PAGES: usize = SEGMENT_SIZE >> SMALL_PAGE_SHIFT;
/// The bytes at the start of a small segment that hold its header; page 0 serves blocks after them.
/// A whole page would do, but huge pages make all 64 KiB of it resident; this costs page 0 an
/// eighth of its blocks instead.
pub const SMALL_HEADER_SIZE: usize = 8 * 1024;

static_assertions::const_assert!(core::mem::size_of::<Segment>() <= SMALL_HEADER_SIZE);
static_assertions::const_assert!(SMALL_HEADER_SIZE < 1 << SMALL_PAGE_SHIFT);
// Page 0 of a small segment starts at `SMALL_HEADER_SIZE`, so its blocks keep the alignment the
// others have (`size_class`: the largest power of two the block size divides by) only if that
// power divides `SMALL_HEADER_SIZE`: true of every block size up to `MAX_SMALL_PAGE_BLOCK`.
static_assertions::const_assert!(size_class::MAX_SMALL_PAGE_BLOCK.is_power_of_two());
static_assertions::const_assert!(SMALL_HEADER_SIZE % size_class::MAX_SMALL_PAGE_BLOCK == 0);
static_assertions::const_assert!(MAX_PAGES <= 64);
// Blocks above 4 KiB are promised alignment up to `KIB_ALIGN` by being multiples of it, from page
// starts that are multiples of it too (page 0 of a small segment's included).
static_assertions::const_assert!(SMALL_HEADER_SIZE % size_class::KIB_ALIGN == 0);
static_assertions::const_assert!((1 << SMALL_PAGE_SHIFT) % size_class::KIB_ALIGN == 0);

/// The identity of the heap that owns a segment. Opaque here (segments sit below heaps and never
/// look inside one); the heap module converts its own address to and from it.
pub enum Owner {}

/// A free block's first word: the link of the list that holds it (a page's free list or run, or a
/// remote list, where a message block also carries addresses after it; see `heap::GiveBack`).
/// Blocks in bins are not linked: bins hold pointers.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
}

impl crate::remote::Link for Block {
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: caller promise: `this` is a block nobody else is accessing.
        unsafe { (*this).next = next };
    }
}

/// One page's metadata, inside its segment's header.
///
/// Invariants, for a page in use (`class != NO_CLASS`):
/// - small: `used + len(free) + (capacity - bump) == capacity`; `free` links only blocks of this page.
/// - medium: `used + popcount(free_mask) == capacity`; `purged_mask ⊆ free_mask`; `free` is null;
///   a bit of `stale_mask` is clear for every block freed since its heap's last purge pass;
///   `bump == capacity` (no lazy carving: the bitmap covers every block).
/// - `empty_dirty` is set only on a small page, exactly while its emptiness is counted in its
///   heap's dirty bytes (`put_run` sets it, `take` and the page's release clear it).
/// - `idle` is set only if no block was taken from the page since its heap's last purge pass.
/// - `in_queue` is true iff the page is linked (`next`/`prev`) in its heap's queue for `class`,
///   and a page with a free block is always in the queue.
#[repr(C)]
pub struct Page {
    pub free: *mut Block,
    pub used: u32,
    pub bump: u32,
    pub capacity: u32,
    pub block_size: u32,
    pub class: u8,
    pub in_queue: bool,
    /// A small page whose emptiness was counted in its heap's dirty bytes and not yet taken back.
    pub empty_dirty: bool,
    /// Nothing was taken from the page since the last purge pass: its free memory is not in steady
    /// reuse, and the next timed pass may release it.
    pub idle: bool,
    /// Small: blocks taken since the free list was last sorted whole. A sort that walks `k` list
    /// blocks waits until this reaches `k`, so whole-list sorts walk no more blocks than the page
    /// hands out (a batch's own sort is paid for by the batch).
    pub sort_credit: u32,
    pub free_mask: u64,
    pub purged_mask: u64,
    /// Medium: blocks that were free at the last purge pass (bits of blocks freed since are clear).
    pub stale_mask: u64,
    pub next: *mut Page,
    pub prev: *mut Page,
    pub start: *mut u8,
}

/// `Page::class` of a page that serves no class.
pub const NO_CLASS: u8 = u8::MAX;

impl Page {
    /// The record of a page of `page_size` bytes at `start` that now serves `class`, with every
    /// block free: carved lazily on a small page, all in the bitmap on a medium one.
    fn fresh(start: *mut u8, page_size: usize, class: usize) -> Page {
        let bs = size_class::block_size(class);
        let capacity = (page_size / bs) as u32;
        let mut page = Page {
            free: ptr::null_mut(),
            used: 0,
            bump: 0,
            capacity,
            block_size: bs as u32,
            class: class as u8,
            in_queue: false,
            empty_dirty: false,
            idle: false,
            sort_credit: 0,
            free_mask: 0,
            purged_mask: 0,
            stale_mask: 0,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            start,
        };
        if size_class::is_medium(class) {
            page.bump = capacity;
            page.free_mask = low_bits(capacity);
            // Free pages are fresh or purged: nothing to purge until blocks are used.
            page.purged_mask = page.free_mask;
        }
        page
    }

    /// Whether the page can hand out at least one block.
    pub fn has_free(&self) -> bool {
        !self.free.is_null() || self.bump < self.capacity || self.free_mask != 0
    }

    pub fn is_medium(&self) -> bool {
        size_class::is_medium(self.class as usize)
    }

    /// Takes up to `max` blocks into `dst[..n]` and returns `(n, bytes that were counted as dirty and
    /// are in use again)`. The block to hand out first is written last (bins pop from the end): on a
    /// small page, the head of the free list, which was freed most recently (if the blocks taken
    /// are scrambled, they are handed out in address order instead, and after a whole-list sort
    /// they are the list's lowest: see `sort`), then fresh blocks in address order; on a medium
    /// page, the free block with the highest index.
    ///
    /// # Safety
    /// The page is in use and owned by the calling thread's heap; `dst` has room for `max` pointers.
    pub unsafe fn take(&mut self, dst: *mut *mut Block, max: u32) -> (u32, usize) {
        let mut redirtied = 0;
        self.idle = false;
        if self.empty_dirty {
            self.empty_dirty = false;
            redirtied += 1 << SMALL_PAGE_SHIFT; // what `put_run` added when the page emptied
        }
        let mut n = 0u32;
        if self.is_medium() {
            while n < max && self.free_mask != 0 {
                let i = self.free_mask.trailing_zeros();
                self.free_mask &= self.free_mask - 1;
                if self.purged_mask & (1u64 << i) == 0 {
                    redirtied += self.block_size as usize;
                }
                self.purged_mask &= !(1u64 << i);
                let b = self
                    .start
                    .wrapping_add(i as usize * self.block_size as usize);
                // SAFETY: `dst[..max]` is writable (caller promise) and `n < max`.
                unsafe { *dst.add(n as usize) = b.cast() };
                n += 1;
            }
        } else {
            // Fresh blocks go in first (at the bottom), highest address first, so that they come out
            // lowest address first, after the free list.
            let on_list = self.listed();
            let fresh = (max - max.min(on_list)).min(self.capacity - self.bump);
            for i in (0..fresh).rev() {
                let b = self
                    .start
                    .wrapping_add((self.bump + i) as usize * self.block_size as usize);
                // SAFETY: `dst[..max]` is writable (caller promise) and `n < fresh <= max`.
                unsafe { *dst.add(n as usize) = b.cast() };
                n += 1;
            }
            self.bump += fresh;
            // Then the free list, so that its head comes out first: the most recently freed block,
            // unless the list was scrambled and is sorted below.
            let listed = max.min(on_list);
            n += listed;
            let (mut ups, mut prev) = (0, 0);
            for i in 1..=listed {
                let b = self.free;
                // SAFETY: the list holds `on_list >= listed` blocks (struct invariant), each with a
                // valid link; `n - i < n <= max` indexes `dst`.
                unsafe {
                    self.free = (*b).next;
                    *dst.add((n - i) as usize) = b;
                }
                ups += (b as usize > prev) as u32;
                prev = b as usize;
            }
            // Scrambled: neither mostly ascending nor mostly descending (a handful is not worth it).
            if listed >= 8 && ups.min(listed - ups) > listed / 8 {
                // The rest of the list too, if the page has paid for walking it.
                let rest = on_list - listed;
                let whole = rest > 0 && self.sort_credit >= rest;
                if whole {
                    self.sort_credit = 0;
                }
                // SAFETY: `dst[n - listed..n]` holds the `listed` blocks just taken, off the list.
                unsafe { self.sort(dst.add((n - listed) as usize), listed, whole) };
            }
            self.sort_credit = self.sort_credit.saturating_add(n);
        }
        self.used += n;
        (n, redirtied)
    }

    /// Puts free blocks of this small page in address order: `blocks[..len]`, just taken for a
    /// bin, highest address first (bins pop from the end, so they come out lowest first), and if
    /// `whole`, the free list too, the lowest of all going to `blocks` and the others relinked in
    /// ascending order.
    ///
    /// A free list comes back in the order its blocks were freed, which after a data structure is
    /// dropped is random in address: blocks handed out one after another then share no cache line,
    /// where on a fresh page they would be neighbours. A bitmap with a bit per 8 bytes of the page
    /// sorts them in one pass.
    ///
    /// # Safety
    /// `blocks[..len]` are distinct free blocks of this page, not on its list.
    #[inline(never)] // its 1 KiB bitmap would otherwise be in every refill's frame
    unsafe fn sort(&mut self, blocks: *mut *mut Block, len: u32, whole: bool) {
        let mut bits = [0u64; (1 << SMALL_PAGE_SHIFT) / 8 / 64];
        let (mut lo, mut hi) = (bits.len(), 0);
        let start = self.start as usize;
        let mut mark = |b: *mut Block| {
            let off = (b as usize - start) >> 3;
            bits[off / 64] |= 1 << (off % 64);
            lo = lo.min(off / 64);
            hi = hi.max(off / 64);
        };
        for i in 0..len as usize {
            // SAFETY: `blocks[..len]` is readable (caller promise) and `i < len`.
            mark(unsafe { *blocks.add(i) });
        }
        let mut b = if whole { self.free } else { ptr::null_mut() };
        while !b.is_null() {
            mark(b);
            // SAFETY: `b` is on the page's list, whose links are valid and end in null.
            b = unsafe { (*b).next };
        }
        let (mut k, mut head, mut tail) = (len as usize, ptr::null_mut(), ptr::null_mut::<Block>());
        for (w, &word) in bits.iter().enumerate().take(hi + 1).skip(lo) {
            let mut m = word;
            while m != 0 {
                let off = w * 64 + m.trailing_zeros() as usize;
                let b: *mut Block = self.start.wrapping_add(off << 3).cast();
                m &= m - 1;
                if k > 0 {
                    k -= 1;
                    // SAFETY: distinct blocks at least 8 bytes apart set one bit each, so the first
                    // `len` fill `blocks[..len]` exactly.
                    unsafe { *blocks.add(k) = b };
                } else {
                    if tail.is_null() {
                        head = b;
                    } else {
                        // SAFETY: `tail` is a free block of this page, relinked here.
                        unsafe { (*tail).next = b };
                    }
                    tail = b;
                }
            }
        }
        if !tail.is_null() {
            // SAFETY: as above.
            unsafe { (*tail).next = ptr::null_mut() };
            self.free = head;
        }
    }

    /// Blocks on a small page's free list (`bump - used` by the struct invariant).
    fn listed(&self) -> u32 {
        self.bump - self.used
    }

    /// Returns a chain of `n` blocks of this page. Returns true if the page is now empty.
    ///
    /// # Safety
    /// Every block of the chain `head..=tail` belongs to this page, was handed out, and is unused.
    pub unsafe fn put_chain(&mut self, head: *mut Block, tail: *mut Block, n: u32) -> bool {
        debug_assert!(self.used >= n);
        if self.is_medium() {
            let mut b = head;
            while !b.is_null() {
                // SAFETY: `b` is a block of the chain, so its link is valid.
                let next = unsafe { (*b).next };
                let i = (b as usize - self.start as usize) / self.block_size as usize;
                debug_assert!(
                    self.free_mask & (1 << i) == 0,
                    "double free of a medium block"
                );
                self.free_mask |= 1u64 << i;
                self.stale_mask &= !(1u64 << i);
                b = next;
            }
        } else {
            // SAFETY: `tail` ends the chain; splice the whole chain in front of `free`.
            unsafe { (*tail).next = self.free };
            self.free = head;
        }
        self.used -= n;
        if self.used == 0 && !self.is_medium() {
            // Nothing is handed out: forget the (scrambled) free list and carve the page afresh,
            // in address order, when it is used again.
            self.free = ptr::null_mut();
            self.bump = 0;
        }
        self.used == 0
    }

    /// Bytes of this page counted in its heap's dirty bytes: the whole page if it is small and
    /// emptied (64 KiB, also for page 0, whose header share is not dirty: a bound, as for the
    /// blocks that do not fill a page), the free blocks not yet purged if it is medium.
    pub fn dirty_bytes(&self) -> usize {
        if self.is_medium() {
            (self.free_mask & !self.purged_mask).count_ones() as usize * self.block_size as usize
        } else if self.empty_dirty {
            1 << SMALL_PAGE_SHIFT
        } else {
            0
        }
    }

    /// Hands the whole OS pages inside the free, not yet purged medium blocks of `eligible` back to
    /// the OS. Adjacent such blocks are purged as one run, so the pages they share go too.
    ///
    /// # Safety
    /// The page is a medium page in use by the calling thread's heap, so that (by the struct
    /// invariants) the blocks in `free_mask` are unused and hold no link.
    pub unsafe fn purge_free_blocks(&mut self, eligible: u64) {
        debug_assert!(self.is_medium());
        let free = self.free_mask & eligible;
        let todo = free & !self.purged_mask;
        if todo == 0 {
            return;
        }
        let bs = self.block_size as usize;
        let mut mask = free;
        while mask != 0 {
            let first = mask.trailing_zeros();
            let run = (mask >> first).trailing_ones();
            let bits = low_bits(run) << first;
            if bits & todo != 0 {
                let start = self.start as usize + first as usize * bs;
                // SAFETY: a run of free blocks of this page (caller promise).
                unsafe { os::purge_inside(start, start + run as usize * bs) };
            }
            mask &= !bits;
        }
        self.purged_mask |= free;
    }
}

/// A segment header. Lives at the start of its own segment.
///
/// Invariants: `free_pages` has a bit for each page not serving a class (never bit 0 of a medium
/// segment, whose page 0 is the header), and the memory of such a page is purged (pages are purged
/// as they are released); `heap` is the owner and changes only while no block of the segment is
/// live.
#[repr(C)]
pub struct Segment {
    pub heap: *mut Owner,
    pub page_shift: u32,
    pub page_count: u32,
    pub free_pages: u64,
    pub next: *mut Segment,
    pub prev: *mut Segment,
    pub pages: [Page; MAX_PAGES],
}

/// A mask of the `n <= 64` lowest bits.
#[inline]
pub fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The segment holding `p`.
#[inline(always)]
pub fn segment_of(p: *const u8) -> *mut Segment {
    (p as usize & !(SEGMENT_SIZE - 1)) as *mut Segment
}

/// The page holding `p`.
///
/// # Safety
/// `p` points into a page in use of a live segment.
#[inline(always)]
pub unsafe fn page_of(p: *const u8) -> *mut Page {
    let seg = segment_of(p);
    // SAFETY: the caller promises `seg` is a live segment, so its header is readable.
    unsafe {
        let idx = (p as usize - seg as usize) >> (*seg).page_shift;
        ptr::addr_of_mut!((*seg).pages[idx])
    }
}

/// The pages of a segment with pages of `1 << page_shift` bytes that can serve a class: all of a
/// small segment's, all but page 0 of a medium one's.
fn usable_pages(page_shift: u32) -> u64 {
    let all = low_bits((SEGMENT_SIZE >> page_shift) as u32);
    if page_shift == SMALL_PAGE_SHIFT {
        all
    } else {
        all & !1
    }
}

impl Segment {
    pub fn all_pages_mask(&self) -> u64 {
        usable_pages(self.page_shift)
    }

    pub fn page_size(&self) -> usize {
        1 << self.page_shift
    }

    /// The memory page `idx` serves blocks from: `(start, bytes)`. Page 0 of a small segment
    /// starts after the header.
    fn page_memory(&self, idx: usize) -> (*mut u8, usize) {
        debug_assert!(self.all_pages_mask() & 1 << idx != 0);
        let base = self as *const Segment as usize + (idx << self.page_shift);
        if idx == 0 {
            (
                (base + SMALL_HEADER_SIZE) as *mut u8,
                self.page_size() - SMALL_HEADER_SIZE,
            )
        } else {
            (base as *mut u8, self.page_size())
        }
    }

    /// Takes a free page for `class`, or `None` if the segment is full.
    ///
    /// # Safety
    /// The segment is owned by the calling thread's heap and has the page kind of `class`.
    pub unsafe fn take_page(&mut self, class: usize) -> Option<*mut Page> {
        if self.free_pages == 0 {
            return None;
        }
        let idx = self.free_pages.trailing_zeros() as usize;
        self.free_pages &= !(1u64 << idx);
        let (start, len) = self.page_memory(idx);
        let page = &mut self.pages[idx];
        *page = Page::fresh(start, len, class);
        Some(page)
    }

    /// Gives page `idx` back to the segment and its memory back to the OS.
    ///
    /// # Safety
    /// The page is in use by the calling thread's heap with `used == 0` (no block of it is live or
    /// held in any bin or list), and it is not in any page queue.
    pub unsafe fn release_page(&mut self, idx: usize) {
        debug_assert!(self.pages[idx].used == 0 && !self.pages[idx].in_queue);
        self.pages[idx].class = NO_CLASS;
        self.free_pages |= 1 << idx;
        let (start, len) = self.page_memory(idx);
        // SAFETY: the page's memory is unused (caller promise) and lies inside this segment, after
        // its header.
        unsafe { os::purge(start, len) };
    }
}

/// Empty segments kept for reuse, already purged (so they hold only their header resident).
struct SegmentCache {
    free: [*mut Segment; SEGMENT_CACHE_SLOTS],
    len: usize,
}

// SAFETY: the cache only stores addresses of unowned segments; access is serialised by its lock.
unsafe impl Send for SegmentCache {}

/// How many empty segments are kept mapped for reuse (address space only: they are purged).
const SEGMENT_CACHE_SLOTS: usize = 16;

static SEGMENT_CACHE: SpinLock<SegmentCache> = SpinLock::new(SegmentCache {
    free: [ptr::null_mut(); SEGMENT_CACHE_SLOTS],
    len: 0,
});

pub(crate) fn lock_for_fork() {
    SEGMENT_CACHE.raw_lock();
}

pub(crate) fn unlock_after_fork() {
    // SAFETY: called only by the fork handlers after `lock_for_fork` on the same thread.
    unsafe { SEGMENT_CACHE.raw_unlock() };
}

/// Gets an empty segment for `heap` with pages of `1 << page_shift` bytes, or `None` if the OS
/// refuses memory.
///
/// With `huge`, a segment of small pages is backed by transparent huge pages where the system
/// allows it: its blocks are small and many, so a busy heap touches many OS pages. (mimalloc
/// advises its arena so, and had 26 MiB of huge pages in our bulk workload where we had none; the
/// README gives what the advice did to that workload.) The caller
/// asks only for a heap's second and later segments, so that a thread that allocates little keeps
/// a resident set of a few OS pages, not 2 MiB. Medium segments never get huge pages: their header
/// page is 512 KiB, mostly untouched, and would be resident in full.
pub fn acquire(heap: *mut Owner, page_shift: u32, huge: bool) -> Option<NonNull<Segment>> {
    let cached = {
        let mut cache = SEGMENT_CACHE.lock();
        if cache.len > 0 {
            cache.len -= 1;
            let i = cache.len;
            Some(cache.free[i])
        } else {
            None
        }
    };
    let seg = match cached {
        Some(s) => s,
        None => os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE)?
            .as_ptr()
            .cast::<Segment>(),
    };
    // SAFETY: the segment is mapped by `os` and nobody uses it.
    let _ = unsafe {
        os::advise_huge_pages(
            seg.cast(),
            SEGMENT_SIZE,
            huge && page_shift == SMALL_PAGE_SHIFT,
        )
    };
    let page_count = (SEGMENT_SIZE >> page_shift) as u32;
    // SAFETY: `seg` is a mapped, unowned segment; we write its header before anyone else sees it.
    unsafe {
        ptr::addr_of_mut!((*seg).heap).write(heap);
        ptr::addr_of_mut!((*seg).page_shift).write(page_shift);
        ptr::addr_of_mut!((*seg).page_count).write(page_count);
        ptr::addr_of_mut!((*seg).free_pages).write(usable_pages(page_shift));
        ptr::addr_of_mut!((*seg).next).write(ptr::null_mut());
        ptr::addr_of_mut!((*seg).prev).write(ptr::null_mut());
        for i in 0..page_count as usize {
            ptr::addr_of_mut!((*seg).pages[i].class).write(NO_CLASS);
        }
    }
    NonNull::new(seg)
}

/// Returns an empty segment: purged and cached, or unmapped when the cache is full.
///
/// # Safety
/// No block of the segment is in use and its heap has unlinked it.
pub unsafe fn release(seg: *mut Segment) {
    // SAFETY: the caller promises the segment is ours and empty; its pages were purged as they
    // were released.
    unsafe { (*seg).heap = ptr::null_mut() };
    // A segment that will be unmapped needs no advice: look first (the advice is a system call,
    // not made under the lock), and check again when caching, as others may have filled it.
    let room = SEGMENT_CACHE.lock().len < SEGMENT_CACHE_SLOTS;
    if room {
        // Off huge pages while cached: khugepaged could otherwise fill the purged pages around
        // the header into a whole resident huge page again. `acquire` sets the advice anew.
        // SAFETY: the segment is ours (caller promise).
        let _ = unsafe { os::advise_huge_pages(seg.cast(), SEGMENT_SIZE, false) };
        let mut cache = SEGMENT_CACHE.lock();
        if cache.len < SEGMENT_CACHE_SLOTS {
            let i = cache.len;
            cache.free[i] = seg;
            cache.len += 1;
            return;
        }
    }
    // SAFETY: `seg` is a non-null segment base returned by `map_aligned`, empty and unlinked.
    unsafe { os::unmap(NonNull::new_unchecked(seg.cast()), SEGMENT_SIZE) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Every page of a small segment serves blocks, page 0 from after the header: each class's
    /// blocks there fit the page, keep clear of the header and keep their class's alignment.
    #[test]
    fn small_page_zero_serves_aligned_blocks_after_the_header() {
        let owner = NonNull::<Owner>::dangling().as_ptr();
        let seg = acquire(owner, SMALL_PAGE_SHIFT, false).expect("a segment");
        // SAFETY: the segment is this test's alone until it is released below, with no block live.
        unsafe {
            let base = seg.as_ptr() as usize;
            assert_eq!((*seg.as_ptr()).free_pages, low_bits(64));
            for class in 0..size_class::SMALL_CLASSES {
                let bs = size_class::block_size(class);
                let page = (*seg.as_ptr()).take_page(class).expect("a page");
                assert_eq!(page, ptr::addr_of_mut!((*seg.as_ptr()).pages[0]));
                let start = (*page).start as usize;
                let end = start + (*page).capacity as usize * bs;
                assert_eq!(start, base + SMALL_HEADER_SIZE, "class {class}");
                assert!(end <= base + (1 << SMALL_PAGE_SHIFT), "class {class}");
                assert_eq!(
                    (*page).capacity as usize,
                    ((1 << SMALL_PAGE_SHIFT) - SMALL_HEADER_SIZE) / bs
                );
                let align = 1 << bs.trailing_zeros();
                assert_eq!(
                    start % align,
                    0,
                    "class {class}: blocks of {bs} B lose their alignment"
                );
                assert_eq!(page_of((*page).start), page);
                assert_eq!(page_of((end - 1) as *const u8), page);
                (*seg.as_ptr()).release_page(0);
            }
            release(seg.as_ptr());
        }
    }

    /// `take` on small pages whose free lists come in every order: no block is lost or handed
    /// out twice, the list keeps its length and its end, and a shuffled list comes out sorted.
    #[test]
    fn take_keeps_every_block_once_and_sorts_shuffled_lists() {
        let mut mem = vec![0u64; (1 << SMALL_PAGE_SHIFT) / 8];
        let start = mem.as_mut_ptr().cast::<u8>();
        let mut rng = Rng(0x7a4e);
        let mut dst = [ptr::null_mut::<Block>(); 512];
        let mut whole_sorts = 0;
        for case in 0..3000 {
            let class = rng.below(size_class::SMALL_CLASSES as u64) as usize;
            let bs = size_class::block_size(class);
            let capacity = ((1 << SMALL_PAGE_SHIFT) / bs) as u32;
            let bump = rng.below(capacity as u64 + 1) as u32;
            let block = |i: u32| start.wrapping_add(i as usize * bs).cast::<Block>();
            let mut free: Vec<*mut Block> =
                (0..bump).filter(|_| rng.below(4) != 0).map(block).collect();
            let order = case % 3; // ascending, descending, shuffled
            if order == 1 {
                free.reverse();
            } else if order == 2 {
                for i in (1..free.len()).rev() {
                    free.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            for (i, &b) in free.iter().enumerate() {
                let next = free.get(i + 1).copied().unwrap_or(ptr::null_mut());
                // SAFETY: `b` is a block inside `mem`, which nothing else uses.
                unsafe { (*b).next = next };
            }
            let mut page = Page::fresh(start, 1 << SMALL_PAGE_SHIFT, class);
            page.free = free.first().copied().unwrap_or(ptr::null_mut());
            page.used = bump - free.len() as u32;
            page.bump = bump;
            page.sort_credit = rng.below(2 * capacity as u64) as u32;
            let max = 1 + rng.below(dst.len() as u64) as u32;
            // SAFETY: the page's list and blocks lie in `mem`; `dst` holds `max` pointers.
            let (n, _) = unsafe { page.take(dst.as_mut_ptr(), max) };
            let taken = &dst[..n as usize];
            let mut list = Vec::new();
            let mut b = page.free;
            while !b.is_null() {
                list.push(b);
                // SAFETY: as above.
                b = unsafe { (*b).next };
            }
            assert_eq!(list.len() as u32, page.bump - page.used, "case {case}");
            let fresh: Vec<_> = (bump..page.bump).map(block).collect();
            let before: HashSet<_> = free.iter().chain(&fresh).collect();
            let after: HashSet<_> = taken.iter().chain(&list).collect();
            assert_eq!(
                taken.len() + list.len(),
                free.len() + fresh.len(),
                "case {case}"
            );
            assert_eq!(
                before, after,
                "case {case}: a block lost or handed out twice"
            );
            let listed = n as usize - fresh.len();
            let from_list = &taken[fresh.len()..]; // popped from the end: the last comes first
            if order == 2 && listed >= 32 {
                assert!(from_list.windows(2).all(|w| w[0] > w[1]), "case {case}");
                if list.len() > 1 && list.windows(2).all(|w| w[0] < w[1]) {
                    whole_sorts += 1;
                }
            } else if order != 2 {
                let expect: Vec<_> = free[..listed].iter().rev().copied().collect();
                assert_eq!(
                    from_list,
                    &expect[..],
                    "case {case}: an ordered list was reordered"
                );
            }
        }
        assert!(
            whole_sorts > 50,
            "only {whole_sorts} whole lists were sorted"
        );
    }
}
