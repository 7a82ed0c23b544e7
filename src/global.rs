//! The `GlobalAlloc` implementation: nothing but argument routing to `heap`.
//!
//! The checklist every global allocator must meet, and how this one does:
//! - never unwind or panic: no path below calls anything that can panic on valid input;
//! - return null on failure: the OS refusing memory, a size that overflows when rounded, an
//!   absurd alignment, or the memory limit;
//! - never allocate through the global allocator: heaps, segment headers and caches live in memory
//!   mapped by `os`; thread-locals are `const`-initialised without destructors;
//! - large alignments go to the large path (mmap, over-mapped and trimmed).

use core::alloc::{GlobalAlloc, Layout};

/// The perfalloc global allocator.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
///
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct PerfAlloc {
    _private: (),
}

impl PerfAlloc {
    /// Creates the allocator handle. All state is global and per-thread, so any number of handles
    /// share it.
    pub const fn new() -> Self {
        PerfAlloc { _private: () }
    }
}

// SAFETY: `heap` returns blocks of at least `layout.size()` bytes aligned to `layout.align()`
// (see `size_class` and `large`), never hands a block out twice while it is live, and frees only
// what it is given back with the same layout.
unsafe impl GlobalAlloc for PerfAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        crate::heap::alloc(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        crate::heap::alloc_zeroed(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the GlobalAlloc contract: `ptr` came from us with this layout.
        unsafe { crate::heap::free(ptr, layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Layout::from_size_align would reject a size that overflows isize when rounded.
        if new_size > isize::MAX as usize - (layout.align() - 1) {
            return core::ptr::null_mut();
        }
        // SAFETY: the GlobalAlloc contract: `ptr` came from us with `layout`; new_size is valid.
        unsafe { crate::heap::realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
