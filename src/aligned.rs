//! [`AlignedBuffer`]: a heap byte buffer of any size with any power-of-two alignment.
//!
//! For `O_DIRECT` I/O (block-aligned buffers), SIMD loads (32 or 64 bytes), and keeping hot data
//! on its own cache lines or pages. It allocates through the global allocator with the exact
//! `Layout` it later frees with, so it works with any `#[global_allocator]`; every failure (a bad
//! alignment, a size the `Layout` rules reject, an allocator that returns null) is an
//! [`AlignError`], never a panic or an abort.
//!
//! ```
//! use perfalloc::aligned::AlignedBuffer;
//!
//! let mut block = AlignedBuffer::zeroed(4096, 4096)?;
//! assert_eq!(block.as_ptr() as usize % 4096, 0);
//! block[..5].copy_from_slice(b"hello");
//! assert_eq!(&block[..5], b"hello");
//! # Ok::<(), perfalloc::aligned::AlignError>(())
//! ```

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Why an [`AlignedBuffer`] could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignError {
    /// The alignment is 0 or not a power of two.
    BadAlign {
        /// The alignment asked for.
        align: usize,
    },
    /// `len` rounded up to `align` exceeds `isize::MAX` (the limit of every Rust allocation).
    TooLarge {
        /// The length asked for.
        len: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// The global allocator returned null.
    AllocFailed {
        /// The length asked for.
        len: usize,
        /// The alignment asked for.
        align: usize,
    },
}

impl fmt::Display for AlignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AlignError::BadAlign { align } => write!(f, "alignment {align} is not a power of two"),
            AlignError::TooLarge { len, align } => {
                write!(
                    f,
                    "{len} bytes aligned to {align} exceed the largest possible allocation"
                )
            }
            AlignError::AllocFailed { len, align } => {
                write!(
                    f,
                    "the allocator could not provide {len} bytes aligned to {align}"
                )
            }
        }
    }
}

impl std::error::Error for AlignError {}

/// A heap buffer of `len` initialised bytes whose address is a multiple of `align`.
///
/// # Invariants
///
/// * `layout == Layout::from_size_align(len, align)` (valid: `align` is a power of two and `len`
///   rounded up to it fits in `isize::MAX`).
/// * If `len > 0`, `ptr` came from `std::alloc::alloc_zeroed(layout)`, is owned by this value
///   alone, and all `len` bytes are initialised. It is freed with `dealloc(ptr, layout)` once,
///   in `Drop`.
/// * If `len == 0`, nothing is allocated and `ptr` is the non-null address `align`, which is
///   aligned and valid for zero-sized accesses.
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: an `AlignedBuffer` owns its bytes exclusively (see the invariants), like a `Box<[u8]>`,
// so moving it to another thread or sharing `&AlignedBuffer` (read-only `[u8]`) is as safe as for
// `Box<[u8]>`, which is `Send + Sync`.
unsafe impl Send for AlignedBuffer {}
// SAFETY: as above; `&AlignedBuffer` only gives out `&[u8]`.
unsafe impl Sync for AlignedBuffer {}

/// Process-wide figures for [`AlignedBuffer`] (see [`AlignedBuffer::stats`]).
///
/// `live_buffers` and `live_bytes` are gauges; the rest are counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlignedStats {
    /// Buffers that allocated (zero-length ones do not).
    pub allocations: u64,
    /// Requests that returned an error.
    pub failures: u64,
    /// Allocated buffers not yet dropped.
    pub live_buffers: u64,
    /// Bytes held by those buffers (their lengths).
    pub live_bytes: u64,
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static LIVE_BUFFERS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

impl AlignedBuffer {
    /// A buffer of `len` bytes aligned to `align`.
    ///
    /// The bytes are zero: Rust cannot hand out uninitialised memory as `&[u8]`, and the
    /// allocator's zeroed path is the cheapest way to initialise it (fresh pages from the OS are
    /// already zero). So `new` and [`zeroed`](Self::zeroed) do the same thing; use `zeroed` where
    /// the code relies on the zeros, to say so.
    ///
    /// # Errors
    ///
    /// [`AlignError::BadAlign`] unless `align` is a power of two, [`AlignError::TooLarge`] if
    /// `len` rounded up to `align` exceeds `isize::MAX`, [`AlignError::AllocFailed`] if the
    /// global allocator returns null.
    ///
    /// ```
    /// use perfalloc::aligned::{AlignedBuffer, AlignError};
    ///
    /// let buf = AlignedBuffer::new(100, 64).unwrap();
    /// assert_eq!((buf.len(), buf.align()), (100, 64));
    /// assert_eq!(buf.as_ptr() as usize % 64, 0);
    /// assert_eq!(AlignedBuffer::new(100, 48).unwrap_err(), AlignError::BadAlign { align: 48 });
    /// assert!(matches!(AlignedBuffer::new(usize::MAX, 8), Err(AlignError::TooLarge { .. })));
    /// ```
    pub fn new(len: usize, align: usize) -> Result<Self, AlignError> {
        Self::zeroed(len, align)
    }

    /// A buffer of `len` zero bytes aligned to `align`. Zero-length buffers do not allocate.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    ///
    /// ```
    /// use perfalloc::aligned::AlignedBuffer;
    ///
    /// let buf = AlignedBuffer::zeroed(8192, 4096).unwrap();
    /// assert!(buf.iter().all(|&b| b == 0));
    /// let empty = AlignedBuffer::zeroed(0, 1 << 20).unwrap();
    /// assert!(empty.is_empty());
    /// assert_eq!(empty.as_ptr() as usize % (1 << 20), 0);
    /// ```
    pub fn zeroed(len: usize, align: usize) -> Result<Self, AlignError> {
        let result = Self::try_zeroed(len, align);
        if result.is_err() {
            FAILURES.fetch_add(1, Relaxed);
        }
        result
    }

