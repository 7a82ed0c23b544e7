//! [`MappedFile`]: a read-only memory-mapped file.
//!
//! Reading a file through a map costs no copy into a user buffer and no allocation of the
//! file's size: pages come from the page cache on first touch. For a 256 MiB file in the page
//! cache, opening it and reading every byte took 1/14 of the time of `std::fs::read` + the same
//! read (see the README's Toolkit section). It does not help for small files (the `mmap`/`munmap` calls
//! cost more than reading a few KiB) or on media where a page fault is slow.
//!
//! # The caveat every memory map has
//!
//! The slice is backed by the file itself. If another process truncates the file while it is
//! mapped, touching the lost pages raises `SIGBUS`; if another process writes to it, the bytes
//! under the `&[u8]` change. Only map files that nothing modifies while the map lives (build
//! artefacts, immutable data files, your own files). This is why `memmap2::Mmap::map` is
//! `unsafe`; `MappedFile::open` keeps the safe signature the toolkit asked for and puts the
//! precondition here.
//!
//! ```
//! use perfalloc::mmap::MappedFile;
//!
//! let path = std::env::temp_dir().join(format!("perfalloc-mmap-doc-{}", std::process::id()));
//! std::fs::write(&path, b"line one\nline two\n")?;
//! let map = MappedFile::open(&path)?;
//! assert_eq!(map.iter().filter(|&&b| b == b'\n').count(), 2);
//! drop(map);
//! std::fs::remove_file(&path)?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Why a file could not be mapped, besides the OS's own errors. Carried inside the
/// [`io::Error`] that [`MappedFile::open`] returns; get it back with
/// `err.get_ref().and_then(|e| e.downcast_ref::<MapError>())`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The file is empty: a zero-length mapping is not possible (`mmap` fails with `EINVAL`).
    /// Files that report size 0 but have contents (`/proc`, pipes) are also caught here.
    /// Kind [`io::ErrorKind::InvalidInput`].
    Empty,
    /// The path is not a regular file (a directory, a device, a socket).
    /// Kind [`io::ErrorKind::InvalidInput`].
    NotAFile,
    /// The file is larger than the address space. Kind [`io::ErrorKind::InvalidInput`].
    TooLarge {
        /// The file's size.
        len: u64,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Empty => f.write_str("cannot map an empty file"),
            MapError::NotAFile => f.write_str("cannot map something that is not a regular file"),
            MapError::TooLarge { len } => {
                write!(f, "a file of {len} bytes does not fit in the address space")
            }
        }
    }
}

impl std::error::Error for MapError {}

impl From<MapError> for io::Error {
    fn from(e: MapError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Process-wide figures for [`MappedFile`] (see [`MappedFile::stats`]). `live_maps` and
/// `live_bytes` are gauges; the rest are counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStats {
    /// Successful `open`s.
    pub opens: u64,
    /// `open`s that returned an error.
    pub failures: u64,
    /// Maps not yet dropped.
    pub live_maps: u64,
    /// Bytes mapped by them (address space, not resident memory).
    pub live_bytes: u64,
}

static OPENS: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static LIVE_MAPS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

/// A read-only, private memory map of a whole file; derefs to its bytes.
///
/// # Invariants
///
/// * `len > 0`, and `ptr..ptr + len` is a `PROT_READ`, `MAP_PRIVATE` mapping of the file's first
///   `len` bytes, owned by this value alone and unmapped once, in `Drop`.
/// * (On non-Unix targets the file is read into `data` instead; see `open`.)
///
/// See the module docs for the precondition on the file (nobody truncates or writes it while
/// mapped).
pub struct MappedFile {
    #[cfg(unix)]
    ptr: std::ptr::NonNull<u8>,
    #[cfg(unix)]
    len: usize,
    #[cfg(not(unix))]
    data: Box<[u8]>,
}

// SAFETY: the mapping is read-only and owned exclusively by this value (invariants), so it can
// move between threads and be read from several at once, like a `Box<[u8]>`.
unsafe impl Send for MappedFile {}
// SAFETY: as above; only `&[u8]` is ever handed out.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps the whole file at `path`, read-only.
    ///
    /// # Errors
    ///
    /// The OS's errors for opening, inspecting and mapping the file (not found, permission
    /// denied, ...), unchanged; and an [`io::ErrorKind::InvalidInput`] error carrying a
    /// [`MapError`] for an empty file, a path that is not a regular file, or a file larger than
    /// the address space.
    ///
    /// ```
    /// use perfalloc::mmap::{MappedFile, MapError};
    ///
    /// let dir = std::env::temp_dir();
    /// let err = MappedFile::open(&dir).unwrap_err(); // a directory
    /// assert_eq!(err.get_ref().unwrap().downcast_ref::<MapError>(), Some(&MapError::NotAFile));
    /// assert_eq!(
    ///     MappedFile::open(dir.join("no/such/file")).unwrap_err().kind(),
    ///     std::io::ErrorKind::NotFound
    /// );
    /// ```
    pub fn open(path: impl AsRef<Path>) -> io::Result<MappedFile> {
        let result = Self::try_open(path.as_ref());
        match &result {
            Ok(map) => {
                OPENS.fetch_add(1, Relaxed);
                LIVE_MAPS.fetch_add(1, Relaxed);
                LIVE_BYTES.fetch_add(map.len() as u64, Relaxed);
            }
            Err(_) => {
                FAILURES.fetch_add(1, Relaxed);
            }
        }
        result
    }

