//! Statistics with exact expectations.
//!
//! `harness = false`: the tests run one after another on the main thread, with no test-harness
//! threads allocating beside them, so process-wide deltas are exact.
mod common;

use common::ClassLive;
use perfalloc::{measure, stats, thread_stats};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// The scalar figures of a snapshot; the snapshot (and its vector) is dropped at once.
struct Figures {
    live_bytes: u64,
    allocations: u64,
    deallocations: u64,
    reallocations: u64,
    live_blocks: u64,
}

impl Figures {
    fn now() -> Figures {
        let s = stats();
        Figures {
            live_bytes: s.live_bytes,
            allocations: s.allocations,
            deallocations: s.deallocations,
            reallocations: s.reallocations,
            live_blocks: s.size_classes.iter().map(|c| c.live_blocks).sum(),
        }
    }
}

fn measure_counts_a_known_sequence_exactly() {
    let (_, m) = measure(|| {
        let a = black_box(Box::new([1u8; 100]));
        let b = black_box(vec![0u64; 1000]); // 8000 bytes
        let c = black_box(vec![0u8; 300_000]); // large
        drop(a);
        drop(c);
        b
    });
    assert_eq!(m.allocations, 3);
    assert_eq!(m.deallocations, 2);
    assert_eq!(m.allocated_bytes, 100 + 8000 + 300_000);
    assert_eq!(m.freed_bytes, 100 + 300_000);
    assert_eq!(m.net_bytes(), 8000);
    assert_eq!(m.peak_bytes, 308_100);
    assert_eq!(m.reallocations, 0);
}

fn measure_counts_reallocations_once_and_tracks_bytes() {
    let (v, m) = measure(|| {
        let mut v: Vec<u8> = Vec::with_capacity(10);
        v.extend_from_slice(&[1; 10]);
        v.reserve_exact(90); // realloc 10 -> 100
        v.extend_from_slice(&[1; 90]);
        v.reserve_exact(200_000 - 100); // realloc 100 -> 200_000 (small -> large)
        v
    });
    assert_eq!(m.allocations, 1);
    assert_eq!(m.reallocations, 2);
    assert_eq!(m.deallocations, 0);
    assert_eq!(m.net_bytes(), 200_000);
    assert_eq!(m.allocated_bytes, 10 + 100 + 200_000);
    assert_eq!(m.freed_bytes, 10 + 100);
    // Moving 100 bytes into the 200 KB block holds both for a moment.
    assert_eq!(m.peak_bytes, 200_100);
    drop(v);
}

fn nested_measure_keeps_the_outer_peak() {
    let (_, outer) = measure(|| {
        drop(black_box(vec![0u8; 50_000]));
        let (_, inner) = measure(|| drop(black_box(vec![0u8; 1000])));
        assert_eq!(inner.peak_bytes, 1000);
    });
    assert_eq!(outer.peak_bytes, 50_000);
    assert_eq!(outer.allocations, 2);
}

fn thread_stats_and_thread_peak() {
    std::thread::spawn(|| {
        let t0 = thread_stats();
        let v = black_box(vec![0u8; 1 << 20]);
        drop(v);
        let t1 = thread_stats();
        assert_eq!(t1.allocations - t0.allocations, 1);
        assert_eq!(t1.deallocations - t0.deallocations, 1);
        assert_eq!(t1.net_bytes, t0.net_bytes);
        // A new thread's net may start negative: it frees the closure its parent boxed.
        assert!(t1.peak_bytes as i64 >= t0.net_bytes + (1 << 20));
        perfalloc::reset_thread_peak();
        let t2 = thread_stats();
        assert_eq!(t2.peak_bytes, t2.net_bytes.max(0) as u64);
        let w = black_box(vec![0u8; 4096]);
        assert_eq!(
            thread_stats().peak_bytes as i64,
            (t2.net_bytes + 4096).max(0)
        );
        drop(w);
    })
    .join()
    .unwrap();
}

fn cross_thread_frees_leave_live_bytes_where_they_started() {
    // Snapshots are taken as `Figures` so that no snapshot's own vector is live during the next.
    let before = Figures::now();
    let blocks: Vec<Box<[u8]>> = (0..10_000)
        .map(|i| vec![1u8; i % 500 + 1].into_boxed_slice())
        .collect();
    assert!(Figures::now().live_bytes >= before.live_bytes + 10_000 * 250);
    std::thread::spawn(move || drop(blocks)).join().unwrap();
    let after = Figures::now();
    assert_eq!(after.live_bytes, before.live_bytes);
    assert_eq!(
        after.allocations - before.allocations,
        after.deallocations - before.deallocations
    );
    // Per-class live blocks are back too.
    assert_eq!(after.live_blocks, before.live_blocks);
}

