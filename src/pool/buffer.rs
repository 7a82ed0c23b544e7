//! [`BufferPool`]: byte buffers in power-of-two size classes, with a per-thread cache in front
//! of bounded, mutex-protected shared free lists.
//!
//! # Design
//!
//! * **Size classes.** Class `c` holds buffers of capacity in `[min_size << c, min_size << (c+1))`,
//!   for `min_size << c` from `min_size` to `max_size` (see [`BufferPoolConfig`]). A request for `n`
//!   bytes is served from the smallest class whose size is `>= n`, so a buffer handed out always
//!   has at least the requested capacity. Requests above `max_size` are allocated and freed
//!   without pooling.
//! * **Per-thread cache.** Each thread has one small `thread_local!` cache with [`SLOTS`] slots,
//!   each slot owned by one pool (matched by a never-reused pool id). A slot holds up to
//!   `thread_cache` buffers per class (fewer for large classes, see `thread_cache_bytes`), so a
//!   `get` followed by a `put` on one thread is a `Vec` pop and push: no lock, no atomic.
//! * **Shared lists.** One `Mutex<Vec<Vec<u8>>>` per class, at most `max_per_class` long. A slot
//!   that runs empty takes half its capacity from the shared list in one locked section; a slot
//!   that overflows gives half back in one locked section. A buffer that fits in neither is
//!   freed.
//! * **No leak across pools or threads.** A slot refers to its pool through a `Weak`. When a
//!   thread exits, its slots give their buffers back to the shared lists (or free them if the
//!   pool is gone). When a thread needs a slot and all are taken, it evicts one the same way.
//!   When a pool is dropped, the dropping thread's slot is freed at once; the buffers another
//!   thread cached for it are freed when that thread evicts the slot or exits. So at most
//!   `SLOTS` pools' worth of thread-cache memory can outlive its pool, per thread, for a bounded
//!   time.
//!
//! # Statistics protocol
//!
//! A slot counts its own hits and returns, and the change in what it caches, in plain integers.
//! It publishes them into the pool's relaxed atomics whenever it already touches shared state
//! (refill, spill), when its thread calls [`BufferPool::stats`] or
//! [`BufferPool::flush_thread_cache`], and when it is dropped. Misses, oversize requests and
//! discards are rare and next to an allocation or a free, so they go to the atomics directly.
//! Hence a snapshot is exact for the calling thread and for threads that have exited, and may lag
//! for other running threads. "Exited" means joined with `JoinHandle::join`: the implicit join
//! at the end of `std::thread::scope` returns when the closures return, which can be before the
//! threads' TLS destructors (and so the cache flush) have run.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use super::lock;

/// Slots in each thread's cache: how many pools a thread can use at once without evicting.
/// Programs rarely have more than a couple of buffer pools; 4 keeps the lookup a short scan.
const SLOTS: usize = 4;

/// Configuration of a [`BufferPool`].
///
/// ```
/// use perfalloc::pool::{BufferPool, BufferPoolConfig};
///
/// let pool = BufferPool::new(BufferPoolConfig { zeroed: true, ..Default::default() });
/// assert!(pool.config().zeroed);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferPoolConfig {
    /// Capacity of the smallest class, rounded up to a power of two (at least 1). Default 64.
    pub min_size: usize,
    /// Capacity of the largest class, rounded up to a power of two (at least `min_size`).
    /// Requests above it are allocated and freed without pooling. Default 4 MiB.
    pub max_size: usize,
    /// Most idle buffers kept per class in the shared lists. Default 64.
    pub max_per_class: usize,
    /// Most idle buffers kept per class in each thread's cache; 0 disables the thread cache (every
    /// operation then takes the class's lock). Default 16.
    pub thread_cache: usize,
    /// Most idle bytes kept per class in each thread's cache (but at least one buffer if
    /// `thread_cache > 0`). Default 1 MiB.
    pub thread_cache_bytes: usize,
    /// Zero the whole capacity of every buffer when it comes back (before it is cached or
    /// freed), for buffers that held secrets. Default `false`: zeroing a buffer costs as much as
    /// filling it.
    pub zeroed: bool,
}

