//! The platform layer: the only module that calls `mmap`, `munmap`, `madvise` and `mremap`.
//!
//! Every function states what it needs and what it guarantees, so that policy code above it never has
//! to know which system call does the work. None of them allocate or panic; failures come back as
//! `None`/`false` and the caller turns them into a null return. The one exception is `die`.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The OS page size we assume for purging and rounding. Checked against `sysconf` in tests.
pub const PAGE_SIZE: usize = 4096;

/// Bytes currently mapped through this module (all of perfalloc's memory from the OS).
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Bytes currently mapped through this module.
pub fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Writes `msg` to standard error and aborts the process, without allocating: for states the
/// allocator cannot leave any other way (it would otherwise wait forever).
#[cold]
pub fn die(msg: &str) -> ! {
    // SAFETY: `msg` is a valid buffer of its length; `abort` has no preconditions.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::abort()
    }
}

/// Maps `size` bytes of zeroed, readable and writable memory aligned to `align`.
///
/// Requires: `size` is a non-zero multiple of `PAGE_SIZE`; `align` is a power of two.
/// Ensures: on `Some(p)`, `[p, p + size)` is mapped, zero, and `p % align == 0`; the region is
/// released only by [`unmap`] with the same `size`. On `None` nothing is mapped.
pub fn map_aligned(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(size % PAGE_SIZE == 0 && size > 0 && align.is_power_of_two());
    if align <= PAGE_SIZE {
        return map_raw(size);
    }
    // Try the exact size first: the kernel often hands out aligned addresses after an earlier
    // aligned segment, which saves two munmaps.
    let p = map_raw(size)?;
    if p.as_ptr() as usize % align == 0 {
        return Some(p);
    }
    // SAFETY: the mapping was made just above and nobody has seen it.
    unsafe { unmap(p, size) };
    // Over-map by `align` and trim both ends.
    let over = size.checked_add(align - PAGE_SIZE)?;
    let raw = map_raw(over)?.as_ptr() as usize;
    let start = (raw + align - 1) & !(align - 1);
    let head = start - raw;
    let tail = over - head - size;
    if head > 0 {
        // SAFETY: `[raw, raw + head)` lies inside the mapping made just above, unused.
        unsafe { unmap(NonNull::new_unchecked(raw as *mut u8), head) };
    }
    if tail > 0 {
        // SAFETY: `[start + size, start + size + tail)` lies inside the same mapping, unused.
        unsafe { unmap(NonNull::new_unchecked((start + size) as *mut u8), tail) };
    }
    NonNull::new(start as *mut u8)
}

fn map_raw(size: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with a null hint has no preconditions beyond valid flags.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    MAPPED.fetch_add(size, Ordering::Relaxed);
    NonNull::new(p.cast())
}

/// Unmaps `[p, p + size)`.
///
/// # Safety
/// The range was returned by (or lies inside a region returned by) [`map_aligned`] and nothing
/// uses it any more; `size` is a multiple of `PAGE_SIZE`.
pub unsafe fn unmap(p: NonNull<u8>, size: usize) {
    // SAFETY: the caller promises the range is ours and unused; munmap of such a range cannot
    // affect any other Rust object.
    let rc = unsafe { libc::munmap(p.as_ptr().cast(), size) };
    if rc == 0 {
        MAPPED.fetch_sub(size, Ordering::Relaxed);
    }
}

/// Gives the physical memory behind `[p, p + size)` back to the OS; the range stays mapped.
/// `MADV_DONTNEED` (not `MADV_FREE`) so the resident set falls at once, which is what users
/// watching RSS expect. True if the kernel did it, and then the range reads as zero; it refuses
/// locked memory (`mlock`), which keeps its contents.
///
/// # Safety
/// `p` and `size` are multiples of `PAGE_SIZE`, the range is mapped by this module and holds no
/// data anybody still needs.
pub unsafe fn purge(p: *mut u8, size: usize) -> bool {
    debug_assert!(p as usize % PAGE_SIZE == 0 && size % PAGE_SIZE == 0);
    if size == 0 {
        return true;
    }
    // SAFETY: the caller promises the range is ours and unused; DONTNEED only drops its contents.
    unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) == 0 }
}

