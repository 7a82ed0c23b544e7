//! `BufferPool` and `ObjectPool`: exclusivity and bounds under 8 threads, accounting identities,
//! zeroing, size classes and per-thread cache slots. Tests that depend on a thread's cache run
//! on a thread of their own, so they hold whatever way the test harness schedules them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use perfalloc::pool::{BufferPool, BufferPoolConfig, ObjectPool};

mod common;
use common::Rng;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const THREADS: usize = 8;

fn on_fresh_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

fn small_config() -> BufferPoolConfig {
    BufferPoolConfig {
        min_size: 64,
        max_size: 16 << 10,
        max_per_class: 3,
        thread_cache: 2,
        thread_cache_bytes: 1 << 20,
        zeroed: false,
    }
}

#[test]
fn buffer_pool_never_hands_a_buffer_to_two_holders_and_stays_bounded() {
    let config = small_config();
    let pool = BufferPool::new(config.clone());
    // Addresses of buffers currently held by someone. A buffer handed out twice would be
    // inserted twice; a buffer written by two holders would fail its pattern check.
    let held: Mutex<HashSet<usize>> = Mutex::new(HashSet::new());
    let gets = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, held, gets) = (&pool, &held, &gets);
                s.spawn(move || {
                    let mut rng = Rng(t as u64 + 1);
                    let mut mine = Vec::new();
                    for i in 0..3000usize {
                        if mine.len() < 4 && (mine.is_empty() || rng.index(2) == 0) {
                            // Sizes across every class, plus some above max_size.
                            let want = match rng.index(10) {
                                0 => 20_000 + rng.index(10_000),
                                _ => rng.index(16 << 10),
                            };
                            let mut buf = pool.get(want);
                            gets.fetch_add(1, Ordering::Relaxed);
                            assert!(buf.is_empty(), "a pooled buffer must come back empty");
                            assert!(buf.capacity() >= want);
                            assert!(
                                held.lock().unwrap().insert(buf.as_ptr() as usize),
                                "handed out twice"
                            );
                            let tag = (t * 31 + i) as u8;
                            let len = want.min(64);
                            buf.resize(len, tag);
                            mine.push((buf, tag, len));
                        } else {
                            let (buf, tag, len) = mine.swap_remove(rng.index(mine.len()));
                            assert_eq!(buf.len(), len);
                            assert!(
                                buf.iter().all(|&b| b == tag),
                                "another holder wrote to this buffer"
                            );
                            assert!(held.lock().unwrap().remove(&(buf.as_ptr() as usize)));
                            drop(buf);
                        }
                    }
                    for (buf, _, _) in mine {
                        assert!(held.lock().unwrap().remove(&(buf.as_ptr() as usize)));
                    }
                })
            })
            .collect();
        // An explicit join waits for the thread's TLS destructors (which flush its cache); the
        // scope's implicit join only waits for the closures to return.
        for w in workers {
            w.join().unwrap();
        }
    });
    // Every worker has exited, so every thread cache has been flushed into the shared lists.
    let s = pool.stats();
    let gets = gets.load(Ordering::Relaxed) as u64;
    assert_eq!(s.hits + s.misses + s.oversize, gets, "{s:?}");
    assert_eq!(
        s.returns + s.discards,
        gets,
        "every buffer came back: {s:?}"
    );
    assert_eq!(s.idle_buffers, s.returns - s.hits - s.released, "{s:?}");
    assert!(
        s.hits > gets / 2,
        "the pool should serve most requests: {s:?}"
    );
    for class in &s.classes {
        assert!(
            class.shared_idle <= config.max_per_class,
            "class {} over its bound: {s:?}",
            class.size
        );
    }
    let shared: u64 = s.classes.iter().map(|c| c.shared_idle as u64).sum();
    assert_eq!(
        s.idle_buffers, shared,
        "no thread cache may outlive its thread"
    );
    let max_idle_bytes: u64 = s
        .classes
        .iter()
        .map(|c| (2 * c.size * config.max_per_class) as u64)
        .sum();
    assert!(s.idle_bytes <= max_idle_bytes);
}

#[test]
fn bound_on_one_thread_is_cache_plus_shared_list() {
    on_fresh_thread(|| {
        let config = small_config();
        let pool = BufferPool::new(config.clone());
        let bufs: Vec<_> = (0..20).map(|_| pool.get(100)).collect();
        drop(bufs);
        let s = pool.stats();
        assert_eq!(s.misses, 20);
        assert_eq!(
            s.idle_buffers as usize,
            config.max_per_class + config.thread_cache,
            "{s:?}"
        );
        assert_eq!(
            s.discards as usize,
            20 - config.max_per_class - config.thread_cache
        );
        assert_eq!(s.idle_bytes, s.idle_buffers * 128);
        pool.flush_thread_cache();
        let s = pool.stats();
        assert_eq!(s.classes[1].shared_idle, config.max_per_class);
        assert_eq!(s.idle_buffers as usize, config.max_per_class);
    });
}

