//! perfalloc in one page: install it, run a realistic workload, and ask it where the memory went.
//!
//!     cargo run --release --example quickstart
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Deterministic "log lines": a user, an action and a path, like a small web service's access log.
fn log_lines(n: usize, seed: u64) -> Vec<String> {
    let actions = ["GET", "POST", "PUT", "DELETE"];
    let mut x = seed;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!(
                "user{} {} /api/v1/items/{}?page={}",
                x % 5000,
                actions[(x >> 20) as usize % 4],
                x % 977,
                i % 13
            )
        })
        .collect()
}

/// Counts requests per user and per path prefix: strings, hash maps and B-trees.
fn index(lines: &[String]) -> (HashMap<String, u32>, BTreeMap<String, u32>) {
    let mut users = HashMap::new();
    let mut paths = BTreeMap::new();
    for line in lines {
        let mut parts = line.split(' ');
        let user = parts.next().unwrap_or_default();
        let path = parts.nth(1).unwrap_or_default();
        *users.entry(user.to_string()).or_insert(0) += 1;
        let prefix: String = path.split('?').next().unwrap_or_default().to_string();
        *paths.entry(prefix).or_insert(0) += 1;
    }
    (users, paths)
}

fn main() {
    let start = Instant::now();
    // Four threads each build their part of the log and its index; the main thread merges them,
    // freeing blocks that other threads allocated.
    let (parts, measured) = perfalloc::measure(|| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let lines = log_lines(200_000, t + 1);
                    let (users, paths) = index(&lines);
                    (lines.len(), users, paths)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let at_peak = perfalloc::stats();
    let (merged, merge_cost) = perfalloc::measure(|| {
        let mut all: HashMap<String, u32> = HashMap::new();
        for (_, users, _) in parts {
            for (user, n) in users {
                *all.entry(user).or_insert(0) += n;
            }
        }
        all
    });
    let busiest = merged
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(u, n)| (u.clone(), *n));
    let elapsed = start.elapsed();

    println!("perfalloc quickstart: 800,000 log lines indexed on 4 threads in {elapsed:.2?}");
    if let Some((user, n)) = busiest {
        println!(
            "busiest of {} users: {user} with {n} requests\n",
            merged.len()
        );
    }
    println!("main thread while the workers ran: {measured}");
    println!("main thread merging the indexes:   {merge_cost}\n");
    println!("process memory with all indexes alive:\n{at_peak}");
    drop(merged);
    let end = perfalloc::stats();
    println!(
        "after dropping them: live {} KiB, peak {} MiB, {} allocations and {} deallocations so far",
        end.live_bytes / 1024,
        end.peak_live_bytes >> 20,
        end.allocations,
        end.deallocations
    );
    assert!(end.peak_live_bytes >= at_peak.live_bytes);
}
