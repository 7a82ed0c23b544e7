//! Large blocks (above 128 KiB, or aligned beyond what a heap page can honour): one mapping each,
//! rounded to a size class (four per power of two) so that freed mappings are interchangeable and
//! a small per-heap cache can hand them out again without a system call or fresh page faults.
//!
//! The layout passed to `dealloc` gives the size back, so a large block needs no header: its mapping
//! is `[p, p + mapped_len(size))`.

use crate::os::{self, PAGE_SIZE};
use core::cell::Cell;
use core::ptr::{self, NonNull};

/// Cache slots per heap.
const SLOTS: usize = 8;
/// Bytes a heap's cache may hold; beyond it the oldest mapping is unmapped.
const CACHE_BYTES: usize = 64 << 20;
/// Mappings larger than this are never cached.
const MAX_CACHED: usize = 32 << 20;

/// The mapping length for a large request, or `None` if it overflows.
pub fn mapped_len(size: usize) -> Option<usize> {
    let size = size.max(PAGE_SIZE);
    let w = usize::BITS - 1 - (size - 1).leading_zeros(); // 2^w < size <= 2^(w+1)
    let step = 1usize << w.saturating_sub(2);
    let len = size.checked_add(step - 1)? & !(step - 1);
    let len = len.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    if len > isize::MAX as usize {
        return None;
    }
    Some(len)
}

/// A per-heap cache of freed large mappings.
///
/// Invariants: `slots[i] = (addr, len)` with `addr == 0` for an empty slot; every cached mapping is
/// a whole mapping of `len` bytes owned by nobody else; `bytes` is the sum of cached `len`s.
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

    /// A mapping of `len` bytes aligned to `align`: from the cache (possibly dirty) or fresh (zero).
    /// Returns the pointer and whether it is known to be zero.
    pub fn take(&self, len: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        for slot in &self.slots {
            let (addr, l) = slot.get();
            if addr != 0 && l == len && addr % align == 0 {
                slot.set((0, 0));
                self.bytes.set(self.bytes.get() - len);
                return NonNull::new(addr as *mut u8).map(|p| (p, false));
            }
        }
        os::map_aligned(len, align).map(|p| (p, true))
    }

    /// Takes back a mapping of `len` bytes: cached if it fits, otherwise unmapped.
    ///
    /// # Safety
    /// `[p, p + len)` is a whole large mapping that nobody uses any more.
    pub unsafe fn put(&self, p: NonNull<u8>, len: usize) {
        if len > MAX_CACHED {
            os::unmap(p, len);
            return;
        }
        // Round-robin eviction: the slot we overwrite holds the oldest entry.
        let i = self.next.get();
        self.next.set((i + 1) % SLOTS);
        let (old, old_len) = self.slots[i].replace((p.as_ptr() as usize, len));
        self.bytes.set(self.bytes.get() + len);
        if old != 0 {
            self.bytes.set(self.bytes.get() - old_len);
            // SAFETY: cached mappings are whole and unused (struct invariant).
            os::unmap(unsafe { NonNull::new_unchecked(old as *mut u8) }, old_len);
        }
        while self.bytes.get() > CACHE_BYTES {
            self.evict_one();
        }
    }

    fn evict_one(&self) {
        for slot in &self.slots {
            let (addr, len) = slot.get();
            if addr != 0 {
                slot.set((0, 0));
                self.bytes.set(self.bytes.get() - len);
                // SAFETY: cached mappings are whole and unused (struct invariant).
                os::unmap(unsafe { NonNull::new_unchecked(addr as *mut u8) }, len);
                return;
            }
        }
    }

    /// Unmaps every cached mapping.
    pub fn clear(&self) {
        while self.bytes.get() > 0 {
            self.evict_one();
        }
    }
}

/// Allocates a large block. Null if the size overflows or the OS refuses.
pub fn alloc(cache: &LargeCache, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(len) = mapped_len(size) else {
        return ptr::null_mut();
    };
    match cache.take(len, align.max(PAGE_SIZE)) {
        Some((p, is_zero)) => {
            if zero && !is_zero {
                // SAFETY: the mapping is ours and at least `size` bytes long.
                unsafe { ptr::write_bytes(p.as_ptr(), 0, size) };
            }
            p.as_ptr()
        }
        None => ptr::null_mut(),
    }
}

/// Frees a large block.
///
/// # Safety
/// `p` came from `alloc`/`realloc` here with this `size` and is no longer used.
pub unsafe fn free(cache: &LargeCache, p: *mut u8, size: usize) {
    // A live block's size had a valid length when it was allocated.
    let Some(len) = mapped_len(size) else { return };
    // SAFETY: the caller gives back a whole live mapping.
    unsafe { cache.put(NonNull::new_unchecked(p), len) };
}

/// Resizes a large block to another large size; null (old block untouched) on failure.
///
/// # Safety
/// As for `free`; `align` is the block's alignment.
pub unsafe fn realloc(
    cache: &LargeCache,
    p: *mut u8,
    old: usize,
    new: usize,
    align: usize,
) -> *mut u8 {
    let (Some(old_len), Some(new_len)) = (mapped_len(old), mapped_len(new)) else {
        return ptr::null_mut();
    };
    if old_len == new_len {
        return p;
    }
    if align <= PAGE_SIZE {
        // SAFETY: `p` is a whole live mapping of `old_len` bytes (caller's promise).
        return match os::remap(unsafe { NonNull::new_unchecked(p) }, old_len, new_len) {
            Some(q) => q.as_ptr(),
            None => ptr::null_mut(),
        };
    }
    let q = alloc(cache, new, align, false);
    if !q.is_null() {
        // SAFETY: both blocks are live, distinct mappings of at least `min(old, new)` bytes.
        unsafe {
            ptr::copy_nonoverlapping(p, q, old.min(new));
            free(cache, p, old);
        }
    }
    q
}
