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