    #[cfg(unix)]
    fn try_open(path: &Path) -> io::Result<MappedFile> {
        use std::os::unix::io::AsRawFd;

        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(MapError::NotAFile.into());
        }
        let len = meta.len();
        if len == 0 {
            return Err(MapError::Empty.into());
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or(MapError::TooLarge { len })?;
        // SAFETY: a fresh mapping (address hint null) of `len > 0` bytes of an open, readable
        // file descriptor; `mmap` touches no memory of ours. The mapping outlives `file`
        // (closing the descriptor does not unmap).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MappedFile { ptr, len })
    }

    /// Without `mmap`: read the file, keeping the same errors for empty files and non-files.
    #[cfg(not(unix))]
    fn try_open(path: &Path) -> io::Result<MappedFile> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(MapError::NotAFile.into());
        }
        let data = std::fs::read(path)?.into_boxed_slice();
        if data.is_empty() {
            return Err(MapError::Empty.into());
        }
        Ok(MappedFile { data })
    }

    /// Length of the mapped file in bytes (never 0).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("perfalloc-mmap-len-{}", std::process::id()));
    /// # std::fs::write(&path, b"12345")?;
    /// let map = perfalloc::mmap::MappedFile::open(&path)?;
    /// assert_eq!(map.len(), 5);
    /// # drop(map); std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    #[allow(clippy::len_without_is_empty)] // never empty: `open` rejects empty files
    pub fn len(&self) -> usize {
        #[cfg(unix)]
        return self.len;
        #[cfg(not(unix))]
        return self.data.len();
    }

    /// Tells the kernel the map will be read front to back (`MADV_SEQUENTIAL`: aggressive
    /// read-ahead, pages dropped behind the reader). A hint: errors are ignored, and it does
    /// nothing off Unix.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("perfalloc-mmap-adv-{}", std::process::id()));
    /// # std::fs::write(&path, b"abc")?;
    /// let map = perfalloc::mmap::MappedFile::open(&path)?;
    /// map.advise_sequential();
    /// assert_eq!(&map[..], b"abc");
    /// # drop(map); std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn advise_sequential(&self) {
        #[cfg(unix)]
        // SAFETY: `ptr..ptr + len` is our own mapping (invariants); `madvise` with
        // `MADV_SEQUENTIAL` changes no contents, only the kernel's paging policy.
        unsafe {
            libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_SEQUENTIAL);
        }
    }

    /// Process-wide statistics of mapped files: opens, failures and bytes mapped.
    ///
    /// ```
    /// use perfalloc::mmap::MappedFile;
    ///
    /// let before = MappedFile::stats();
    /// assert!(MappedFile::open("/definitely/not/here").is_err());
    /// assert!(MappedFile::stats().failures > before.failures);
    /// ```
    pub fn stats() -> MapStats {
        MapStats {
            opens: OPENS.load(Relaxed),
            failures: FAILURES.load(Relaxed),
            live_maps: LIVE_MAPS.load(Relaxed),
            live_bytes: LIVE_BYTES.load(Relaxed),
        }
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        #[cfg(unix)]
        // SAFETY: `ptr..ptr + len` is a readable mapping we own until `drop` (invariants), and
        // mapped file bytes are initialised. Its contents stay fixed as long as nobody modifies
        // the file, which is `open`'s documented precondition.
        return unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        #[cfg(not(unix))]
        return &self.data;
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedFile")
            .field("len", &self.len())
            .finish()
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            // SAFETY: `ptr..ptr + len` is our mapping (invariants); no borrow of it outlives
            // `&self`, and `drop` runs once. munmap can only fail for arguments that are not
            // a mapping, which the invariants rule out, so its result is only debug-checked.
            let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            debug_assert_eq!(rc, 0, "munmap failed: {}", io::Error::last_os_error());
        }
        LIVE_MAPS.fetch_sub(1, Relaxed);
        LIVE_BYTES.fetch_sub(self.len() as u64, Relaxed);
    }
}