#[test]
fn thread_cache_reuses_the_same_buffer_without_the_shared_list() {
    on_fresh_thread(|| {
        let pool = BufferPool::new(BufferPoolConfig::default());
        let first = pool.get(4000).as_ptr();
        for _ in 0..100 {
            let buf = pool.get(4096);
            assert_eq!(
                buf.as_ptr(),
                first,
                "LIFO thread cache hands back the hot buffer"
            );
        }
        let s = pool.stats();
        assert_eq!((s.misses, s.hits, s.returns), (1, 100, 101));
        assert!(
            s.classes.iter().all(|c| c.shared_idle == 0),
            "nothing went through the shared lists"
        );
    });
}

#[test]
fn disabled_thread_cache_uses_the_shared_lists() {
    on_fresh_thread(|| {
        let pool = BufferPool::new(BufferPoolConfig {
            thread_cache: 0,
            ..small_config()
        });
        drop(pool.get(64));
        assert_eq!(pool.stats().classes[0].shared_idle, 1);
        drop(pool.get(64));
        let s = pool.stats();
        assert_eq!(
            (s.misses, s.hits, s.returns, s.classes[0].shared_idle),
            (1, 1, 2, 1)
        );
    });
}

/// Reads a buffer's whole capacity as bytes.
fn whole_capacity(buf: &mut Vec<u8>) -> Vec<u8> {
    let cap = buf.capacity();
    // SAFETY: every byte of this capacity was written by the test (`resize` to full capacity)
    // before the buffer went back to the pool, so it is initialised; we restore the length 0.
    unsafe { buf.set_len(cap) };
    let bytes = buf.clone();
    buf.clear();
    bytes
}

#[test]
fn zeroed_pools_scrub_returned_buffers_and_others_do_not() {
    on_fresh_thread(|| {
        for zeroed in [true, false] {
            let pool = BufferPool::new(BufferPoolConfig {
                zeroed,
                ..small_config()
            });
            let ptr = {
                let mut secret = pool.get(256);
                let cap = secret.capacity();
                secret.resize(cap, 0xEE);
                secret.as_ptr()
            };
            let mut again = pool.get(256);
            assert_eq!(again.as_ptr(), ptr);
            let bytes = whole_capacity(&mut again);
            if zeroed {
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "zeroed pool leaked old contents"
                );
            } else {
                assert!(
                    bytes.iter().all(|&b| b == 0xEE),
                    "a plain pool must not pay for zeroing"
                );
            }
        }
    });
}

#[test]
fn grown_and_oversize_buffers_find_the_right_class_or_are_freed() {
    on_fresh_thread(|| {
        let pool = BufferPool::new(small_config());
        let mut buf = pool.get(64);
        buf.extend_from_slice(&[1; 200]); // grows past its class
        let cap = buf.capacity();
        let ptr = buf.as_ptr();
        drop(buf);
        let again = pool.get(cap.next_power_of_two() / 2); // the class it now belongs to
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.capacity() >= cap.next_power_of_two() / 2);
        drop(again);

        let mut big = pool.get(1000);
        big.reserve(64 << 10); // past max_size (16 KiB): freed on return
        drop(big);
        let huge = pool.get(1 << 20); // oversize request
        assert!(huge.capacity() >= 1 << 20);
        drop(huge);
        let s = pool.stats();
        assert_eq!((s.oversize, s.discards), (1, 2), "{s:?}");
        assert!(s.classes.iter().all(|c| c.size <= 16 << 10));
    });
}

#[test]
fn more_pools_than_slots_evict_into_the_owners_shared_lists() {
    on_fresh_thread(|| {
        let pools: Vec<BufferPool> = (0..6)
            .map(|_| BufferPool::new(BufferPoolConfig::default()))
            .collect();
        for pool in &pools {
            drop(pool.get(64)); // cached in this thread's slot for `pool`
        }
        // 4 slots: pools 4 and 5 evicted the slots of pools 0 and 1, which gave their buffer back.
        for (i, pool) in pools.iter().enumerate() {
            let s = pool.stats();
            assert_eq!(s.idle_buffers, 1, "pool {i}: {s:?}");
            let expect_shared = usize::from(i < 2);
            assert_eq!(s.classes[0].shared_idle, expect_shared, "pool {i}: {s:?}");
        }
        // Dropping pools while this thread caches their buffers must free them, not keep them.
        drop(pools);
        let fresh = BufferPool::new(BufferPoolConfig::default());
        drop(fresh.get(64));
        assert_eq!(fresh.stats().idle_buffers, 1);
    });
}

