//! Blocks allocated on one thread and freed on another, with 2-16 threads, and thread churn.
mod common;
use common::*;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Each thread allocates blocks and sends most of them to the next thread in a ring, which checks
/// and frees them: most frees are remote.
fn ring(threads: usize, per_thread: usize, seed: u64) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Vec<Blk>>()).unzip();
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let tx = txs[(t + 1) % threads].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed * 1000 + t as u64);
                let mut mine = Vec::new();
                barrier.wait();
                for round in 0..per_thread / 100 {
                    let mut batch = Vec::with_capacity(100);
                    for i in 0..100 {
                        let id = ((t as u64) << 40) | ((round as u64) << 16) | i;
                        let size = if rng.below(100) == 0 {
                            rng.size(1 << 20)
                        } else {
                            rng.size(2048)
                        };
                        let align = 1usize << rng.below(7);
                        let b = Blk::new(size, align, id, rng.below(8) == 0);
                        if rng.below(10) == 0 {
                            mine.push(b);
                        } else {
                            batch.push(b);
                        }
                    }
                    tx.send(batch).unwrap();
                    while let Ok(theirs) = rx.try_recv() {
                        for b in theirs {
                            b.free();
                        }
                    }
                }
                drop(tx);
                barrier.wait();
                while let Ok(theirs) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                    for b in theirs {
                        b.free();
                    }
                }
                assert_disjoint(&mine);
                mine
            })
        })
        .collect();
    drop(txs);
    let leftovers: Vec<Blk> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_disjoint(&leftovers);
    // The owners are gone: these frees go to orphaned heaps.
    for b in leftovers {
        b.free();
    }
}

#[test]
fn cross_thread_frees_with_2_to_16_threads() {
    for (seed, threads) in [2, 3, 4, 8, 16].into_iter().enumerate() {
        ring(threads, 4_000, seed as u64 + 1);
    }
}

#[test]
fn producer_consumer_frees_everything_remotely() {
    let (tx, rx) = mpsc::sync_channel::<Box<[u64]>>(1024);
    let consumer = std::thread::spawn(move || {
        let mut n = 0u64;
        for b in rx {
            assert!(b.iter().all(|&x| x == b.len() as u64));
            n += 1;
        }
        n
    });
    for i in 0..200_000u64 {
        let len = (i % 97 + 1) as usize;
        tx.send(vec![len as u64; len].into_boxed_slice()).unwrap();
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), 200_000);
}

/// Thread-local destructors run after the allocator's own per-thread cleanup may have run; they
/// must still be able to allocate and free.
#[test]
fn allocation_inside_thread_local_destructors() {
    struct Noisy(Vec<u8>);
    impl Drop for Noisy {
        fn drop(&mut self) {
            let v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
            assert_eq!(v[99], "99");
            self.0.extend_from_slice(&[1; 10_000]);
        }
    }
    thread_local! { static N: std::cell::RefCell<Option<Noisy>> = const { std::cell::RefCell::new(None) }; }
    let hs: Vec<_> = (0..32)
        .map(|_| {
            std::thread::spawn(|| {
                N.with(|n| *n.borrow_mut() = Some(Noisy(vec![0; 100])));
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// glibc runs pthread key destructors in key order. perfalloc's key was made by the process's first
/// allocation, so this key's destructor runs after perfalloc handed the thread's heap back: every
/// allocation and free in it goes through the shared fallback heap.
#[test]
fn allocation_after_the_allocators_own_thread_exit_cleanup() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static OK: AtomicUsize = AtomicUsize::new(0);
    static KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();
    extern "C" fn late_destructor(_: *mut libc::c_void) {
        let small: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let large = std::hint::black_box(vec![3u8; 1 << 20]);
        if small[999] == "999" && large.iter().all(|&x| x == 3) {
            OK.fetch_add(1, Ordering::SeqCst);
        }
    }
    let key = *KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY (test): a valid out-pointer and destructor.
        assert_eq!(
            unsafe { libc::pthread_key_create(&mut key, Some(late_destructor)) },
            0
        );
        key
    });
    let before = OK.load(Ordering::SeqCst);
    let hs: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                drop(std::hint::black_box(vec![0u8; 100])); // the thread has a heap
                                                            // SAFETY (test): any non-null value makes the destructor run at thread exit.
                unsafe { libc::pthread_setspecific(key, 1 as *mut libc::c_void) };
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(OK.load(Ordering::SeqCst) - before, 8);
}