impl Default for BufferPoolConfig {
    fn default() -> Self {
        BufferPoolConfig {
            min_size: 64,
            max_size: 4 << 20,
            max_per_class: 64,
            thread_cache: 16,
            thread_cache_bytes: 1 << 20,
            zeroed: false,
        }
    }
}

/// A snapshot of a [`BufferPool`]'s statistics (see [`BufferPool::stats`]).
///
/// `idle_buffers`, `idle_bytes` and `classes[..].shared_idle` are gauges; the rest are counters
/// that only grow. Every `get` is exactly one of a hit, a miss or an oversize request; every
/// buffer that comes back is exactly one of a return or a discard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferPoolStats {
    /// `get`s served with an idle buffer.
    pub hits: u64,
    /// `get`s of a pooled size that had to allocate.
    pub misses: u64,
    /// `get`s above `max_size`: allocated, and freed on drop.
    pub oversize: u64,
    /// Buffers kept for reuse when they came back.
    pub returns: u64,
    /// Buffers freed when they came back: their class was full, or their capacity was out of
    /// the pooled range (oversize requests, buffers grown past `max_size` or shrunk).
    pub discards: u64,
    /// Idle buffers freed later, when a thread's cache was flushed (thread exit, eviction,
    /// [`BufferPool::flush_thread_cache`]) into a full shared list. So at any quiescent point,
    /// `idle_buffers == returns - hits - released`.
    pub released: u64,
    /// Idle buffers held by the pool (shared lists and thread caches).
    pub idle_buffers: u64,
    /// Bytes held by the pool in idle buffers (their capacities).
    pub idle_bytes: u64,
    /// Per class, smallest first.
    pub classes: Vec<ClassStats>,
}

/// One size class in [`BufferPoolStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStats {
    /// Smallest capacity of a buffer in this class (what a request is rounded up to).
    pub size: usize,
    /// Idle buffers in this class's shared list (exact when taken).
    pub shared_idle: usize,
}

/// A thread-safe pool of byte buffers.
///
/// # Invariants
///
/// * Every idle buffer of class `c` (shared list or thread cache) has length 0 and a capacity in
///   `[size(c), 2 * size(c))`, where `size(c) = min_size << c`; if `zeroed`, all of that capacity
///   is zero.
/// * A shared list holds at most `max_per_class` buffers; a thread-cache slot holds at most
///   `local_cap[c]` buffers of class `c`.
/// * A buffer is in at most one place: one list, or one [`PooledBuffer`] (each move is a `pop`
///   and a `push` of an owned `Vec`, so this is the borrow checker's guarantee, not ours).
///
/// # Example
///
/// ```
/// use perfalloc::pool::{BufferPool, BufferPoolConfig};
///
/// let pool = BufferPool::new(BufferPoolConfig::default());
/// let ptr = {
///     let mut buf = pool.get(1000);
///     assert!(buf.is_empty() && buf.capacity() >= 1000);
///     buf.extend_from_slice(b"payload");
///     buf.as_ptr()
/// }; // back to the pool
/// let again = pool.get(700); // same class (1024 bytes): the same buffer, emptied
/// assert_eq!(again.as_ptr(), ptr);
/// assert!(again.is_empty());
/// drop(again);
/// let s = pool.stats();
/// assert_eq!((s.hits, s.misses, s.returns), (1, 1, 2));
/// ```
pub struct BufferPool {
    shared: Arc<Shared>,
}

struct Shared {
    id: u64,
    config: BufferPoolConfig,
    min_shift: u32,
    max_shift: u32,
    /// Per class: most buffers kept in one thread's cache.
    local_cap: Box<[usize]>,
    classes: Box<[CachePadded<FreeList>]>,
    totals: CachePadded<Totals>,
}

#[derive(Default)]
struct Totals {
    hits: AtomicU64,
    misses: AtomicU64,
    oversize: AtomicU64,
    returns: AtomicU64,
    discards: AtomicU64,
    released: AtomicU64,
    /// Published content of all thread caches (sums of the slots' published deltas).
    cached_buffers: AtomicI64,
    cached_bytes: AtomicI64,
}

/// A class's shared free list.
type FreeList = Mutex<Vec<Vec<u8>>>;

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

