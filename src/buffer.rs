//! [`ByteBuffer`]: a growable byte buffer with separate read and write cursors, for I/O framing
//! without copies.
//!
//! Bytes arrive at the write cursor (from [`ByteBuffer::extend_from_slice`], [`std::io::Write`],
//! [`ByteBuffer::fill_from`] or [`ByteBuffer::spare_capacity_mut`] + [`ByteBuffer::commit`]) and
//! leave at the read cursor (through [`ByteBuffer::readable`] + [`ByteBuffer::advance`] to parse in
//! place, or [`std::io::Read`] to copy out). Consumed bytes are never moved on their own: space is
//! reclaimed by resetting both cursors when everything has been read, or by [`ByteBuffer::compact`]
//! (explicitly, or from [`ByteBuffer::reserve`] when moving the unread tail is cheaper than growing).
//!
//! ```
//! use perfalloc::buffer::ByteBuffer;
//!
//! let mut buf = ByteBuffer::with_capacity(64);
//! // Two length-prefixed frames, the second one incomplete.
//! buf.extend_from_slice(&[3, b'a', b'b', b'c', 5, b'x']);
//! let mut frames = Vec::new();
//! while let Some(&len) = buf.readable().first() {
//!     let len = len as usize;
//!     if buf.readable().len() < 1 + len {
//!         break; // wait for more input
//!     }
//!     frames.push(buf.readable()[1..1 + len].to_vec());
//!     buf.advance(1 + len);
//! }
//! assert_eq!(frames, vec![b"abc".to_vec()]);
//! assert_eq!(buf.readable(), &[5, b'x']);
//! ```

use std::io;
use std::mem::MaybeUninit;

use serde::{Deserialize, Serialize};

/// [`ByteBuffer::fill_from`] makes at least this much room before reading, so that a reader is
/// never handed a tiny slice (one `read(2)` per few bytes would cost far more than the copy it
/// saves). 8 KiB is the default buffer size of `std::io::BufReader`.
const MIN_FILL: usize = 8 * 1024;

/// A growable byte buffer with a read cursor and a write cursor.
///
/// # Invariants
///
/// With `read` the read cursor, `write == data.len()` the write cursor, `init` the initialised
/// watermark and `capacity == data.capacity()`:
///
/// * `read <= write <= init <= capacity`, after every call, including [`advance`](Self::advance)
///   past the end (it is clamped) and a failed [`fill_from`](Self::fill_from);
/// * `data[read..write]` are the readable (unread) bytes, in the order they were written;
/// * `data[write..init]` (inside the spare capacity) are initialised bytes of no meaning, so
///   [`fill_from`](Self::fill_from) can lend them to a `Read` as `&mut [u8]` without zeroing them
///   again; `init` falls back to `write` whenever the allocation changes;
/// * if `read == write`, both are 0 once the call returns (an emptied buffer starts over at the
///   front, which costs nothing and is why steady framing never needs to move bytes).
///
/// # Example
///
/// ```
/// use std::io::{Read, Write};
/// use perfalloc::buffer::ByteBuffer;
///
/// let mut buf = ByteBuffer::new();
/// buf.write_all(b"hello world").unwrap();
/// let mut word = [0u8; 5];
/// buf.read_exact(&mut word).unwrap();
/// assert_eq!(&word, b"hello");
/// assert_eq!(buf.advance(100), 6, "advance is clamped to what is readable");
/// assert!(buf.is_empty());
/// ```
#[derive(Default)]
pub struct ByteBuffer {
    /// `len()` is the write cursor; the allocation is the buffer.
    data: Vec<u8>,
    /// Read cursor: `data[..read]` has been consumed.
    read: usize,
    /// Initialised watermark, see the type's invariants.
    init: usize,
    stats: ByteBufferStats,
}

/// What a [`ByteBuffer`] has done since it was created (see [`ByteBuffer::stats`]).
///
/// `capacity` and `readable` are gauges (current values); every other field is a counter that
/// only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteBufferStats {
    /// Bytes held: the current allocation's size.
    pub capacity: usize,
    /// Bytes written and not yet read.
    pub readable: usize,
    /// Bytes ever written.
    pub bytes_written: u64,
    /// Bytes ever consumed by `read` or `advance`.
    pub bytes_consumed: u64,
    /// Times the allocation was replaced by a larger one.
    pub grows: u64,
    /// Times the unread tail was moved to the front (explicitly or by `reserve`).
    pub compactions: u64,
    /// Bytes moved by those compactions and by growth (only unread bytes are ever moved).
    pub bytes_moved: u64,
}