/// Asks the kernel to back `[p, p + size)` with transparent huge pages (`MADV_HUGEPAGE`) or never
/// to (`MADV_NOHUGEPAGE`), whatever the system default. Huge pages save a program that touches
/// much memory most of its TLB misses and page faults, but a huge page is resident as a whole
/// once any byte of it is touched. Purging part of one splits its mapping, so the resident set
/// still falls by OS pages (the kernel frees the split page's memory lazily). Advisory only:
/// returns whether the kernel took the advice (it refuses where THP is not built in).
///
/// # Safety
/// The range is mapped by this module.
pub unsafe fn advise_huge_pages(p: *mut u8, size: usize, huge: bool) -> bool {
    let advice = if huge {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // SAFETY: the caller promises the range is ours; the advice changes no contents.
    unsafe { libc::madvise(p.cast(), size, advice) == 0 }
}

/// Purges the whole OS pages strictly inside `[start, end)`; partial pages at either end stay.
///
/// # Safety
/// `[start, end)` is mapped by this module and holds no data anybody still needs.
pub unsafe fn purge_inside(start: usize, end: usize) {
    let lo = (start + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    let hi = end & !(PAGE_SIZE - 1);
    if hi > lo {
        // SAFETY: a page-aligned subrange of the caller's unused range.
        unsafe { purge(lo as *mut u8, hi - lo) };
    }
}

/// Resizes a page-aligned mapping, moving it if needed, without copying its pages.
///
/// Ensures: on `Some(q)`, `[q, q + new)` holds the old contents (then zeros) and the old range must
/// no longer be used; on `None` nothing changed.
///
/// # Safety
/// `[p, p + old)` is a whole mapping made by this module, with no alignment beyond `PAGE_SIZE`
/// relied on; both sizes are multiples of `PAGE_SIZE`; nothing else refers to it by address.
pub unsafe fn remap(p: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
    // SAFETY: the caller promises the mapping is ours; MREMAP_MAYMOVE keeps the contents.
    let q = unsafe { libc::mremap(p.as_ptr().cast(), old, new, libc::MREMAP_MAYMOVE) };
    if q == libc::MAP_FAILED {
        return None;
    }
    if new >= old {
        MAPPED.fetch_add(new - old, Ordering::Relaxed);
    } else {
        MAPPED.fetch_sub(old - new, Ordering::Relaxed);
    }
    NonNull::new(q.cast())
}

/// Moves the pages of `[src, src + len)` to `[dst, dst + len)`, replacing whatever was mapped
/// there, without copying or faulting them: resident pages stay resident.
///
/// # Safety
/// `[src, src + len)` lies in one mapping made by this module that nobody uses any more;
/// `[dst, dst + len)` lies in a mapping of ours whose contents there may be discarded; both are
/// page-aligned and disjoint. Afterwards `[src, src + len)` is unmapped.
pub unsafe fn move_pages(src: usize, len: usize, dst: usize) -> bool {
    // SAFETY: the caller promises both ranges are ours; MREMAP_FIXED replaces the destination.
    let q = unsafe {
        libc::mremap(
            src as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst as *mut libc::c_void,
        )
    };
    if q == libc::MAP_FAILED {
        return false;
    }
    // The destination was already counted; the source range is gone.
    MAPPED.fetch_sub(len, Ordering::Relaxed);
    true
}

/// Milliseconds on a monotonic clock (coarse: a vDSO read, no syscall). Used only on slow paths.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The calling process's id.
pub fn process_id() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// The calling thread's kernel id and its process's id, as `(pid, tid)`.
pub fn thread_ids() -> (i32, i32) {
    // SAFETY: neither call has preconditions; `gettid` cannot fail.
    unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) }
}

/// Whether thread `tid` of this process is known to have ended: the kernel has no such thread in
/// it. A thread that still runs, or an id the kernel gave to a newer thread, reads as not ended,
/// so a true answer is never wrong.
pub fn thread_ended(pid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 sends nothing, it only checks that the thread exists; `__errno_location`
    // returns this thread's errno, which is put back: the allocation that called this may succeed,
    // and a program may read errno from a call it made before.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        let ended = libc::syscall(libc::SYS_tgkill, pid, tid, 0) == -1 && *errno == libc::ESRCH;
        *errno = saved;
        ended
    }
}

/// The page size the OS reports (perfalloc assumes `PAGE_SIZE`; checked by a test).
#[cfg(test)]
pub fn os_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// The process's resident set in bytes, from `/proc/self/statm`, read without allocating.
pub fn resident_bytes() -> Option<u64> {
    let mut buf = [0u8; 128];
    // SAFETY: the path is a NUL-terminated literal; `buf` is a valid writable buffer of its length.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    // statm: "size resident shared ...", in pages.
    let mut fields = buf[..n as usize].split(|&b| b == b' ');
    fields.next()?;
    let resident = fields.next()?;
    let mut pages: u64 = 0;
    for &d in resident {
        if !d.is_ascii_digit() {
            return None;
        }
        pages = pages * 10 + (d - b'0') as u64;
    }
    Some(pages * PAGE_SIZE as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_os_page_size_is_the_one_we_assume() {
        assert_eq!(super::os_page_size(), super::PAGE_SIZE);
    }

    #[test]
    fn aligned_mappings_are_aligned() {
        for align in [4096, 1 << 16, 1 << 22] {
            let p = super::map_aligned(1 << 22, align).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: the mapping is ours and unused.
            unsafe { super::unmap(p, 1 << 22) };
        }
    }
}