impl BufferPool {
    /// A pool with the given configuration (see [`BufferPoolConfig`] for the defaults).
    ///
    /// ```
    /// use perfalloc::pool::{BufferPool, BufferPoolConfig};
    /// let pool = BufferPool::new(BufferPoolConfig { min_size: 100, ..Default::default() });
    /// assert_eq!(pool.stats().classes[0].size, 128);
    /// ```
    pub fn new(config: BufferPoolConfig) -> Self {
        let min = config
            .min_size
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        let max = config
            .max_size
            .max(min)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        let config = BufferPoolConfig {
            min_size: min,
            max_size: max,
            ..config
        };
        let (min_shift, max_shift) = (min.trailing_zeros(), max.trailing_zeros());
        let n = (max_shift - min_shift + 1) as usize;
        let local_cap = (0..n)
            .map(|c| {
                let by_bytes = (config.thread_cache_bytes >> (min_shift as usize + c)).max(1);
                config.thread_cache.min(by_bytes)
            })
            .collect();
        let classes = (0..n)
            .map(|_| CachePadded::new(Mutex::new(Vec::new())))
            .collect();
        BufferPool {
            shared: Arc::new(Shared {
                id: NEXT_POOL_ID.fetch_add(1, Relaxed),
                config,
                min_shift,
                max_shift,
                local_cap,
                classes,
                totals: CachePadded::new(Totals::default()),
            }),
        }
    }

    /// The configuration in effect (sizes rounded up to powers of two).
    ///
    /// ```
    /// use perfalloc::pool::{BufferPool, BufferPoolConfig};
    /// let pool = BufferPool::new(BufferPoolConfig { max_size: 1000, ..Default::default() });
    /// assert_eq!(pool.config().max_size, 1024);
    /// ```
    pub fn config(&self) -> &BufferPoolConfig {
        &self.shared.config
    }