impl ByteBuffer {
    /// An empty buffer that has not allocated.
    ///
    /// ```
    /// let buf = perfalloc::buffer::ByteBuffer::new();
    /// assert_eq!(buf.capacity(), 0);
    /// ```
    pub const fn new() -> Self {
        ByteBuffer {
            data: Vec::new(),
            read: 0,
            init: 0,
            stats: ByteBufferStats {
                capacity: 0,
                readable: 0,
                bytes_written: 0,
                bytes_consumed: 0,
                grows: 0,
                compactions: 0,
                bytes_moved: 0,
            },
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    ///
    /// ```
    /// let buf = perfalloc::buffer::ByteBuffer::with_capacity(100);
    /// assert!(buf.capacity() >= 100);
    /// assert!(buf.is_empty());
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = ByteBuffer::new();
        buf.data = Vec::with_capacity(capacity);
        buf
    }

    /// Number of readable (written and not yet consumed) bytes.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"abc");
    /// buf.advance(1);
    /// assert_eq!(buf.len(), 2);
    /// ```
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() - self.read
    }

    /// Whether there is nothing to read.
    ///
    /// ```
    /// assert!(perfalloc::buffer::ByteBuffer::new().is_empty());
    /// ```
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the allocation in bytes (consumed prefix + readable bytes + spare capacity).
    ///
    /// ```
    /// let buf = perfalloc::buffer::ByteBuffer::with_capacity(10);
    /// assert!(buf.capacity() >= 10);
    /// ```
    #[inline]
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Bytes consumed at the front that have not been reclaimed yet (the read cursor).
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"abcd");
    /// buf.advance(3);
    /// assert_eq!(buf.consumed(), 3);
    /// buf.advance(1); // now empty: both cursors go back to the front
    /// assert_eq!(buf.consumed(), 0);
    /// ```
    #[inline]
    pub fn consumed(&self) -> usize {
        self.read
    }

    /// The readable bytes, to parse in place. Follow with [`advance`](Self::advance).
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"GET /");
    /// assert!(buf.readable().starts_with(b"GET"));
    /// ```
    #[inline]
    pub fn readable(&self) -> &[u8] {
        &self.data[self.read..]
    }

    /// The readable bytes, mutably (to decode or unmask in place).
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"abc");
    /// buf.readable_mut().make_ascii_uppercase();
    /// assert_eq!(buf.readable(), b"ABC");
    /// ```
    #[inline]
    pub fn readable_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.read..]
    }

    /// Consumes up to `n` readable bytes and returns how many were consumed: `min(n, self.len())`.
    ///
    /// Advancing past the end is not an error: it is clamped to the readable length, so the
    /// cursors can never cross. When the buffer becomes empty both cursors return to the front.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"abc");
    /// assert_eq!(buf.advance(2), 2);
    /// assert_eq!(buf.advance(5), 1);
    /// assert_eq!(buf.advance(1), 0);
    /// ```
    #[inline]
    pub fn advance(&mut self, n: usize) -> usize {
        let n = n.min(self.len());
        self.read += n;
        self.stats.bytes_consumed += n as u64;
        if self.read == self.data.len() {
            self.reset_cursors();
        }
        self.debug_check();
        n
    }

    /// Discards everything readable and returns both cursors to the front; keeps the allocation.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::with_capacity(16);
    /// buf.extend_from_slice(b"abc");
    /// buf.clear();
    /// assert!(buf.is_empty());
    /// assert!(buf.capacity() >= 16);
    /// ```
    pub fn clear(&mut self) {
        self.advance(self.len());
    }

    #[inline]
    fn reset_cursors(&mut self) {
        // `init` is untouched: the bytes stay initialised after `truncate`.
        self.read = 0;
        self.data.clear();
    }

    /// Appends `src` after the readable bytes, growing (or compacting) as needed.
    ///
    /// This is the infallible form of [`std::io::Write::write`]; both append everything.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"ab");
    /// buf.extend_from_slice(b"cd");
    /// assert_eq!(buf.readable(), b"abcd");
    /// ```
    #[inline]
    pub fn extend_from_slice(&mut self, src: &[u8]) {
        self.reserve(src.len());
        self.data.extend_from_slice(src);
        self.init = self.init.max(self.data.len());
        self.stats.bytes_written += src.len() as u64;
        self.debug_check();
    }

    /// Copies up to `dst.len()` readable bytes into `dst`, consumes them and returns how many.
    ///
    /// This is the inherent form of [`std::io::Read::read`] (which never fails for this type).
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"abc");
    /// let mut out = [0u8; 2];
    /// assert_eq!(buf.read_into(&mut out), 2);
    /// assert_eq!(&out, b"ab");
    /// ```
    #[inline]
    pub fn read_into(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len());
        dst[..n].copy_from_slice(&self.data[self.read..self.read + n]);
        self.advance(n)
    }

    /// The spare capacity after the write cursor, for a reader (a socket, a file, a decoder) to
    /// write into directly. Make it at least as large as you need with [`reserve`](Self::reserve)
    /// first, then publish the bytes you wrote with [`commit`](Self::commit).
    ///
    /// ```
    /// use perfalloc::buffer::ByteBuffer;
    ///
    /// let mut buf = ByteBuffer::new();
    /// buf.reserve(4);
    /// let spare = buf.spare_capacity_mut();
    /// assert!(spare.len() >= 4);
    /// for (slot, byte) in spare.iter_mut().zip(b"ping") {
    ///     slot.write(*byte);
    /// }
    /// // SAFETY: the first 4 spare bytes were just initialised.
    /// unsafe { buf.commit(4) };
    /// assert_eq!(buf.readable(), b"ping");
    /// ```
    #[inline]
    pub fn spare_capacity_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        self.data.spare_capacity_mut()
    }

    /// Moves the write cursor forward by `n`, making the first `n` bytes of
    /// [`spare_capacity_mut`](Self::spare_capacity_mut) readable.
    ///
    /// # Safety
    ///
    /// `n <= self.spare_capacity_mut().len()`, and the first `n` bytes of the spare capacity have
    /// been initialised since the last call that could reallocate (`reserve`, `extend_from_slice`,
    /// `write`, `fill_from`, `compact`).
    ///
    /// # Panics
    ///
    /// If `n` exceeds the spare capacity (checked in every build: it is one comparison).
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::with_capacity(8);
    /// buf.spare_capacity_mut()[0].write(42);
    /// // SAFETY: one spare byte was initialised just above.
    /// unsafe { buf.commit(1) };
    /// assert_eq!(buf.readable(), &[42]);
    /// ```
    #[inline]
    pub unsafe fn commit(&mut self, n: usize) {
        let spare = self.data.capacity() - self.data.len();
        assert!(
            n <= spare,
            "commit({n}) beyond the spare capacity ({spare})"
        );
        let new_len = self.data.len() + n;
        // SAFETY: `new_len <= capacity` (checked above) and the caller promises that the bytes
        // `data[len..new_len]` are initialised.
        unsafe { self.data.set_len(new_len) };
        self.init = self.init.max(new_len);
        self.stats.bytes_written += n as u64;
        self.debug_check();
    }

    /// Reads once from `reader` straight into the spare capacity and returns how many bytes were
    /// read (`Ok(0)` means end of input). The safe alternative to
    /// [`spare_capacity_mut`](Self::spare_capacity_mut) + [`commit`](Self::commit).
    ///
    /// At least 8 KiB of room is made first (by compacting or growing, see
    /// [`reserve`](Self::reserve)); the reader is then offered all of the spare capacity.
    /// Spare bytes are zeroed once per allocation before they are first lent to a reader (a
    /// `&mut [u8]` must not point at uninitialised memory), never again afterwards.
    ///
    /// # Errors
    ///
    /// The reader's errors, unchanged (the buffer is then as before the call, except perhaps
    /// for a larger capacity), and [`io::ErrorKind::InvalidData`] if the reader claims to have
    /// read more bytes than it was given (a broken `Read` impl).
    ///
    /// ```
    /// use perfalloc::buffer::ByteBuffer;
    ///
    /// let mut input: &[u8] = b"some bytes from a socket";
    /// let mut buf = ByteBuffer::new();
    /// while buf.fill_from(&mut input).unwrap() > 0 {}
    /// assert_eq!(buf.readable(), b"some bytes from a socket");
    /// ```
    pub fn fill_from<R: io::Read + ?Sized>(&mut self, reader: &mut R) -> io::Result<usize> {
        if self.data.capacity() - self.data.len() < MIN_FILL {
            self.reserve(MIN_FILL);
        }
        let len = self.data.len();
        let cap = self.data.capacity();
        if self.init < cap {
            let spare = &mut self.data.spare_capacity_mut()[self.init - len..];
            // Zeroing through `MaybeUninit` is always allowed; it makes `data[init..cap]`
            // initialised, which is what the slice below needs.
            spare.fill(MaybeUninit::new(0));
            self.init = cap;
        }
        // SAFETY: `len..cap` is inside the allocation, and `init == cap` (just above) means every
        // byte of it is initialised. The slice borrows `self.data` mutably and is not used after
        // `read` returns, so nothing else aliases it.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().add(len), cap - len) };
        let n = reader.read(spare)?;
        if n > cap - len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "Read::read returned more bytes than the buffer it was given",
            ));
        }
        // SAFETY: `n <= cap - len` (checked just above) and those bytes are initialised.
        unsafe { self.commit(n) };
        Ok(n)
    }

    /// Makes room to write at least `additional` more bytes without another allocation.
    ///
    /// If the spare capacity is too small, the unread tail is moved to the front (reclaiming the
    /// consumed prefix) when that is cheaper than growing: when the prefix would then make enough
    /// room *and* the prefix is at least as long as the tail. The second condition keeps the
    /// cost amortised O(1) per byte: every byte moved was paid for by a byte consumed since the
    /// last move, so a reader that lags by a few bytes cannot make every write copy the whole
    /// buffer. Otherwise the buffer grows to at least twice its capacity; when it grows, only the
    /// unread tail is copied into the new allocation, never the consumed prefix.
    ///
    /// # Panics
    ///
    /// If the new capacity overflows `isize::MAX` bytes, like `Vec::reserve`.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::with_capacity(16);
    /// buf.extend_from_slice(&[0; 16]);
    /// buf.advance(12); // 4 unread bytes at the back, 12 consumed at the front
    /// let cap = buf.capacity();
    /// buf.reserve(8); // moving 4 bytes is cheaper than a new allocation
    /// assert_eq!(buf.capacity(), cap);
    /// assert_eq!(buf.consumed(), 0);
    /// assert_eq!(buf.stats().compactions, 1);
    /// ```
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        if self.data.capacity() - self.data.len() >= additional {
            return;
        }
        self.reserve_slow(additional);
    }

    #[cold]
    #[inline(never)]
    fn reserve_slow(&mut self, additional: usize) {
        let unread = self.len();
        let cap = self.data.capacity();
        // Enough room after compaction, and the move is paid for by the consumed prefix.
        if cap - unread >= additional && self.read >= unread {
            self.compact();
            return;
        }
        let needed = unread
            .checked_add(additional)
            .expect("ByteBuffer capacity overflow");
        let new_cap = needed.max(cap.saturating_mul(2)).max(64);
        if self.read == 0 {
            // Nothing consumed: let the allocator extend in place if it can (`realloc`).
            self.data.reserve_exact(new_cap - self.data.len());
        } else {
            let mut fresh = Vec::with_capacity(new_cap);
            fresh.extend_from_slice(self.readable());
            self.data = fresh;
            self.read = 0;
        }
        // The new allocation's spare bytes are uninitialised.
        self.init = self.data.len();
        self.stats.grows += 1;
        self.stats.bytes_moved += unread as u64;
        self.debug_check();
    }

    /// Moves the unread bytes to the front of the allocation, reclaiming the consumed prefix, and
    /// returns how many bytes were moved (0 if there was no consumed prefix). Never allocates.
    ///
    /// [`reserve`](Self::reserve) calls this on its own when it is the cheaper option, so
    /// calling it yourself is only needed before handing
    /// [`spare_capacity_mut`](Self::spare_capacity_mut) to a reader.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"xxxxabc");
    /// buf.advance(4);
    /// assert_eq!(buf.compact(), 3);
    /// assert_eq!(buf.consumed(), 0);
    /// assert_eq!(buf.readable(), b"abc");
    /// ```
    pub fn compact(&mut self) -> usize {
        if self.read == 0 {
            return 0;
        }
        let unread = self.len();
        self.data.copy_within(self.read.., 0);
        self.data.truncate(unread);
        self.read = 0;
        // `init` is unchanged: the bytes behind the new write cursor are still initialised.
        self.stats.compactions += 1;
        self.stats.bytes_moved += unread as u64;
        self.debug_check();
        unread
    }

    /// A snapshot of what this buffer holds and has done.
    ///
    /// ```
    /// let mut buf = perfalloc::buffer::ByteBuffer::new();
    /// buf.extend_from_slice(b"abc");
    /// buf.advance(1);
    /// let s = buf.stats();
    /// assert_eq!((s.bytes_written, s.bytes_consumed, s.readable), (3, 1, 2));
    /// ```
    pub fn stats(&self) -> ByteBufferStats {
        ByteBufferStats {
            capacity: self.capacity(),
            readable: self.len(),
            ..self.stats.clone()
        }
    }

    /// Checks the invariants stated on [`ByteBuffer`]; panics with the broken one.
    ///
    /// Tests call this after every step; the methods call it under `debug_assertions`.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let (read, write, init, cap) =
            (self.read, self.data.len(), self.init, self.data.capacity());
        assert!(read <= write, "read {read} > write {write}");
        assert!(write <= init, "write {write} > init {init}");
        assert!(init <= cap, "init {init} > capacity {cap}");
        assert!(
            read < write || read == 0,
            "empty buffer with read cursor {read}"
        );
    }

    #[inline(always)]
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }
}