#[test]
fn pool_dropped_while_other_threads_cache_its_buffers() {
    let pool = BufferPool::new(BufferPoolConfig::default());
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let (to_main, from_worker) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let pool = &pool;
        let worker = s.spawn(move || {
            drop(pool.get(64)); // cached in this thread's slot
            to_main.send(()).unwrap();
            from_main.recv().unwrap();
        });
        from_worker.recv().unwrap();
        assert_eq!(
            pool.stats().classes[0].shared_idle,
            0,
            "still in the worker's cache"
        );
        to_worker.send(()).unwrap();
        worker.join().unwrap(); // waits for the worker's TLS destructors too
    });
    // The worker exited: its slot gave the buffer back.
    assert_eq!(pool.stats().classes[0].shared_idle, 1);
    // And a worker that outlives the pool frees its cached buffers on exit (no crash, no leak
    // into a dead pool): exercised by dropping the pool first.
    let pool = Arc::new(BufferPool::new(BufferPoolConfig::default()));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let p = Arc::clone(&pool);
    let worker = std::thread::spawn(move || {
        drop(p.get(64));
        drop(p); // the worker's slot still refers to the pool weakly
        wait.recv().unwrap();
        let other = BufferPool::new(BufferPoolConfig::default());
        drop(other.get(64));
        other.stats().idle_buffers
    });
    drop(pool);
    go.send(()).unwrap();
    assert_eq!(worker.join().unwrap(), 1);
}

#[test]
fn buffer_pool_stats_serialize() {
    let pool = BufferPool::new(small_config());
    drop(pool.get(10));
    let s = pool.stats();
    let back: perfalloc::pool::BufferPoolStats =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

// ---- ObjectPool ----

struct Conn {
    id: usize,
    dirty: bool,
    scratch: Vec<u8>,
}

#[test]
fn object_pool_never_hands_an_object_to_two_holders_and_stays_bounded() {
    const MAX_IDLE: usize = 5;
    let created = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&created);
    let pool = ObjectPool::with_max_idle(
        MAX_IDLE,
        move || Conn {
            id: c.fetch_add(1, Ordering::Relaxed),
            dirty: false,
            scratch: Vec::with_capacity(256),
        },
        |conn: &mut Conn| {
            conn.dirty = false;
            conn.scratch.clear();
        },
    );
    let held: Mutex<HashSet<usize>> = Mutex::new(HashSet::new());
    let gets = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, held, gets) = (&pool, &held, &gets);
            s.spawn(move || {
                let mut rng = Rng(100 + t as u64);
                let mut mine = Vec::new();
                for _ in 0..3000 {
                    if mine.len() < 3 && (mine.is_empty() || rng.index(2) == 0) {
                        let mut conn = pool.get();
                        gets.fetch_add(1, Ordering::Relaxed);
                        assert!(
                            !conn.dirty && conn.scratch.is_empty(),
                            "handed out without reset"
                        );
                        assert!(
                            held.lock().unwrap().insert(conn.id),
                            "object {} handed out twice",
                            conn.id
                        );
                        conn.dirty = true;
                        conn.scratch.push(t as u8);
                        mine.push(conn);
                    } else {
                        let conn = mine.swap_remove(rng.index(mine.len()));
                        assert_eq!(conn.scratch, [t as u8], "another holder used this object");
                        assert!(held.lock().unwrap().remove(&conn.id));
                        drop(conn);
                    }
                    assert!(pool.stats().idle <= MAX_IDLE);
                }
                for conn in mine {
                    assert!(held.lock().unwrap().remove(&conn.id));
                }
            });
        }
    });
    let s = pool.stats();
    let gets = gets.load(Ordering::Relaxed) as u64;
    assert_eq!(s.hits + s.misses, gets, "{s:?}");
    assert_eq!(
        s.misses,
        created.load(Ordering::Relaxed) as u64,
        "create runs once per miss"
    );
    assert_eq!(s.returns + s.discards, gets, "{s:?}");
    assert_eq!(s.idle as u64, s.returns - s.hits, "{s:?}");
    assert!(s.idle <= MAX_IDLE);
    assert!(s.hits > s.misses, "reuse should dominate: {s:?}");
}

#[test]
fn object_pool_zero_bound_never_keeps_anything() {
    let pool = ObjectPool::with_max_idle(0, || vec![0u8; 8], |_| ());
    drop(pool.get());
    drop(pool.get());
    let s = pool.stats();
    assert_eq!((s.misses, s.hits, s.discards, s.idle), (2, 0, 2, 0));
}

#[test]
fn detached_objects_are_not_returned() {
    let pool = ObjectPool::new(|| String::from("fresh"), String::clear);
    let s: String = pool.get().detach();
    assert_eq!(s, "fresh");
    let st = pool.stats();
    assert_eq!((st.misses, st.returns, st.discards, st.idle), (1, 0, 0, 0));
}

static_assertions::assert_impl_all!(BufferPool: Send, Sync);
static_assertions::assert_impl_all!(ObjectPool<Vec<u8>>: Send, Sync);
static_assertions::assert_impl_all!(perfalloc::pool::PooledBuffer<'static>: Send, Sync);