    /// An empty buffer with a capacity of at least `capacity`, which goes back to the pool when
    /// dropped. Never zero-fills: the bytes behind the length are whatever was there before
    /// (which `Vec` never lets you read without writing first).
    ///
    /// ```
    /// let pool = perfalloc::pool::BufferPool::new(Default::default());
    /// let buf = pool.get(100);
    /// assert!(buf.capacity() >= 100);
    /// assert_eq!(buf.len(), 0);
    /// ```
    #[inline]
    pub fn get(&self, capacity: usize) -> PooledBuffer<'_> {
        let buf = match self.shared.class_for_request(capacity) {
            Some(class) => self.take(class),
            None => {
                self.shared.totals.oversize.fetch_add(1, Relaxed);
                Vec::with_capacity(capacity)
            }
        };
        debug_assert!(buf.is_empty() && buf.capacity() >= capacity);
        PooledBuffer { buf, pool: self }
    }

    #[inline]
    fn take(&self, class: usize) -> Vec<u8> {
        let shared = &*self.shared;
        let taken = with_slot(&self.shared, |slot| slot.take(shared, class));
        match taken {
            Some(Some(buf)) => buf,
            Some(None) => self.miss(class),
            None => self.take_shared(class),
        }
    }

    /// Without a thread cache (disabled, or the thread is being torn down).
    #[cold]
    fn take_shared(&self, class: usize) -> Vec<u8> {
        let popped = lock(&self.shared.classes[class]).pop();
        match popped {
            Some(buf) => {
                self.shared.totals.hits.fetch_add(1, Relaxed);
                buf
            }
            None => self.miss(class),
        }
    }

    #[cold]
    #[inline(never)]
    fn miss(&self, class: usize) -> Vec<u8> {
        self.shared.totals.misses.fetch_add(1, Relaxed);
        Vec::with_capacity(self.shared.class_size(class))
    }

    #[inline]
    fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return; // detached by `into_inner`, or an oversize request of 0 bytes
        }
        let shared = &*self.shared;
        buf.clear();
        if shared.config.zeroed {
            zero_capacity(&mut buf);
        }
        let Some(class) = shared.class_for_return(buf.capacity()) else {
            shared.totals.discards.fetch_add(1, Relaxed);
            return;
        };
        let mut buf = Some(buf);
        let rejected = with_slot(&self.shared, |slot| {
            slot.put(shared, class, buf.take().expect("put once"))
        });
        match (rejected, buf) {
            (Some(None), _) => {}
            (Some(Some(_rejected)), _) => {
                shared.totals.discards.fetch_add(1, Relaxed);
            }
            (None, Some(buf)) => self.put_shared(class, buf),
            (None, None) => unreachable!("with_slot returns Some when it runs the closure"),
        }
    }

    #[cold]
    fn put_shared(&self, class: usize, buf: Vec<u8>) {
        let mut list = lock(&self.shared.classes[class]);
        if list.len() < self.shared.config.max_per_class {
            list.push(buf);
            drop(list);
            self.shared.totals.returns.fetch_add(1, Relaxed);
        } else {
            drop(list);
            drop(buf);
            self.shared.totals.discards.fetch_add(1, Relaxed);
        }
    }

    /// Gives this thread's cached buffers for this pool back to the shared lists (freeing those
    /// that do not fit) and publishes this thread's counts. Call it before a thread goes idle
    /// for a long time; exiting threads do it on their own.
    ///
    /// ```
    /// let pool = perfalloc::pool::BufferPool::new(Default::default());
    /// drop(pool.get(64));
    /// pool.flush_thread_cache();
    /// assert_eq!(pool.stats().classes[0].shared_idle, 1);
    /// ```
    pub fn flush_thread_cache(&self) {
        let _ = CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                cache.remove(self.shared.id, true); // `Slot::drop` gives everything back
            }
        });
    }

    /// A snapshot of the pool's statistics. Exact for this thread's operations and for threads
    /// that have exited; other running threads' cache hits and returns appear once they publish
    /// them (see the module docs).
    ///
    /// ```
    /// let pool = perfalloc::pool::BufferPool::new(Default::default());
    /// let a = pool.get(10);
    /// let b = pool.get(10 << 30); // above max_size: not pooled
    /// drop((a, b));
    /// let s = pool.stats();
    /// assert_eq!((s.misses, s.oversize, s.returns, s.discards), (1, 1, 1, 1));
    /// assert_eq!((s.idle_buffers, s.idle_bytes), (1, 64));
    /// ```
    pub fn stats(&self) -> BufferPoolStats {
        let shared = &*self.shared;
        with_slot_if_present(shared, |slot| slot.publish(shared));
        let t = &shared.totals;
        let mut stats = BufferPoolStats {
            hits: t.hits.load(Relaxed),
            misses: t.misses.load(Relaxed),
            oversize: t.oversize.load(Relaxed),
            returns: t.returns.load(Relaxed),
            discards: t.discards.load(Relaxed),
            released: t.released.load(Relaxed),
            idle_buffers: t.cached_buffers.load(Relaxed).max(0) as u64,
            idle_bytes: t.cached_bytes.load(Relaxed).max(0) as u64,
            classes: Vec::with_capacity(shared.classes.len()),
        };
        for (c, list) in shared.classes.iter().enumerate() {
            let list = lock(list);
            stats.idle_buffers += list.len() as u64;
            stats.idle_bytes += list.iter().map(|b| b.capacity() as u64).sum::<u64>();
            stats.classes.push(ClassStats {
                size: shared.class_size(c),
                shared_idle: list.len(),
            });
        }
        stats
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // Free this thread's cached buffers now rather than when the slot is evicted.
        let id = self.shared.id;
        let _ = CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                cache.remove(id, false); // the pool is going away: free them
            }
        });
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("id", &self.shared.id)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Shared {
    #[inline]
    fn class_size(&self, class: usize) -> usize {
        1 << (self.min_shift as usize + class)
    }

    /// Smallest class whose size is `>= n`; `None` above `max_size`.
    #[inline]
    fn class_for_request(&self, n: usize) -> Option<usize> {
        if n > self.config.max_size {
            return None;
        }
        let shift = n
            .max(self.config.min_size)
            .next_power_of_two()
            .trailing_zeros();
        Some((shift - self.min_shift) as usize)
    }

    /// Class `c` with `size(c) <= capacity < 2 * size(c)`; `None` outside the pooled range.
    #[inline]
    fn class_for_return(&self, capacity: usize) -> Option<usize> {
        if capacity < self.config.min_size {
            return None;
        }
        let shift = usize::BITS - 1 - capacity.leading_zeros(); // floor(log2)
        if shift > self.max_shift {
            return None;
        }
        Some((shift - self.min_shift) as usize)
    }
}

