//! A multi-threaded workload with perfalloc's report printed before, at the peak, and after.
//!
//!     cargo run --release --example stats_report
use std::sync::{Arc, Barrier};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

fn main() {
    println!("== before\n{}", perfalloc::stats());
    let threads = 4;
    let at_peak = Arc::new(Barrier::new(threads + 1));
    let done = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (at_peak, done) = (at_peak.clone(), done.clone());
            std::thread::spawn(move || {
                // A cache of records of mixed sizes, as a service might hold.
                let records: Vec<Vec<u8>> = (0..50_000)
                    .map(|i| vec![t as u8; 16 + (i * 37) % 2000])
                    .collect();
                // black_box: an allocation nobody reads may otherwise be optimised away.
                let blob = std::hint::black_box(vec![0u8; 8 << 20]); // one large buffer per thread
                at_peak.wait();
                done.wait();
                drop(blob);
                records.len()
            })
        })
        .collect();
    at_peak.wait();
    println!(
        "== at peak ({threads} threads holding their data)\n{}",
        perfalloc::stats()
    );
    done.wait();
    let n: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    perfalloc::trim();
    println!(
        "== after ({n} records dropped, threads exited)\n{}",
        perfalloc::stats()
    );
    println!(
        "as JSON: {}",
        serde_json::to_string(&perfalloc::thread_stats()).unwrap()
    );
}