fn thread_exit_loses_no_counts() {
    let before = Figures::now();
    let hs: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let kept: Vec<Vec<u8>> = (0..1000).map(|i| vec![0; i + 1]).collect();
                for i in 0..1000 {
                    drop(black_box(vec![0u8; i + 1]));
                }
                kept
            })
        })
        .collect();
    let kept: Vec<Vec<Vec<u8>>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let after = Figures::now();
    // Each thread: 2000 allocations of its own; the kept outer Vec grows by realloc.
    assert!(after.allocations - before.allocations >= 8 * 2000);
    assert!(after.allocations >= before.allocations && after.deallocations >= before.deallocations);
    let kept_bytes: u64 = kept.iter().flatten().map(|v| v.len() as u64).sum();
    assert_eq!(kept_bytes, 8 * 1000 * 1001 / 2);
    // The kept blocks (and the outer vectors holding them) are live although their threads exited.
    let vec_size = std::mem::size_of::<Vec<u8>>();
    let outer: u64 = kept
        .iter()
        .map(|v| (v.capacity() * vec_size) as u64)
        .sum::<u64>()
        + (kept.capacity() * std::mem::size_of::<Vec<Vec<u8>>>()) as u64;
    assert_eq!(after.live_bytes - before.live_bytes, kept_bytes + outer);
    drop(kept);
    let end = Figures::now();
    assert_eq!(end.live_bytes, before.live_bytes);
    assert_eq!(
        end.allocations - before.allocations,
        end.deallocations - before.deallocations
    );
}

fn process_peak_stays_within_its_documented_bound_under_8_threads() {
    let base = stats().live_bytes;
    perfalloc::reset_peak();
    // Each thread holds at most 4 MiB at its own peak, and the threads peak at the same moment
    // (the barrier), so the true process peak is known: base + 8 * 4 MiB.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = t as u64 * 7 + 1;
                let mut held: Vec<Vec<u8>> = Vec::new();
                for _ in 0..20_000 {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if held.len() < 64 && rng >> 62 != 0 {
                        held.push(vec![0; (rng >> 40) as usize % 4096 + 1]);
                    } else if !held.is_empty() {
                        held.swap_remove((rng >> 33) as usize % held.len());
                    }
                }
                drop(held);
                let peak = black_box(vec![1u8; 4 << 20]);
                barrier.wait();
                barrier.wait();
                drop(peak);
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let s = stats();
    let true_peak_min = base + 8 * (4 << 20);
    // Documented: within (threads + 1) x threshold; 9 threads were alive at the peak.
    let slack = 10 * perfalloc::PUBLISH_THRESHOLD;
    assert!(
        s.peak_live_bytes + slack >= true_peak_min,
        "peak {} < {}",
        s.peak_live_bytes,
        true_peak_min
    );
    // Churn of 64 blocks of up to 4 KiB per thread adds at most 8 * 256 KiB on top.
    assert!(
        s.peak_live_bytes <= true_peak_min + 8 * (256 << 10) + slack,
        "peak {} too high for a true peak near {}",
        s.peak_live_bytes,
        true_peak_min
    );
}

/// The same bound when the peak is made of small blocks, which threads publish only in steps of
/// the threshold: each of 8 threads holds 1 MiB + 100 KiB in 1 KiB blocks at the same moment, so
/// up to 100 KiB of each stays unpublished.
fn process_peak_of_small_blocks_stays_within_its_bound() {
    const HELD: usize = 1100;
    let base = stats().live_bytes;
    perfalloc::reset_peak();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut held: Vec<Box<[u8]>> = Vec::with_capacity(HELD);
                held.extend((0..HELD).map(|_| vec![1u8; 1024].into_boxed_slice()));
                barrier.wait();
                barrier.wait();
                drop(black_box(held));
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let s = stats();
    let per_thread = (HELD * 1024 + HELD * std::mem::size_of::<Box<[u8]>>()) as u64;
    let true_peak = base + 8 * per_thread;
    // Documented: within (threads + 1) x threshold; 9 threads were alive at the peak.
    let slack = 10 * perfalloc::PUBLISH_THRESHOLD;
    assert!(
        s.peak_live_bytes + slack >= true_peak,
        "peak {} < {} - {}",
        s.peak_live_bytes,
        true_peak,
        slack
    );
    assert!(
        s.peak_live_bytes <= true_peak + slack,
        "peak {} > {} + {}",
        s.peak_live_bytes,
        true_peak,
        slack
    );
}