/// Zeroes a buffer's whole capacity. `black_box` keeps the optimiser from dropping the stores
/// when the buffer is freed right after (best effort, as in the `zeroize` crate's approach).
fn zero_capacity(buf: &mut Vec<u8>) {
    debug_assert!(buf.is_empty());
    buf.spare_capacity_mut().fill(MaybeUninit::new(0));
    std::hint::black_box(buf.as_mut_ptr());
}

/// A buffer from a [`BufferPool`]: derefs to an (initially empty) `Vec<u8>` and goes back to
/// the pool when dropped.
///
/// Growing it past its class is fine (it then goes back into a larger class, or is freed above
/// `max_size`).
///
/// ```
/// let pool = perfalloc::pool::BufferPool::new(Default::default());
/// let mut buf = pool.get(16);
/// buf.extend_from_slice(b"hello");
/// assert_eq!(&buf[..], b"hello");
/// let owned: Vec<u8> = buf.into_inner(); // leaves the pool for good
/// assert_eq!(owned, b"hello");
/// ```
pub struct PooledBuffer<'a> {
    buf: Vec<u8>,
    pool: &'a BufferPool,
}

impl PooledBuffer<'_> {
    /// Takes the buffer out of the pool's care: it will not go back on drop.
    ///
    /// ```
    /// let pool = perfalloc::pool::BufferPool::new(Default::default());
    /// let v = pool.get(8).into_inner();
    /// assert!(v.capacity() >= 8);
    /// drop(v);
    /// assert_eq!(pool.stats().returns, 0);
    /// ```
    pub fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

impl std::ops::Deref for PooledBuffer<'_> {
    type Target = Vec<u8>;
    #[inline]
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuffer<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuffer<'_> {
    #[inline]
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

impl std::fmt::Debug for PooledBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuffer")
            .field("len", &self.buf.len())
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

// ---- Per-thread cache ----

struct ThreadCache {
    /// `ids[i]` is `slots[i]`'s pool id, or 0 for an empty slot (pool ids start at 1): the
    /// lookup scans these 32 bytes instead of four whole slots.
    ids: [u64; SLOTS],
    slots: [Option<Slot>; SLOTS],
    /// Round-robin eviction cursor.
    next_victim: usize,
}

/// One pool's share of one thread's cache.
struct Slot {
    pool_id: u64,
    /// Where the buffers go when the slot is dropped; dead once the pool is dropped.
    pool: Weak<Shared>,
    /// Per class; `lists[c].len() <= local_cap[c]`.
    lists: Box<[Vec<Vec<u8>>]>,
    /// Counts not yet published to the pool's `Totals`.
    hits: u64,
    returns: u64,
    released: u64,
    cached_buffers: i64,
    cached_bytes: i64,
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const {
        RefCell::new(ThreadCache { ids: [0; SLOTS], slots: [const { None }; SLOTS], next_victim: 0 })
    };
}

/// Runs `f` on this thread's slot for `pool`, creating it (evicting another) if needed. `None` if
/// the thread cache is disabled, or unavailable (thread teardown, or re-entered from a drop that
/// runs inside `f`); the caller then uses the shared lists.
#[inline]
fn with_slot<R>(pool: &Arc<Shared>, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
    if pool.config.thread_cache == 0 {
        return None;
    }
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            if let Some(i) = cache.ids.iter().position(|&id| id == pool.id) {
                return Some(f(cache.slots[i]
                    .as_mut()
                    .expect("ids[i] != 0 means slots[i] is Some")));
            }
            Some(f(cache.install(pool)))
        })
        .ok()
        .flatten()
}

/// Like [`with_slot`] but never creates a slot.
fn with_slot_if_present(pool: &Shared, f: impl FnOnce(&mut Slot)) {
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            if let Some(slot) = cache
                .slots
                .iter_mut()
                .flatten()
                .find(|s| s.pool_id == pool.id)
            {
                f(slot);
            }
        }
    });
}

