//! A thread that exits leaves its heap to be adopted by the next new thread; until then nobody
//! owns it. Blocks it made that another thread frees afterwards go back to that heap (its remote
//! list), and their pages must still go back to the OS although no new thread comes. One test in
//! its own binary, so that no other test's memory blurs the resident-set readings.

use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const MADE: usize = 40 << 20;

fn rss() -> u64 {
    perfalloc::stats().resident_bytes
}

#[test]
fn blocks_freed_into_an_exited_threads_heap_go_back_to_the_os() {
    let base = rss();
    // 2 KiB blocks live in small pages of the producer's heap.
    let blocks = std::thread::spawn(|| {
        (0..MADE / 2048)
            .map(|i| vec![i as u8; 2048])
            .collect::<Vec<Vec<u8>>>()
    })
    .join()
    .unwrap();
    assert!(blocks.iter().enumerate().all(|(i, b)| b[2047] == i as u8));
    // This thread frees them: what its bin cannot keep is sent back to the producer's heap, now
    // an orphan.
    drop(blocks);
    let held = rss().saturating_sub(base);
    assert!(
        held >= MADE as u64 / 2,
        "the freed blocks should still be resident: {held} bytes above the start"
    );
    // This thread keeps working (small batches that take slow paths); no new thread starts.
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
    assert!(
        now_held < held - MADE as u64 / 2,
        "the exited thread's {} MiB stayed resident: {} MiB above the start after 5 s",
        MADE >> 20,
        now_held >> 20
    );
}