impl std::fmt::Debug for ByteBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteBuffer")
            .field("read", &self.read)
            .field("write", &self.data.len())
            .field("capacity", &self.data.capacity())
            .finish()
    }
}

impl io::Write for ByteBuffer {
    /// Appends all of `buf`; never fails and never writes less.
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for ByteBuffer {
    /// Copies out and consumes up to `buf.len()` bytes; never fails. `Ok(0)` when empty.
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_into(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn grow_moves_only_the_unread_tail() {
        let mut buf = ByteBuffer::with_capacity(64);
        buf.extend_from_slice(&[1; 60]);
        buf.advance(10); // 50 unread; consumed prefix 10 < 50, so reserve must grow
        buf.reserve(40);
        buf.check_invariants();
        let s = buf.stats();
        assert_eq!(s.grows, 1);
        assert_eq!(s.compactions, 0);
        assert_eq!(
            s.bytes_moved, 50,
            "the 10 consumed bytes must not be copied"
        );
        assert_eq!(buf.consumed(), 0);
        assert_eq!(buf.readable(), &[1; 50][..]);
        assert!(buf.capacity() >= 90);
    }

    #[test]
    fn lagging_reader_does_not_compact_every_time() {
        // The reader stays one byte behind a writer that fills the buffer: compaction would move
        // almost everything for one byte of room, so `reserve` must grow instead.
        let mut buf = ByteBuffer::with_capacity(64);
        buf.extend_from_slice(&[7; 64]);
        buf.advance(1);
        buf.extend_from_slice(&[7; 1]);
        assert_eq!(buf.stats().compactions, 0);
        assert_eq!(buf.stats().grows, 1);
        buf.check_invariants();
    }

    #[test]
    fn fill_from_zeroes_once_per_allocation() {
        let mut buf = ByteBuffer::new();
        let mut src: &[u8] = &[9; 100];
        assert_eq!(buf.fill_from(&mut src).unwrap(), 100);
        assert_eq!(buf.init, buf.capacity());
        buf.clear();
        assert_eq!(
            buf.init,
            buf.capacity(),
            "clearing keeps the bytes initialised"
        );
        buf.check_invariants();
    }

    #[test]
    fn lying_reader_is_an_error_not_ub() {
        struct Liar;
        impl Read for Liar {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                Ok(buf.len() + 1)
            }
        }
        let mut buf = ByteBuffer::new();
        let err = buf.fill_from(&mut Liar).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.is_empty());
        buf.check_invariants();
    }

    #[test]
    #[should_panic(expected = "beyond the spare capacity")]
    fn commit_past_capacity_panics() {
        let mut buf = ByteBuffer::with_capacity(4);
        let n = buf.capacity() + 1;
        // SAFETY: deliberately broken; `commit` must catch it before touching the length.
        unsafe { buf.commit(n) };
    }

    #[test]
    fn io_traits_round_trip() {
        let mut buf = ByteBuffer::new();
        write!(buf, "{}-{}", 12, 3.5).unwrap();
        let mut s = String::new();
        buf.read_to_string(&mut s).unwrap();
        assert_eq!(s, "12-3.5");
        assert_eq!(buf.read(&mut [0; 4]).unwrap(), 0);
    }
}
