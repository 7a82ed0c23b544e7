//! The order in which freed small blocks are handed out again.
mod common;
use common::Rng;
use std::alloc::{alloc, dealloc, Layout};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Blocks freed in random order (as when a map of strings is dropped) come back mostly in address
/// order, one after another, as from fresh pages; a LIFO free list would hand them out scrambled.
#[test]
fn blocks_freed_in_random_order_come_back_in_address_order() {
    const SIZE: usize = 48; // a class size, so that neighbours are exactly SIZE apart
    const N: usize = 6000; // about four and a half 64 KiB pages

    // A fresh thread: its heap holds no blocks of this class yet.
    std::thread::spawn(|| {
        let layout = Layout::from_size_align(SIZE, 8).unwrap();
        let mut rng = Rng(0x5eed);
        // SAFETY: a valid non-zero layout; each block is freed once, with it, below.
        let mut blocks: Vec<*mut u8> = (0..N).map(|_| unsafe { alloc(layout) }).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        for i in (1..N).rev() {
            blocks.swap(i, rng.index(i + 1));
        }
        for &p in &blocks {
            // SAFETY: `p` came from `alloc(layout)` above and is freed once.
            unsafe { dealloc(p, layout) };
        }
        // SAFETY: as above; these are freed below.
        let again: Vec<usize> = (0..N).map(|_| unsafe { alloc(layout) } as usize).collect();
        let next = again.windows(2).filter(|w| w[1] == w[0] + SIZE).count();
        let mut distinct = again.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), N, "a block was handed out twice");
        assert!(
            distinct.windows(2).all(|w| w[1] - w[0] >= SIZE),
            "blocks overlap"
        );
        for &p in &again {
            // SAFETY: `p` came from `alloc(layout)` above and is freed once.
            unsafe { dealloc(p as *mut u8, layout) };
        }
        assert!(
            next >= N / 2,
            "only {next} of {N} blocks came right after the one before"
        );
    })
    .join()
    .unwrap();
}
