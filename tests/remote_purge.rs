//! Blocks that other threads free go back to the heap they came from through its remote list,
//! which its owner takes in its slow paths. An owner that waits (a producer between batches) takes
//! nothing, and the pages of those blocks must still go back to the OS. One test in its own binary,
//! so that no other test's memory blurs the resident-set readings.

use std::sync::mpsc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const MADE: usize = 40 << 20;

fn rss() -> u64 {
    perfalloc::stats().resident_bytes
}

#[test]
fn blocks_freed_into_a_waiting_threads_heap_go_back_to_the_os() {
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<Vec<u8>>>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let base = rss();
    let producer = std::thread::spawn(move || {
        // 2 KiB blocks live in small pages of this thread's heap.
        let blocks: Vec<Vec<u8>> = (0..MADE / 2048).map(|i| vec![i as u8; 2048]).collect();
        blocks_tx.send(blocks).unwrap();
        exit_rx.recv().unwrap(); // waits: no allocation, no slow path, until told to exit
    });
    let blocks = blocks_rx.recv().unwrap();
    assert!(blocks.iter().enumerate().all(|(i, b)| b[2047] == i as u8));
    // What this thread's bin cannot keep is sent back to the producer's heap.
    drop(blocks);
    let held = rss().saturating_sub(base);
    assert!(
        held >= MADE as u64 / 2,
        "the freed blocks should still be resident: {held} bytes above the start"
    );
    // This thread keeps working: small batches that take slow paths.
    let start = Instant::now();
    let mut now_held = held;
    while start.elapsed() < Duration::from_secs(5) {
        let batch: Vec<Box<[u8; 48]>> = (0..2000).map(|_| Box::new([1; 48])).collect();
        drop(batch);
        now_held = rss().saturating_sub(base);
        if now_held < held - MADE as u64 / 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "resident above the start: {} MiB after the frees, {} MiB after {} ms",
        held >> 20,
        now_held >> 20,
        start.elapsed().as_millis()
    );
    exit_tx.send(()).unwrap();
    producer.join().unwrap();
    assert!(
        now_held < held - MADE as u64 / 2,
        "the waiting producer's {} MiB stayed resident: {} MiB above the start after 5 s",
        MADE >> 20,
        now_held >> 20
    );
}