/// Threads that leave blocks live when they exit publish them, and the process peak sees them:
/// 40 threads one after another each allocate 100 KiB (less than the threshold, so they never
/// publish while they run) and hand it over; then 40 more free those blocks, 100 KiB each, so that
/// no thread ever publishes a change of its own while the blocks are live. Only the exits move
/// the process total.
fn process_peak_counts_what_exiting_threads_leave_live() {
    const THREADS: usize = 40;
    let base = stats().live_bytes;
    perfalloc::reset_peak();
    let mut kept: Vec<Vec<Box<[u8]>>> = Vec::with_capacity(THREADS);
    for _ in 0..THREADS {
        let blocks = std::thread::spawn(|| {
            (0..100)
                .map(|_| vec![1u8; 1024].into_boxed_slice())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        kept.push(blocks);
    }
    let held = stats().live_bytes - base;
    assert!(held >= (THREADS * 100 * 1024) as u64);
    for blocks in kept.drain(..) {
        std::thread::spawn(move || drop(blocks)).join().unwrap();
    }
    // Only the peak remembers the blocks now; this thread and one other were alive at a time.
    let peak = stats().peak_live_bytes;
    let slack = 3 * perfalloc::PUBLISH_THRESHOLD;
    assert!(
        peak + slack >= base + held,
        "peak {peak} < {} - {slack}: what exiting threads left live was never in the peak",
        base + held
    );
}

/// A `realloc` that shrinks a block by moving it is never refused by the limit: it ends with
/// fewer live bytes than it began with, and a null would make `shrink_to_fit` abort.
fn limit_never_refuses_a_realloc_that_shrinks() {
    use std::alloc::{alloc, dealloc, realloc, Layout};
    std::thread::spawn(|| {
        let big = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: a valid non-zero layout.
        let p = unsafe { alloc(big) };
        assert!(!p.is_null());
        // SAFETY: `p` holds `big.size()` bytes.
        unsafe { std::ptr::write_bytes(p, 7, big.size()) };
        // 100 KiB more that this thread has not published (below the threshold): the shrunken
        // block's allocation (48 KiB, of a class: a move) would publish, and be checked.
        let small: Vec<Box<[u8]>> = (0..100)
            .map(|_| vec![0u8; 1024].into_boxed_slice())
            .collect();
        perfalloc::set_limit(Some(1));
        let refused = Vec::<u8>::new().try_reserve_exact(200 << 10).is_err();
        // SAFETY: `p` came from `alloc` with `big`; the new size is non-zero.
        let q = unsafe { realloc(p, big, 48 << 10) };
        perfalloc::set_limit(None);
        assert!(refused, "the limit admitted a growing request");
        assert!(!q.is_null(), "the limit refused a realloc that shrinks");
        // SAFETY: `q` holds 48 KiB, copied from `p`.
        let kept = unsafe { std::slice::from_raw_parts(q, 48 << 10) };
        assert!(
            kept.iter().all(|&b| b == 7),
            "the shrunken block lost its contents"
        );
        // SAFETY: `q` came from `realloc` with this size and alignment.
        unsafe { dealloc(q, Layout::from_size_align(48 << 10, 8).unwrap()) };
        drop(small);
    })
    .join()
    .unwrap();
}

/// The same for a small block moving to a smaller table class (`realloc`'s fast path): this thread
/// has not published its last ~126 KiB, so the new block's allocation would publish, and be
/// checked against the limit.
fn limit_never_refuses_a_small_realloc_that_shrinks() {
    use std::alloc::{alloc, dealloc, realloc, Layout};
    std::thread::spawn(|| {
        let old = Layout::from_size_align(4000, 8).unwrap();
        // SAFETY: a valid non-zero layout.
        let p = unsafe { alloc(old) };
        assert!(!p.is_null());
        // SAFETY: `p` holds 4000 bytes.
        unsafe { std::ptr::write_bytes(p, 9, old.size()) };
        let threshold = perfalloc::PUBLISH_THRESHOLD as i64;
        let mut held: Vec<Box<[u8; 1024]>> = Vec::with_capacity(200);
        // The thread started at net 0 with nothing published; staying below the threshold, it
        // publishes nothing.
        while thread_stats().net_bytes < threshold - 2048 {
            held.push(Box::new([0; 1024]));
        }
        assert!(thread_stats().net_bytes < threshold);
        perfalloc::set_limit(Some(1));
        let refused = Vec::<u8>::new().try_reserve_exact(3000).is_err();
        // SAFETY: `p` came from `alloc` with `old`; the new size is non-zero.
        let q = unsafe { realloc(p, old, 3000) };
        perfalloc::set_limit(None);
        assert!(
            refused,
            "the limit admitted a request that would publish past it"
        );
        assert!(
            !q.is_null(),
            "the limit refused a small realloc that shrinks"
        );
        // SAFETY: `q` holds 3000 bytes, copied from `p`.
        let kept = unsafe { std::slice::from_raw_parts(q, 3000) };
        assert!(
            kept.iter().all(|&b| b == 9),
            "the shrunken block lost its contents"
        );
        // SAFETY: `q` came from `realloc` with this size and alignment.
        unsafe { dealloc(q, Layout::from_size_align(3000, 8).unwrap()) };
        drop(held);
    })
    .join()
    .unwrap();
}

fn limit_makes_try_reserve_fail_and_recovers() {
    let live = stats().live_bytes;
    perfalloc::set_limit(Some(live + (64 << 20)));
    assert_eq!(perfalloc::limit(), Some(live + (64 << 20)));
    let mut v: Vec<u8> = Vec::new();
    assert!(
        v.try_reserve(128 << 20).is_err(),
        "over-limit reservation succeeded"
    );
    assert!(
        v.try_reserve(16 << 20).is_ok(),
        "within-limit reservation failed"
    );
    let mut w: Vec<u8> = Vec::new();
    assert!(
        w.try_reserve(60 << 20).is_err(),
        "16 + 60 MiB exceeds the 64 MiB limit"
    );
    drop(v);
    assert!(
        w.try_reserve(60 << 20).is_ok(),
        "freed memory must count against the limit"
    );
    perfalloc::set_limit(None);
    assert_eq!(perfalloc::limit(), None);
    let mut x: Vec<u8> = Vec::new();
    assert!(x.try_reserve(256 << 20).is_ok());
}

/// Eight threads ask for 8 MiB each at the same moment, under a limit 16.5 MiB above what is
/// live: the documented slack (128 KiB a thread) admits two, never three. Requests checked at the
/// same time must see each other, not only what is already published.
fn limit_holds_when_threads_ask_at_the_same_moment() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Barrier};
    const THREADS: usize = 8;
    const TRIALS: usize = 60;
    let granted = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Barrier::new(THREADS + 1));
    let askers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (granted, gate) = (granted.clone(), gate.clone());
            std::thread::spawn(move || {
                for _ in 0..TRIALS {
                    gate.wait(); // the limit is set
                    let mut v: Vec<u8> = Vec::new();
                    if v.try_reserve_exact(8 << 20).is_ok() {
                        granted.fetch_add(1, SeqCst);
                    }
                    gate.wait(); // counted
                    drop(v);
                    gate.wait(); // freed
                }
            })
        })
        .collect();
    let mut most = 0;
    for _ in 0..TRIALS {
        perfalloc::set_limit(Some(stats().live_bytes + (16 << 20) + (512 << 10)));
        granted.store(0, SeqCst);
        gate.wait();
        gate.wait();
        perfalloc::set_limit(None);
        most = most.max(granted.load(SeqCst));
        gate.wait();
    }
    for a in askers {
        a.join().unwrap();
    }
    assert!(
        most <= 2,
        "{most} requests of 8 MiB admitted under 16.5 MiB of room"
    );
}