impl ThreadCache {
    /// Drops the slot of pool `id`, if any: its buffers go back to the pool if `give_back`,
    /// else they are freed.
    fn remove(&mut self, id: u64, give_back: bool) {
        if let Some(i) = self.ids.iter().position(|&x| x == id) {
            self.ids[i] = 0;
            if let Some(mut slot) = self.slots[i].take() {
                if !give_back {
                    slot.pool = Weak::new();
                }
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn install(&mut self, pool: &Arc<Shared>) -> &mut Slot {
        debug_assert!(!self.ids.contains(&pool.id));
        // A free slot, else one whose pool is gone, else round robin.
        let i = match self.slots.iter().position(|s| s.is_none()) {
            Some(i) => i,
            None => match self
                .slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.pool.strong_count() == 0))
            {
                Some(i) => i,
                None => {
                    let i = self.next_victim;
                    self.next_victim = (i + 1) % SLOTS;
                    i
                }
            },
        };
        let fresh = Slot {
            pool_id: pool.id,
            pool: Arc::downgrade(pool),
            lists: pool
                .local_cap
                .iter()
                .map(|&cap| Vec::with_capacity(cap))
                .collect(),
            hits: 0,
            returns: 0,
            released: 0,
            cached_buffers: 0,
            cached_bytes: 0,
        };
        // Dropping the old slot gives its buffers back to its own pool.
        self.ids[i] = pool.id;
        self.slots[i].insert(fresh)
    }
}

impl Slot {
    /// A cached buffer of `class`, refilling from the shared list if the cache is empty; `None`
    /// on a miss (the caller allocates).
    #[inline]
    fn take(&mut self, pool: &Shared, class: usize) -> Option<Vec<u8>> {
        if let Some(buf) = self.lists[class].pop() {
            self.hits += 1;
            self.cached_buffers -= 1;
            self.cached_bytes -= buf.capacity() as i64;
            return Some(buf);
        }
        self.refill(pool, class)
    }

    #[cold]
    #[inline(never)]
    fn refill(&mut self, pool: &Shared, class: usize) -> Option<Vec<u8>> {
        let batch = (pool.local_cap[class] / 2).max(1);
        let list = &mut self.lists[class];
        {
            let mut shared = lock(&pool.classes[class]);
            let n = batch.min(shared.len());
            let from = shared.len() - n;
            for buf in shared.drain(from..) {
                self.cached_buffers += 1;
                self.cached_bytes += buf.capacity() as i64;
                list.push(buf);
            }
        }
        let buf = list.pop()?;
        self.hits += 1;
        self.cached_buffers -= 1;
        self.cached_bytes -= buf.capacity() as i64;
        self.publish(pool);
        Some(buf)
    }

    /// Caches `buf` (an empty buffer of `class`), spilling half the cache to the shared list if
    /// it is full. Returns the buffer if it fits nowhere (the caller frees it).
    #[inline]
    fn put(&mut self, pool: &Shared, class: usize, buf: Vec<u8>) -> Option<Vec<u8>> {
        if self.lists[class].len() < pool.local_cap[class] {
            self.push(class, buf);
            return None;
        }
        self.spill(pool, class, buf)
    }

    #[inline]
    fn push(&mut self, class: usize, buf: Vec<u8>) {
        self.returns += 1;
        self.cached_buffers += 1;
        self.cached_bytes += buf.capacity() as i64;
        self.lists[class].push(buf);
    }

    #[cold]
    #[inline(never)]
    fn spill(&mut self, pool: &Shared, class: usize, buf: Vec<u8>) -> Option<Vec<u8>> {
        let batch = (pool.local_cap[class] / 2).max(1);
        {
            let mut shared = lock(&pool.classes[class]);
            let room = pool.config.max_per_class.saturating_sub(shared.len());
            for _ in 0..batch.min(room) {
                let Some(moved) = self.lists[class].pop() else {
                    break;
                };
                self.cached_buffers -= 1;
                self.cached_bytes -= moved.capacity() as i64;
                shared.push(moved);
            }
        }
        let rejected = if self.lists[class].len() < pool.local_cap[class] {
            self.push(class, buf);
            None
        } else {
            Some(buf) // shared list full too: the caller frees it and counts a discard
        };
        self.publish(pool);
        rejected
    }

