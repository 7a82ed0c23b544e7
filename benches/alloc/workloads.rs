// Allocator workloads, included by `alloc_<allocator>.rs`, each of which sets its own
// `#[global_allocator]` and `ALLOCATOR` name. Four modes (`ALLOC_BENCH_MODE`):
// - unset: criterion timings, ids `<workload>/<ALLOCATOR>[/<param>]`;
// - `memory`: every workload once in a forked child; prints the child's peak resident set;
// - `release`: 1 GiB in random 1-64 KiB blocks, touched, then 90% freed at random; prints the
//   resident set right after the frees and one second later;
// - `count`: runs the workload `ALLOC_BENCH_WORKLOAD` (any but `large` and the pair rows)
//   `ALLOC_BENCH_ITERS` times and prints the median time of an iteration, for
//   `benches/alternate.py` to time and `benches/alloc_share.sh` to count under callgrind.
// `benches/compare.py` runs the four binaries interleaved and prints ratios.

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const PAIR_SIZES: [usize; 6] = [16, 64, 256, 1024, 4096, 32768];

fn small_sizes(n: usize, seed: u64) -> Vec<Layout> {
    let mut rng = Rng(seed);
    (0..n).map(|_| Layout::from_size_align(8 + (rng.next() % 505) as usize, 8).unwrap()).collect()
}

/// Allocates 100k mixed small blocks (8-512 B), writes to each, then frees them LIFO or FIFO.
fn bulk(layouts: &[Layout], ptrs: &mut Vec<*mut u8>, lifo: bool) {
    ptrs.clear();
    for &l in layouts {
        // SAFETY: non-zero size; freed below with the same layout.
        let p = unsafe { alloc(l) };
        // SAFETY: p is a fresh block of at least 8 bytes.
        unsafe { p.write(1) };
        ptrs.push(p);
    }
    let free = |(p, l): (&*mut u8, &Layout)| unsafe { dealloc(*p, *l) };
    if lifo {
        ptrs.iter().zip(layouts).rev().for_each(free);
    } else {
        ptrs.iter().zip(layouts).for_each(free);
    }
}

fn vec_push() {
    let mut v = Vec::new();
    for i in 0..100_000u64 {
        v.push(i);
    }
    black_box(&v);
}

fn strings() {
    let v: Vec<String> = (0..10_000).map(|i| format!("item-{i}-{}", i * 7)).collect();
    black_box(&v);
}

fn btree() {
    let mut m = BTreeMap::new();
    for i in 0..10_000u64 {
        m.insert(format!("key-{:08}", i.wrapping_mul(2654435761) % 100_000), i);
    }
    for i in 0..5_000u64 {
        m.remove(&format!("key-{:08}", i.wrapping_mul(2654435761) % 100_000));
    }
    black_box(&m);
}

/// 1,000 small `HashMap<String, u64>`s of 1-32 entries each, filled one insert at a time (so their
/// tables grow), as per-request or per-record maps are. hashbrown aligns its tables to 16 bytes,
/// which no other workload here asks for. The hasher has fixed keys (std's are random per process),
/// so that every run probes the same way.
fn hashmaps() {
    type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    let mut rng = Rng(11);
    let maps: Vec<HashMap<String, u64, Fixed>> = (0..1_000)
        .map(|_| {
            let mut m = HashMap::default();
            for i in 0..1 + rng.next() % 32 {
                m.insert(format!("field-{i}"), i);
            }
            m
        })
        .collect();
    black_box(&maps);
}

/// A producer thread allocates 100k blocks (16-512 B) in batches of 64; a consumer frees them.
fn producer_consumer() {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Box<[u8]>>>(64);
    let consumer = std::thread::spawn(move || {
        for batch in rx {
            black_box(&batch);
        }
    });
    let mut rng = Rng(7);
    for _ in 0..100_000 / 64 {
        let batch: Vec<Box<[u8]>> =
            (0..64).map(|_| vec![1u8; 16 + (rng.next() % 497) as usize].into_boxed_slice()).collect();
        tx.send(batch).unwrap();
    }
    drop(tx);
    consumer.join().unwrap();
}

const LARSON_SLOTS: usize = 1000;

fn larson_layout(slot: usize) -> Layout {
    Layout::from_size_align(16 + (slot * 37) % 241, 8).unwrap()
}