/// A thread probing the limit with a request that can never fit (`try_reserve` of 1 TiB, over and
/// over) must not make another thread's requests, which fit with room to spare, fail.
fn a_request_the_limit_refuses_holds_nobody_back() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    perfalloc::set_limit(Some(stats().live_bytes + (512 << 20)));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut refused = 0u64;
            while !stop.load(Relaxed) {
                refused += u64::from(Vec::<u8>::new().try_reserve_exact(1 << 40).is_err());
            }
            refused
        })
    };
    let mut failed = 0;
    for _ in 0..20_000 {
        let mut v: Vec<u8> = Vec::new();
        failed += usize::from(v.try_reserve_exact(1 << 20).is_err());
    }
    stop.store(true, Relaxed);
    let refused = prober.join().unwrap();
    perfalloc::set_limit(None);
    assert!(refused > 0, "the probe was never refused");
    assert_eq!(failed, 0, "1 MiB requests refused under 512 MiB of room");
}

/// A small block growing into another class under the limit is refused like any allocation, and
/// keeps its contents; without the limit it grows.
fn limit_refuses_a_small_realloc_and_keeps_the_block() {
    std::thread::spawn(|| {
        let mut vs: Vec<Vec<u8>> = (0..400).map(|i| vec![i as u8; 1024]).collect();
        perfalloc::set_limit(Some(1));
        // Each growth (1 KiB -> 2 KiB, a move between two table classes) goes through until one
        // would publish past the limit.
        let refused = vs
            .iter_mut()
            .position(|v| v.try_reserve_exact(2048 - 1024).is_err());
        perfalloc::set_limit(None);
        let i = refused.expect("the limit refused no realloc");
        let v = &mut vs[i];
        assert_eq!(v.capacity(), 1024, "a refused realloc moved the block");
        assert!(
            v.iter().all(|&b| b == i as u8),
            "a refused realloc lost the contents"
        );
        assert!(v.try_reserve_exact(2048 - 1024).is_ok());
        assert!(v.iter().all(|&b| b == i as u8));
    })
    .join()
    .unwrap();
}

fn report_and_serde_round_trip() {
    let keep: Vec<Box<[u8; 200]>> = (0..100).map(|_| Box::new([0; 200])).collect();
    let s = stats();
    let c = s
        .size_classes
        .iter()
        .find(|c| c.block_size == 224)
        .expect("the 224-byte class is in use");
    assert!(c.live_blocks >= 100 && c.allocations >= 100);
    assert!(s.active_bytes >= s.live_bytes);
    assert!(s.mapped_bytes >= s.active_bytes);
    assert!(s.threads >= 1);
    let text = s.to_string();
    assert!(
        text.contains("live") && text.contains("224 B"),
        "report: {text}"
    );
    let json = serde_json::to_string(&s).unwrap();
    let back: perfalloc::Stats = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let (_, m) = measure(|| drop(black_box(vec![0u8; 10])));
    let back: perfalloc::Measurement =
        serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    drop(keep);
}