    /// Adds the unpublished counts to the pool's totals.
    fn publish(&mut self, pool: &Shared) {
        let t = &pool.totals;
        for (local, total) in [
            (&mut self.hits, &t.hits),
            (&mut self.returns, &t.returns),
            (&mut self.released, &t.released),
        ] {
            if *local != 0 {
                total.fetch_add(std::mem::take(local), Relaxed);
            }
        }
        for (local, total) in [
            (&mut self.cached_buffers, &t.cached_buffers),
            (&mut self.cached_bytes, &t.cached_bytes),
        ] {
            if *local != 0 {
                total.fetch_add(std::mem::take(local), Relaxed);
            }
        }
    }
}

impl Drop for Slot {
    /// Gives the cached buffers back to the pool's shared lists (freeing what does not fit), or
    /// frees them if the pool is gone.
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        for (class, list) in self.lists.iter_mut().enumerate() {
            if list.is_empty() {
                continue;
            }
            let mut shared = lock(&pool.classes[class]);
            while let Some(buf) = list.pop() {
                self.cached_buffers -= 1;
                self.cached_bytes -= buf.capacity() as i64;
                if shared.len() < pool.config.max_per_class {
                    shared.push(buf);
                } else {
                    self.released += 1;
                }
            }
        }
        self.publish(&pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(thread_cache: usize) -> BufferPool {
        BufferPool::new(BufferPoolConfig {
            min_size: 64,
            max_size: 1024,
            max_per_class: 2,
            thread_cache,
            thread_cache_bytes: 1 << 20,
            zeroed: false,
        })
    }

    #[test]
    fn class_mapping_round_trips() {
        let p = pool(4);
        let s = &*p.shared;
        assert_eq!(s.class_for_request(0), Some(0));
        assert_eq!(s.class_for_request(64), Some(0));
        assert_eq!(s.class_for_request(65), Some(1));
        assert_eq!(s.class_for_request(1024), Some(4));
        assert_eq!(s.class_for_request(1025), None);
        assert_eq!(s.class_for_return(63), None);
        assert_eq!(s.class_for_return(64), Some(0));
        assert_eq!(s.class_for_return(127), Some(0));
        assert_eq!(s.class_for_return(2047), Some(4));
        assert_eq!(s.class_for_return(2048), None);
        for n in 0..=1024 {
            let c = s.class_for_request(n).unwrap();
            assert!(s.class_size(c) >= n);
            assert_eq!(s.class_for_return(s.class_size(c)), Some(c));
        }
    }

    #[test]
    fn local_cap_respects_bytes() {
        let p = BufferPool::new(BufferPoolConfig {
            thread_cache: 16,
            thread_cache_bytes: 4096,
            ..Default::default()
        });
        assert_eq!(p.shared.local_cap[0], 16); // 64 B: 64 fit in 4 KiB, capped by count
        assert_eq!(p.shared.local_cap[6], 1); // 4 KiB: one
        assert_eq!(*p.shared.local_cap.last().unwrap(), 1); // 4 MiB: still one
    }

    #[test]
    fn spill_and_refill_move_batches() {
        let p = pool(4); // local cap 4, batch 2, shared bound 2
        let bufs: Vec<_> = (0..7).map(|_| p.get(64)).collect();
        drop(bufs); // 4 cached, then spill 2 -> shared; then 1 more rejected
        let s = p.stats();
        assert_eq!(s.classes[0].shared_idle, 2);
        assert_eq!(s.idle_buffers, 6, "4 cached + 2 shared");
        assert_eq!(s.discards, 1);
        assert_eq!(s.returns + s.discards, 7);
        p.flush_thread_cache();
        let s = p.stats();
        assert_eq!(
            s.classes[0].shared_idle, 2,
            "shared bound holds after flush"
        );
        assert_eq!(s.idle_buffers, 2);
        assert_eq!(s.released, 4);
        assert_eq!(s.idle_buffers, s.returns - s.hits - s.released);
    }
}