/// Two threads each do 50k random replacements in a shared array of blocks, so about half of every
/// thread's frees are of blocks the other thread allocated.
fn larson(slots: &Arc<Vec<AtomicPtr<u8>>>) {
    let hs: Vec<_> = (0..2)
        .map(|t| {
            let slots = slots.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(t + 11);
                for _ in 0..50_000 {
                    let s = (rng.next() % LARSON_SLOTS as u64) as usize;
                    let l = larson_layout(s);
                    // SAFETY: non-zero size; the slot's layout is fixed, so whoever frees it uses it.
                    let p = unsafe { alloc(l) };
                    // SAFETY: fresh block.
                    unsafe { p.write(t as u8) };
                    let old = slots[s].swap(p, Ordering::AcqRel);
                    if !old.is_null() {
                        // SAFETY: the swap made us the only owner of `old`, allocated with `l`.
                        unsafe { dealloc(old, l) };
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn larson_slots() -> Arc<Vec<AtomicPtr<u8>>> {
    Arc::new((0..LARSON_SLOTS).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect())
}

fn larson_drain(slots: &Arc<Vec<AtomicPtr<u8>>>) {
    for (s, slot) in slots.iter().enumerate() {
        let p = slot.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: as in `larson`.
            unsafe { dealloc(p, larson_layout(s)) };
        }
    }
}

/// Replaces one of 8 live large blocks (64 KiB-4 MiB) with a new one whose pages are all written.
fn large(ring: &mut [Vec<u8>], rng: &mut Rng) {
    let i = (rng.next() % ring.len() as u64) as usize;
    let size = 64 * 1024 + (rng.next() % (4 * 1024 * 1024 - 64 * 1024)) as usize;
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let base = v.as_mut_ptr();
    for p in (0..size).step_by(4096) {
        // SAFETY: `p < size`, the capacity; writing an initialised byte needs no prior value.
        unsafe { base.add(p).write(1) };
    }
    ring[i] = v;
}

fn timings(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    g.throughput(Throughput::Elements(1));
    for size in PAIR_SIZES {
        let layout = Layout::from_size_align(size, 8).unwrap();
        g.bench_with_input(BenchmarkId::new(ALLOCATOR, size), &layout, |b, &layout| {
            b.iter(|| {
                // SAFETY: non-zero size; freed with the same layout.
                unsafe {
                    let p = alloc(black_box(layout));
                    dealloc(black_box(p), layout);
                }
            })
        });
    }
    g.finish();

    let layouts = small_sizes(100_000, 42);
    let mut ptrs = Vec::with_capacity(layouts.len());
    let mut g = c.benchmark_group("bulk_100k");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function(BenchmarkId::new(ALLOCATOR, "lifo"), |b| b.iter(|| bulk(&layouts, &mut ptrs, true)));
    g.bench_function(BenchmarkId::new(ALLOCATOR, "fifo"), |b| b.iter(|| bulk(&layouts, &mut ptrs, false)));
    g.finish();

    let mut g = c.benchmark_group("realistic");
    g.bench_function(BenchmarkId::new(ALLOCATOR, "vec_push_100k"), |b| b.iter(vec_push));
    g.bench_function(BenchmarkId::new(ALLOCATOR, "strings_10k"), |b| b.iter(strings));
    g.bench_function(BenchmarkId::new(ALLOCATOR, "btreemap_10k"), |b| b.iter(btree));
    g.bench_function(BenchmarkId::new(ALLOCATOR, "hashmaps_1k"), |b| b.iter(hashmaps));
    g.finish();

    let mut g = c.benchmark_group("threads");
    g.bench_function(BenchmarkId::new(ALLOCATOR, "producer_consumer_100k"), |b| b.iter(producer_consumer));
    let slots = larson_slots();
    g.bench_function(BenchmarkId::new(ALLOCATOR, "larson_2x50k"), |b| b.iter(|| larson(&slots)));
    larson_drain(&slots);
    g.finish();

    let mut g = c.benchmark_group("large");
    let mut ring: Vec<Vec<u8>> = (0..8).map(|_| Vec::new()).collect();
    let mut rng = Rng(99);
    g.bench_function(BenchmarkId::new(ALLOCATOR, "replace_64k_4m"), |b| b.iter(|| large(&mut ring, &mut rng)));
    g.finish();
}

fn peak_rss_of_child(f: impl FnOnce()) -> u64 {
    // SAFETY: the child only runs `f` and exits; the benchmark process has no other threads here.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            f();
            libc::_exit(0);
        }
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage);
        if std::env::var_os("ALLOC_BENCH_FAULTS").is_some() {
            eprintln!("minflt {}", usage.ru_minflt);
        }
        usage.ru_maxrss as u64 // KiB
    }
}

fn memory() {
    let layouts = small_sizes(100_000, 42);
    let baseline = peak_rss_of_child(|| {});
    type Run<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let runs: Vec<Run> = vec![
        ("bulk_100k/lifo", Box::new(|| bulk(&layouts, &mut Vec::with_capacity(100_000), true))),
        ("bulk_100k/fifo", Box::new(|| bulk(&layouts, &mut Vec::with_capacity(100_000), false))),
        ("realistic/vec_push_100k", Box::new(vec_push)),
        ("realistic/strings_10k", Box::new(strings)),
        ("realistic/btreemap_10k", Box::new(btree)),
        ("realistic/hashmaps_1k", Box::new(hashmaps)),
        ("threads/producer_consumer_100k", Box::new(producer_consumer)),
        (
            "threads/larson_2x50k",
            Box::new(|| {
                let s = larson_slots();
                larson(&s);
                larson_drain(&s);
            }),
        ),
        (
            "large/replace_64k_4m",
            Box::new(|| {
                let mut ring: Vec<Vec<u8>> = (0..8).map(|_| Vec::new()).collect();
                let mut rng = Rng(99);
                for _ in 0..200 {
                    large(&mut ring, &mut rng);
                }
            }),
        ),
    ];
    for (name, f) in runs {
        let kib = peak_rss_of_child(f);
        println!("memory {name} {ALLOCATOR} {}", kib.saturating_sub(baseline));
    }
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

fn release() {
    let base = rss_bytes();
    let mut rng = Rng(0x1234_5678);
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    while total < 1 << 30 {
        let size = 1 + (rng.next() % (64 * 1024)) as usize;
        blocks.push(vec![0xA5; size]);
        total += size;
    }
    let peak = rss_bytes() - base;
    let mut kept = 0;
    for b in blocks.iter_mut() {
        if rng.next() % 10 == 0 {
            kept += b.len();
        } else {
            *b = Vec::new();
        }
    }
    let after_free = rss_bytes() - base;
    // The program goes on: a small allocation every 10 ms for one second.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        black_box(vec![0u8; 100]);
        std::thread::sleep(Duration::from_millis(10));
    }
    let after_1s = rss_bytes() - base;
    println!(
        "release {ALLOCATOR} peak_mib {} kept_mib {} after_free_mib {} after_1s_mib {}",
        peak >> 20,
        kept >> 20,
        after_free >> 20,
        after_1s >> 20
    );
    black_box(blocks);
}

/// Runs one workload `ALLOC_BENCH_ITERS` times and prints the median time of an iteration (mode
/// `count`; `benches/alloc_share.sh` counts its instructions, `benches/alternate.py` times it).
fn count() {
    let name = std::env::var("ALLOC_BENCH_WORKLOAD").expect("ALLOC_BENCH_WORKLOAD names a workload");
    let iters: usize = std::env::var("ALLOC_BENCH_ITERS").map_or(1, |v| v.parse().expect("ALLOC_BENCH_ITERS"));
    let layouts = small_sizes(100_000, 42);
    let mut ptrs = Vec::with_capacity(layouts.len());
    let slots = larson_slots();
    let mut f: Box<dyn FnMut()> = match name.as_str() {
        "bulk_100k/lifo" => Box::new(|| bulk(&layouts, &mut ptrs, true)),
        "bulk_100k/fifo" => Box::new(|| bulk(&layouts, &mut ptrs, false)),
        "realistic/vec_push_100k" => Box::new(vec_push),
        "realistic/strings_10k" => Box::new(strings),
        "realistic/btreemap_10k" => Box::new(btree),
        "realistic/hashmaps_1k" => Box::new(hashmaps),
        "threads/producer_consumer_100k" => Box::new(producer_consumer),
        "threads/larson_2x50k" => Box::new(|| larson(&slots)),
        other => panic!("no workload {other} in this mode"),
    };
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_nanos());
    }
    larson_drain(&slots);
    times.sort_unstable();
    println!("count {name} {ALLOCATOR} median_ns {}", times[iters / 2]);
}

fn main() {
    match std::env::var("ALLOC_BENCH_MODE").as_deref() {
        Ok("memory") => memory(),
        Ok("release") => release(),
        Ok("count") => count(),
        _ => {
            let mut c = Criterion::default().configure_from_args();
            timings(&mut c);
            c.final_summary();
        }
    }
}