/// Aligned requests take paths of their own (16-aligned ones up to 4 KiB, KiB-table ones above
/// 4 KiB): the free must put each block back in the class its allocation took it from, or one
/// class's live blocks would stay up and another's fall.
fn aligned_blocks_are_freed_into_the_class_they_came_from() {
    use std::alloc::{alloc, dealloc, Layout};
    const N: usize = 50;
    let cases = [
        (24, 16, 32),
        (64, 16, 64),
        (4000, 16, 4096),
        (3000, 32, 4096),
        (5000, 64, 5120),
        (5000, 1024, 5120),
        (9000, 32, 10240),
        (70_000, 512, 81_920),
    ];
    let mut blocks = [std::ptr::null_mut::<u8>(); N];
    for (size, align, block) in cases {
        let layout = Layout::from_size_align(size, align).unwrap();
        let before = ClassLive::now();
        for p in &mut blocks {
            // SAFETY: a valid non-zero layout; every block is freed below with it.
            *p = unsafe { alloc(layout) };
        }
        let during = ClassLive::now();
        for &p in &blocks {
            assert!(
                !p.is_null() && p as usize % align == 0,
                "{size} B aligned to {align}"
            );
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { dealloc(p, layout) };
        }
        let after = ClassLive::now();
        assert_eq!(
            during.of(block),
            before.of(block) + N as u64,
            "{size} B aligned to {align}: not from the {block}-byte class"
        );
        assert!(
            after.same_as(&before),
            "{size} B aligned to {align}: {after:?} against {before:?}"
        );
    }
}

fn a_refused_allocation_changes_no_figure() {
    let before = stats();
    let thread_before = thread_stats();
    // More address space than x86_64 user space has: the OS must refuse it.
    let huge = (1usize << 47) + (1 << 46);
    let ((), m) = measure(|| {
        let mut v: Vec<u8> = Vec::new();
        assert!(v.try_reserve_exact(huge).is_err());
    });
    assert_eq!(m.peak_bytes, 0, "the refused request moved the scope peak");
    assert_eq!(m.allocated_bytes, 0);
    let after = stats();
    assert!(
        after.peak_live_bytes < before.peak_live_bytes + (1 << 20),
        "process peak moved"
    );
    assert!(
        after.live_bytes < before.live_bytes + (1 << 20),
        "live bytes moved"
    );
    assert_eq!(
        thread_stats().peak_bytes,
        thread_before.peak_bytes,
        "thread peak moved"
    );
}

/// A small allocation refused by the limit must leave the thread's marks where they were: the
/// fast path takes its room before testing it, and a room left too low would make a later
/// allocation, far below the thread's peak, look like a new peak.
fn thread_peak_survives_a_refused_small_allocation() {
    use std::alloc::{alloc, dealloc, Layout};
    std::thread::spawn(|| {
        let layout = Layout::from_size_align(1024, 8).unwrap();
        let big: Vec<Vec<u8>> = (0..400).map(|_| vec![1u8; 1024]).collect();
        drop(black_box(big));
        let peak = thread_stats().peak_bytes;
        assert!(peak >= 400 * 1024);
        let mut kept = Vec::with_capacity(1000);
        perfalloc::set_limit(Some(1));
        // Small blocks go through until one would publish; that one is refused.
        loop {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            if p.is_null() {
                break;
            }
            kept.push(p);
            assert!(kept.len() < 1000, "the limit refused nothing");
        }
        perfalloc::set_limit(None);
        // One block back and one more: far below the peak, so no new peak.
        let last = kept.pop().unwrap();
        // SAFETY: allocated above with `layout`.
        unsafe { dealloc(last, layout) };
        // SAFETY: non-zero size.
        kept.push(unsafe { alloc(layout) });
        assert_eq!(thread_stats().peak_bytes, peak, "the thread peak moved");
        for p in kept {
            // SAFETY: allocated above with `layout`.
            unsafe { dealloc(p, layout) };
        }
    })
    .join()
    .unwrap();
}

fn counts_never_go_backwards_while_threads_exit() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        std::thread::spawn(|| {
                            black_box((0..200).map(|i| vec![0u8; i]).collect::<Vec<_>>()).len()
                        })
                    })
                    .collect();
                for h in hs {
                    h.join().unwrap();
                }
            }
        })
    };
    let mut last = Figures::now();
    for _ in 0..2000 {
        let now = Figures::now();
        assert!(
            now.allocations >= last.allocations,
            "allocations went backwards"
        );
        assert!(
            now.deallocations >= last.deallocations,
            "deallocations went backwards"
        );
        last = now;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}

