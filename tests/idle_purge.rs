//! A thread that frees its memory and then waits (a worker between jobs) runs no slow path of its
//! own, so it cannot purge; another thread's slow paths must do it within a few purge periods. One
//! test in its own binary, so that no other test's memory blurs the resident-set readings.

use std::sync::mpsc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const FREED: usize = 40 << 20;

fn rss() -> u64 {
    perfalloc::stats().resident_bytes
}

#[test]
fn an_idle_threads_freed_memory_goes_back_without_its_help() {
    let (freed_tx, freed_rx) = mpsc::channel::<()>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let base = rss();
    let worker = std::thread::spawn(move || {
        // 2 KiB blocks live in small pages: freed, they are empty pages of this thread's heap,
        // below the dirty bound that would make the frees themselves purge.
        let blocks: Vec<Vec<u8>> = (0..FREED / 2048).map(|i| vec![i as u8; 2048]).collect();
        assert!(blocks.iter().enumerate().all(|(i, b)| b[2047] == i as u8));
        drop(blocks);
        freed_tx.send(()).unwrap();
        exit_rx.recv().unwrap(); // idle: no allocation, no slow path, until told to exit
    });
    freed_rx.recv().unwrap();
    let held = rss().saturating_sub(base);
    assert!(
        held >= FREED as u64 / 2,
        "the worker's freed memory should still be resident: {held} bytes above the start"
    );
    // This thread keeps working: small batches that take slow paths (bins refilled and flushed).
    let start = Instant::now();
    let mut now_held = held;
    while start.elapsed() < Duration::from_secs(5) {
        let batch: Vec<Box<[u8; 48]>> = (0..2000).map(|_| Box::new([1; 48])).collect();
        drop(batch);
        now_held = rss().saturating_sub(base);
        if now_held < held - FREED as u64 / 2 {
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
    worker.join().unwrap();
    assert!(
        now_held < held - FREED as u64 / 2,
        "the idle worker's {} MiB stayed resident: {} MiB above the start after 5 s",
        FREED >> 20,
        now_held >> 20
    );
}