    fn try_zeroed(len: usize, align: usize) -> Result<Self, AlignError> {
        if !align.is_power_of_two() {
            return Err(AlignError::BadAlign { align });
        }
        let layout =
            Layout::from_size_align(len, align).map_err(|_| AlignError::TooLarge { len, align })?;
        if len == 0 {
            // A non-null, `align`-aligned address that is never dereferenced for more than zero
            // bytes. (`ptr::dangling_mut`-style; built by hand to stay within our MSRV.)
            let ptr =
                NonNull::new(std::ptr::null_mut::<u8>().wrapping_add(align)).expect("align >= 1");
            return Ok(AlignedBuffer { ptr, layout });
        }
        // SAFETY: `layout` has a non-zero size (checked above) and a valid alignment (it was
        // built by `Layout::from_size_align`).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(AlignError::AllocFailed { len, align })?;
        ALLOCATIONS.fetch_add(1, Relaxed);
        LIVE_BUFFERS.fetch_add(1, Relaxed);
        LIVE_BYTES.fetch_add(len, Relaxed);
        Ok(AlignedBuffer { ptr, layout })
    }

    /// A copy of `data` aligned to `align`.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    ///
    /// ```
    /// let buf = perfalloc::aligned::AlignedBuffer::from_slice(b"abc", 32).unwrap();
    /// assert_eq!(&buf[..], b"abc");
    /// ```
    pub fn from_slice(data: &[u8], align: usize) -> Result<Self, AlignError> {
        let mut buf = Self::zeroed(data.len(), align)?;
        buf.copy_from_slice(data);
        Ok(buf)
    }

    /// Length in bytes.
    ///
    /// ```
    /// assert_eq!(perfalloc::aligned::AlignedBuffer::new(3, 8).unwrap().len(), 3);
    /// ```
    #[inline]
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the length is 0.
    ///
    /// ```
    /// assert!(perfalloc::aligned::AlignedBuffer::new(0, 8).unwrap().is_empty());
    /// ```
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The alignment the buffer was made with (its address may happen to be more aligned).
    ///
    /// ```
    /// assert_eq!(perfalloc::aligned::AlignedBuffer::new(3, 512).unwrap().align(), 512);
    /// ```
    #[inline]
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// Process-wide statistics of aligned buffers: allocations, failures and bytes held.
    ///
    /// ```
    /// use perfalloc::aligned::AlignedBuffer;
    ///
    /// let before = AlignedBuffer::stats();
    /// let _buf = AlignedBuffer::new(64, 64).unwrap();
    /// let _ = AlignedBuffer::new(64, 3);
    /// let after = AlignedBuffer::stats();
    /// assert!(after.allocations > before.allocations);
    /// assert!(after.failures > before.failures);
    /// ```
    pub fn stats() -> AlignedStats {
        AlignedStats {
            allocations: ALLOCATIONS.load(Relaxed),
            failures: FAILURES.load(Relaxed),
            live_buffers: LIVE_BUFFERS.load(Relaxed),
            live_bytes: LIVE_BYTES.load(Relaxed) as u64,
        }
    }
}

impl std::ops::Deref for AlignedBuffer {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is non-null, aligned and valid for reads of `len` initialised bytes that
        // this value owns (or `len == 0`); see the type's invariants. The borrow of `self` keeps
        // them alive and unaliased by `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }
}

impl std::ops::DerefMut for AlignedBuffer {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }
}

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for AlignedBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Clone for AlignedBuffer {
    /// A copy with the same length and alignment.
    ///
    /// # Panics
    ///
    /// If the allocator fails (like `Vec::clone`); use [`AlignedBuffer::from_slice`] to handle it.
    fn clone(&self) -> Self {
        AlignedBuffer::from_slice(self, self.align())
            .unwrap_or_else(|e| panic!("AlignedBuffer::clone: {e}"))
    }
}

impl fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("len", &self.len())
            .field("align", &self.align())
            .finish()
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        if self.layout.size() == 0 {
            return;
        }
        // SAFETY: `len > 0`, so `ptr` came from `alloc_zeroed(self.layout)` and is still owned by
        // us (invariants); `drop` runs once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        LIVE_BUFFERS.fetch_sub(1, Relaxed);
        LIVE_BYTES.fetch_sub(self.layout.size(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static_assertions::assert_impl_all!(AlignedBuffer: Send, Sync);

    #[test]
    fn every_power_of_two_up_to_a_mebibyte() {
        for shift in 0..=20 {
            let align = 1usize << shift;
            for len in [0, 1, align - 1, align, align + 1, 3 * align] {
                let mut buf = AlignedBuffer::new(len, align).unwrap();
                assert_eq!(buf.as_ptr() as usize % align, 0, "len {len} align {align}");
                assert_eq!(buf.len(), len);
                assert!(buf.iter().all(|&b| b == 0));
                buf.fill(0xAB);
                assert!(buf.iter().all(|&b| b == 0xAB));
            }
        }
    }

    #[test]
    fn bad_alignments_are_errors() {
        for align in [0, 3, 6, 12, 48, usize::MAX] {
            assert_eq!(
                AlignedBuffer::new(8, align).unwrap_err(),
                AlignError::BadAlign { align }
            );
            assert_eq!(
                AlignedBuffer::zeroed(0, align).unwrap_err(),
                AlignError::BadAlign { align }
            );
        }
    }
}