/// Threads that only reallocate, moving their blocks between classes, into the arena and out to
/// large blocks, call neither `alloc` nor `dealloc`: a reader's `allocations` and `deallocations`
/// must never count a move as either (not even for the moment a move is under way) nor go
/// backwards. The reader's own allocations (each `stats()` makes its report) are taken out with
/// its exact `thread_stats()`, calibrated while the movers wait.
fn counts_never_overshoot_or_go_backwards_while_reallocs_move_blocks() {
    use std::alloc::{alloc, dealloc, realloc, Layout};
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{Arc, Barrier};
    const MOVERS: usize = 4;
    const SIZES: [usize; 9] = [24, 200, 3000, 20_000, 100_000, 300_000, 40, 9000, 150_000];
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Barrier::new(MOVERS + 1));
    let movers: Vec<_> = (0..MOVERS)
        .map(|t| {
            let (stop, gate) = (stop.clone(), gate.clone());
            std::thread::spawn(move || {
                let mut size = 8;
                // SAFETY: a non-zero layout; reallocated below with its current size, freed last.
                let mut p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) };
                assert!(!p.is_null());
                gate.wait(); // allocated
                gate.wait(); // the reader has calibrated
                let mut i = t;
                while !stop.load(Relaxed) {
                    let next = SIZES[i % SIZES.len()];
                    i += 1;
                    // SAFETY: `p` is live with `size` bytes, aligned to 8; `next` is non-zero.
                    p = unsafe { realloc(p, Layout::from_size_align(size, 8).unwrap(), next) };
                    assert!(!p.is_null());
                    size = next;
                }
                // SAFETY: `p` is live with `size` bytes.
                unsafe { dealloc(p, Layout::from_size_align(size, 8).unwrap()) };
            })
        })
        .collect();
    gate.wait();
    // With the movers idle, a reader's counts less its own are the same at every snapshot.
    let others = || {
        let f = Figures::now();
        let me = thread_stats();
        (
            f.allocations as i64 - me.allocations as i64,
            f.deallocations as i64 - me.deallocations as i64,
        )
    };
    let calibrated = others();
    assert_eq!(others(), calibrated, "counts moved with nobody allocating");
    gate.wait();
    // The first failure is kept until the movers are stopped, so that none outlives the test.
    let mut failure = None;
    let mut last = Figures::now();
    for _ in 0..3000 {
        let now = Figures::now();
        let me = thread_stats();
        let seen = (
            now.allocations as i64 - me.allocations as i64,
            now.deallocations as i64 - me.deallocations as i64,
        );
        if seen.0 > calibrated.0 || seen.1 > calibrated.1 {
            failure = Some(format!(
                "moves counted as (de)allocations: {seen:?} > {calibrated:?}"
            ));
        } else if now.allocations < last.allocations || now.deallocations < last.deallocations {
            failure = Some("allocations or deallocations went backwards".to_string());
        }
        if failure.is_some() {
            break;
        }
        last = now;
    }
    stop.store(true, Relaxed);
    for m in movers {
        m.join().unwrap();
    }
    assert_eq!(failure, None);
}

/// A thread that only allocates stops checking its peak on each allocation (see `counters`): the
/// peak must still be exact in the middle of a climb, after the free that ends it, across a
/// second climb that stays below it and one that passes it, and inside `measure`.
fn a_climbing_thread_keeps_an_exact_peak() {
    use std::alloc::{alloc, dealloc, Layout};
    std::thread::spawn(|| {
        let sizes: Vec<usize> = (0..3000).map(|i| 16 + (i * 37) % 500).collect();
        let mut held: Vec<(*mut u8, Layout)> = Vec::with_capacity(sizes.len() * 2);
        let climb = |held: &mut Vec<(*mut u8, Layout)>, sizes: &[usize]| {
            for &size in sizes {
                let layout = Layout::from_size_align(size, 8).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { alloc(layout) };
                assert!(!p.is_null());
                held.push((p, layout));
            }
        };
        let drop_last = |held: &mut Vec<(*mut u8, Layout)>, n: usize| {
            for (p, layout) in held.drain(held.len() - n..) {
                // SAFETY: allocated by `climb` with this layout.
                unsafe { dealloc(p, layout) };
            }
        };
        perfalloc::reset_thread_peak();
        let base = thread_stats().net_bytes;
        let sum = |s: &[usize]| s.iter().sum::<usize>() as i64;
        let peak = || thread_stats().peak_bytes as i64;

        climb(&mut held, &sizes[..2000]);
        let first = base + sum(&sizes[..2000]);
        assert_eq!(peak(), first, "mid-climb");
        drop_last(&mut held, 1000);
        assert_eq!(peak(), first, "after the free ending the climb");
        let net = thread_stats().net_bytes;
        climb(&mut held, &sizes[2000..2100]); // stays below the first peak
        assert!(net + sum(&sizes[2000..2100]) < first);
        drop_last(&mut held, 1);
        assert_eq!(peak(), first, "a lower climb moved it");
        let net = thread_stats().net_bytes;
        climb(&mut held, &sizes[..]); // passes it
        let second = net + sum(&sizes[..]);
        drop_last(&mut held, 500);
        assert_eq!(peak(), second, "a higher climb");

        let net = thread_stats().net_bytes;
        let ((), m) = measure(|| {
            climb(&mut held, &sizes[..1500]);
            drop_last(&mut held, 1500);
        });
        assert_eq!(
            m.peak_bytes as i64,
            sum(&sizes[..1500]),
            "measure of a climb"
        );
        let outer = second.max(net + sum(&sizes[..1500]));
        assert_eq!(peak(), outer, "the outer peak after measure");
        let n = held.len();
        drop_last(&mut held, n);
    })
    .join()
    .unwrap();
}

