//! 2,000 short-lived threads. Alone in its binary: it compares process-wide mapped memory, which
//! other tests running beside it would move.
mod common;
use common::*;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// 2,000 short-lived threads, each leaving blocks for the others to free. Exited threads' heaps are
/// reused, so what the allocator maps does not grow with the number of threads.
#[test]
fn thread_churn_keeps_mapped_memory_bounded() {
    let pending = Arc::new(std::sync::Mutex::new(Vec::<Blk>::new()));
    let wave = |from: u64, to: u64| {
        for group in (from..to).step_by(8) {
            let hs: Vec<_> = (group..group + 8)
                .map(|t| {
                    let pending = pending.clone();
                    std::thread::spawn(move || {
                        let mut rng = Rng(t);
                        let mine: Vec<Blk> = (0..200)
                            .map(|i| Blk::new(rng.size(4096), 8, t << 20 | i, false))
                            .collect();
                        let theirs = std::mem::replace(&mut *pending.lock().unwrap(), mine);
                        for b in theirs {
                            b.free();
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        }
    };
    wave(0, 200);
    let after_200 = perfalloc::stats().mapped_bytes;
    wave(200, 2000);
    let after_2000 = perfalloc::stats().mapped_bytes;
    for b in std::mem::take(&mut *pending.lock().unwrap()) {
        b.free();
    }
    // Ten times the threads may not cost ten times the memory: allow a fixed margin for
    // fragmentation and the test harness's own threads.
    assert!(
        after_2000 <= after_200 + (64 << 20),
        "mapped grew from {after_200} to {after_2000} bytes with thread churn"
    );
    assert!(
        perfalloc::stats().threads < 100,
        "exited threads' heaps are still counted as live"
    );
}