/// `stats()` reads each heap's net bytes while its thread runs, and a slow path moves the heap's
/// marks and its room together: concurrent reads must stay within what the worker holds. Its live
/// bytes swing between 0 and 320 KiB across publishing marks and climbs, so every few operations
/// take the slow path. On x86 this does not catch a reader without the sequence lock (the mark and
/// the room share a cache line, and a torn pair was never seen); what it holds is the bound.
fn live_bytes_read_while_marks_move_stay_within_the_swing() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    let ballast = black_box(vec![1u8; 4 << 20]); // keeps `live` far from zero
    let base = stats().live_bytes as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, started) = (stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut held: Vec<Vec<u8>> = Vec::with_capacity(8);
            started.store(true, Relaxed);
            while !stop.load(Relaxed) {
                for _ in 0..8 {
                    held.push(black_box(Vec::with_capacity(40 << 10)));
                }
                held.clear();
            }
        })
    };
    while !started.load(Relaxed) {
        std::hint::spin_loop();
    }
    let slack = 64 << 10; // the worker's own small allocations, and one operation in flight
    let swing = 8 * (40 << 10);
    for i in 0..20_000 {
        let live = stats().live_bytes as i64;
        assert!(
            live >= base - slack && live <= base + swing + slack,
            "read {i}: live {live}, expected within [{}, {}]",
            base - slack,
            base + swing + slack
        );
    }
    stop.store(true, Relaxed);
    worker.join().unwrap();
    drop(ballast);
}

/// Built without the `stats` feature: the documented contract is that every counted figure reads
/// zero, `measure` and `thread_stats` return their defaults, and the limit is not enforced, while
/// the figures the OS gives (mapped, resident, threads) stay.
fn without_statistics_counted_figures_read_zero_and_the_limit_is_inert() {
    let (v, m) = measure(|| black_box(vec![7u8; 300_000]));
    let boxed = black_box(Box::new([1u8; 100]));
    // Blocks resized where they are: a large one, and one grown into the arena and then in it.
    let mut large = black_box(vec![1u8; 300_000]);
    large.reserve_exact(3_000_000);
    let mut grown = black_box(vec![2u8; 20_000]);
    grown.reserve_exact(100_000);
    grown.reserve_exact(400_000);
    assert_eq!(m, perfalloc::Measurement::default());
    assert_eq!(thread_stats(), perfalloc::ThreadStats::default());
    let s = stats();
    let f = Figures::now();
    assert_eq!(
        (f.live_bytes, f.allocations, f.deallocations, f.live_blocks),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (s.peak_live_bytes, s.reallocations, s.active_bytes),
        (0, 0, 0)
    );
    assert_eq!(s.large, perfalloc::LargeStats::default());
    assert!(s.size_classes.is_empty());
    // The allocator holds at least the two live blocks' memory, and this thread has a heap.
    assert!(s.mapped_bytes >= 300_000, "{s:?}");
    assert!(s.threads >= 1);
    perfalloc::set_limit(Some(1));
    let mut w: Vec<u8> = Vec::new();
    let reserved = w.try_reserve(1 << 20);
    perfalloc::set_limit(None);
    assert!(reserved.is_ok(), "no limit is enforced without statistics");
    drop((v, boxed, w, large, grown));
}

/// A pthread key whose destructor runs, at thread exit, after perfalloc's own (keys' destructors run
/// in creation order, and perfalloc made its key at the first allocation, before `main`): what it
/// does goes through the shared fallback heap. `LATE_WORK` says whether it runs `late_sequence`.
static mut LATE_KEY: libc::pthread_key_t = 0;
static LATE_WORK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LATE_RAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An allocation, three reallocations (between small classes, then to a large block and back) and
/// a free.
fn late_sequence() {
    use std::alloc::{alloc, dealloc, realloc, Layout};
    let layout = |n| Layout::from_size_align(n, 8).unwrap();
    // SAFETY: non-zero sizes; each realloc and the free get the block's current layout.
    unsafe {
        let mut p = black_box(alloc(layout(16)));
        let mut size = 16;
        for next in [100, 300_000, 5000] {
            p = black_box(realloc(p, layout(size), next));
            assert!(!p.is_null());
            size = next;
        }
        dealloc(p, layout(size));
    }
}

unsafe extern "C" fn late_destructor(_: *mut libc::c_void) {
    if LATE_WORK.load(std::sync::atomic::Ordering::Relaxed) {
        late_sequence();
    }
    LATE_RAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn reallocations_after_the_exit_destructor_count_as_reallocations() {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: an out-pointer to a static only this test uses; the destructor is a valid function.
    assert_eq!(
        unsafe {
            libc::pthread_key_create(std::ptr::addr_of_mut!(LATE_KEY), Some(late_destructor))
        },
        0
    );
    let thread_exit = |work: bool| {
        LATE_WORK.store(work, Relaxed);
        let before = Figures::now();
        std::thread::spawn(|| {
            // SAFETY: the key exists; a non-null value makes its destructor run at exit.
            unsafe { libc::pthread_setspecific(LATE_KEY, 1 as *mut libc::c_void) };
        })
        .join()
        .unwrap();
        let after = Figures::now();
        (
            after.allocations - before.allocations,
            after.deallocations - before.deallocations,
            after.reallocations - before.reallocations,
        )
    };
    let idle = thread_exit(false);
    let busy = thread_exit(true);
    assert_eq!(LATE_RAN.load(Relaxed), 2, "the late destructor did not run");
    assert_eq!(
        (busy.0 - idle.0, busy.1 - idle.1, busy.2 - idle.2),
        (1, 1, 3),
        "(allocations, deallocations, reallocations) of the late sequence"
    );
    // The same figures as on a live thread.
    let (_, m) = measure(late_sequence);
    assert_eq!((m.allocations, m.deallocations, m.reallocations), (1, 1, 3));
}

fn main() {
    if !cfg!(feature = "stats") {
        let ok = std::panic::catch_unwind(
            without_statistics_counted_figures_read_zero_and_the_limit_is_inert,
        )
        .is_ok();
        println!("stats (feature off): {}", if ok { "ok" } else { "FAILED" });
        std::process::exit(i32::from(!ok));
    }
    let tests: &[(&str, fn())] = &[
        (
            "measure_counts_a_known_sequence_exactly",
            measure_counts_a_known_sequence_exactly,
        ),
        (
            "measure_counts_reallocations_once_and_tracks_bytes",
            measure_counts_reallocations_once_and_tracks_bytes,
        ),
        (
            "nested_measure_keeps_the_outer_peak",
            nested_measure_keeps_the_outer_peak,
        ),
        ("thread_stats_and_thread_peak", thread_stats_and_thread_peak),
        (
            "a_climbing_thread_keeps_an_exact_peak",
            a_climbing_thread_keeps_an_exact_peak,
        ),
        (
            "live_bytes_read_while_marks_move_stay_within_the_swing",
            live_bytes_read_while_marks_move_stay_within_the_swing,
        ),
        (
            "cross_thread_frees_leave_live_bytes_where_they_started",
            cross_thread_frees_leave_live_bytes_where_they_started,
        ),
        ("thread_exit_loses_no_counts", thread_exit_loses_no_counts),
        (
            "process_peak_stays_within_its_documented_bound_under_8_threads",
            process_peak_stays_within_its_documented_bound_under_8_threads,
        ),
        (
            "process_peak_of_small_blocks_stays_within_its_bound",
            process_peak_of_small_blocks_stays_within_its_bound,
        ),
        (
            "process_peak_counts_what_exiting_threads_leave_live",
            process_peak_counts_what_exiting_threads_leave_live,
        ),
        (
            "limit_makes_try_reserve_fail_and_recovers",
            limit_makes_try_reserve_fail_and_recovers,
        ),
        (
            "limit_never_refuses_a_realloc_that_shrinks",
            limit_never_refuses_a_realloc_that_shrinks,
        ),
        (
            "limit_never_refuses_a_small_realloc_that_shrinks",
            limit_never_refuses_a_small_realloc_that_shrinks,
        ),
        (
            "limit_holds_when_threads_ask_at_the_same_moment",
            limit_holds_when_threads_ask_at_the_same_moment,
        ),
        (
            "a_request_the_limit_refuses_holds_nobody_back",
            a_request_the_limit_refuses_holds_nobody_back,
        ),
        (
            "limit_refuses_a_small_realloc_and_keeps_the_block",
            limit_refuses_a_small_realloc_and_keeps_the_block,
        ),
        ("report_and_serde_round_trip", report_and_serde_round_trip),
        (
            "aligned_blocks_are_freed_into_the_class_they_came_from",
            aligned_blocks_are_freed_into_the_class_they_came_from,
        ),
        (
            "a_refused_allocation_changes_no_figure",
            a_refused_allocation_changes_no_figure,
        ),
        (
            "thread_peak_survives_a_refused_small_allocation",
            thread_peak_survives_a_refused_small_allocation,
        ),
        (
            "counts_never_go_backwards_while_threads_exit",
            counts_never_go_backwards_while_threads_exit,
        ),
        (
            "counts_never_overshoot_or_go_backwards_while_reallocs_move_blocks",
            counts_never_overshoot_or_go_backwards_while_reallocs_move_blocks,
        ),
        (
            "reallocations_after_the_exit_destructor_count_as_reallocations",
            reallocations_after_the_exit_destructor_count_as_reallocations,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    println!("stats: {} passed, {} failed", tests.len() - failed, failed);
    std::process::exit(i32::from(failed > 0));
}
