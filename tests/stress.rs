//! Stress tests: the paths on which blocks cross threads, heaps change owners and memory goes back
//! to the OS, driven at once by many threads with blocks on both sides of every size boundary.
//! The other test files take these paths one at a time; here they meet: realloc chains between
//! threads, threads that exit while others hold and later free their blocks, aligned blocks freed
//! far from home, 256 threads ending together, heaps purged while their owners sleep, traffic
//! through the fallback heap from late key destructors, and `fork` while threads allocate.
//!
//! Every block carries a pattern that is checked whenever it is reallocated, changes hands or is
//! freed. Once a test's threads are joined and its blocks freed, the counted figures must be back
//! where they started: the crate documents them as exact once the threads involved are quiet.
//!
//! `harness = false`: the tests run one after another on the main thread, with no test-harness
//! threads allocating beside them, so process-wide figures compare exactly. Each test runs with
//! one fixed seed; `PERFALLOC_STRESS_SCALE=n` runs each with `n` seeds, from
//! `PERFALLOC_STRESS_SEED` (default 1). The line of a test names its seed before the test starts,
//! so a failure, an abort or a hang shows which one to rerun.
mod common;

use common::{assert_disjoint, Blk, ClassLive, Rng};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Request sizes at the size-class boundaries (README, "How it works"): the 8-byte classes up to
/// 64 B, the first table up to 4 KiB, small pages up to 8 KiB, medium pages from 10 KiB, the size
/// from which a growing block moves into the arena (64 KiB), and the last class (128 KiB).
const CLASS_SIZES: [usize; 14] = [
    1, 8, 64, 65, 4096, 4097, 8192, 8193, 10240, 10241, 65535, 65536, 131_072, 131_073,
];

/// Sizes beyond the classes: the arena up to 16 MiB, a mapping of its own above.
const LARGE_SIZES: [usize; 4] = [131_073, 1 << 20, 16 << 20, (16 << 20) + 1];

/// Alignments up to 64 KiB: a class serves an aligned request from the power-of-two class of
/// `max(size, align)` up to 128 KiB, the arena one aligned up to 16 KiB, and a block aligned
/// beyond that gets a mapping of its own.
const ALIGNS: [usize; 7] = [1, 16, 64, 4096, 16 << 10, 32 << 10, 64 << 10];

/// A class boundary moved by up to 8 bytes either way, or one time in 32 a large size.
fn boundary_size(rng: &mut Rng) -> usize {
    if rng.below(32) == 0 {
        return LARGE_SIZES[rng.index(LARGE_SIZES.len())];
    }
    let size = CLASS_SIZES[rng.index(CLASS_SIZES.len())] + rng.index(17);
    size.saturating_sub(8).max(1)
}

/// 8 (the alignment of most Rust allocations) two times in three, else one of `ALIGNS`.
fn some_align(rng: &mut Rng) -> usize {
    if rng.below(3) == 0 {
        ALIGNS[rng.index(ALIGNS.len())]
    } else {
        8
    }
}

/// The counted figures that must come back once a test's threads are joined and its blocks freed.
#[derive(Debug)]
struct Balance {
    live_bytes: u64,
    /// `allocations - deallocations`.
    unfreed: i64,
    large_live_blocks: u64,
    large_live_bytes: u64,
    classes: ClassLive,
}

impl Balance {
    /// The figures now; `None` without the `stats` feature, where every counted figure reads zero.
    /// No snapshot is live while the next is taken, so none counts another's memory.
    fn take() -> Option<Balance> {
        if !cfg!(feature = "stats") {
            return None;
        }
        let classes = ClassLive::now();
        let s = perfalloc::stats();
        Some(Balance {
            live_bytes: s.live_bytes,
            unfreed: s.allocations as i64 - s.deallocations as i64,
            large_live_blocks: s.large.live_blocks,
            large_live_bytes: s.large.live_bytes,
            classes,
        })
    }
}

/// Asserts that the figures are back at `start` (nothing to compare without statistics).
fn assert_balanced(start: Option<Balance>) {
    let (Some(start), Some(end)) = (start, Balance::take()) else {
        return;
    };
    assert_eq!(end.live_bytes, start.live_bytes, "live bytes");
    assert_eq!(end.unfreed, start.unfreed, "allocations less deallocations");
    assert_eq!(
        (end.large_live_blocks, end.large_live_bytes),
        (start.large_live_blocks, start.large_live_bytes),
        "live large blocks and bytes"
    );
    assert!(
        end.classes.same_as(&start.classes),
        "live blocks per class: {:?} at the start, {:?} at the end",
        start.classes,
        end.classes
    );
}

/// Four threads run realloc chains (one to four steps) over sizes on both sides of every class,
/// arena and large-mapping boundary, and pass blocks to each other, which check, resize, keep or
/// free them. Half of each thread's last blocks outlive it and are freed once it has exited.
fn realloc_chains_across_boundaries_with_blocks_changing_threads(seed: u64) {
    const THREADS: usize = 4;
    const STEPS: usize = 1500;
    const MOST_HELD: usize = 32;
    let start = Balance::take();
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Blk>()).unzip();
    let workers: Vec<_> = inboxes
        .into_iter()
        .enumerate()
        .map(|(t, inbox)| {
            let senders = senders.clone();
            std::thread::spawn(move || {
                let mut rng = Rng((seed << 8) | t as u64);
                let mut next_id = (seed << 48) | ((t as u64) << 40);
                let mut held: Vec<Blk> = Vec::new();
                for _ in 0..STEPS {
                    match rng.below(8) {
                        0..=2 => {
                            next_id += 1;
                            let (size, align) = (boundary_size(&mut rng), some_align(&mut rng));
                            held.push(Blk::new(size, align, next_id, rng.below(4) == 0));
                        }
                        3 | 4 if !held.is_empty() => {
                            let i = rng.index(held.len());
                            for _ in 0..=rng.below(4) {
                                held[i].realloc(boundary_size(&mut rng));
                            }
                        }
                        5 | 6 if !held.is_empty() => {
                            let block = held.swap_remove(rng.index(held.len()));
                            senders[rng.index(THREADS)].send(block).unwrap();
                        }
                        7 if !held.is_empty() => held.swap_remove(rng.index(held.len())).free(),
                        _ => {}
                    }
                    for mut block in inbox.try_iter() {
                        match rng.below(3) {
                            0 => block.free(),
                            1 => {
                                block.realloc(boundary_size(&mut rng));
                                held.push(block);
                            }
                            _ => {
                                block.check();
                                held.push(block);
                            }
                        }
                    }
                    if held.len() > MOST_HELD {
                        held.swap_remove(rng.index(held.len())).free();
                    }
                }
                // Every thread keeps its inbox until all have stopped sending.
                drop(senders);
                for block in inbox {
                    block.free();
                }
                assert_disjoint(&held);
                let outliving = held.split_off(held.len() / 2);
                for block in held {
                    block.free();
                }
                outliving
            })
        })
        .collect();
    drop(senders);
    let leftovers: Vec<Blk> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_disjoint(&leftovers);
    for block in leftovers {
        block.free();
    }
    assert_balanced(start);
}

/// Waves of eight short-lived threads, each of which leaves its blocks in a shared pool when it
/// exits: the next wave adopts the exited threads' heaps while a reaper thread frees and
/// reallocates those blocks, and each new thread, before it allocates anything of its own, frees
/// or reallocates a block of an exited thread. Once all are joined, no exited thread's heap counts
/// as in use.
fn blocks_outlive_waves_of_exiting_threads(seed: u64) {
    const WAVES: u64 = 20;
    const WAVE: u64 = 8;
    let start = Balance::take();
    let threads_at_start = perfalloc::stats().threads;
    let pool: Arc<Mutex<Vec<Blk>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reaper = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            while !stop.load(Relaxed) {
                let taken: Vec<Blk> = {
                    let mut pool = pool.lock().unwrap();
                    let half = pool.len() / 2;
                    pool.split_off(half)
                };
                for mut block in taken {
                    if rng.below(4) == 0 {
                        block.realloc(boundary_size(&mut rng));
                    }
                    block.free();
                }
                std::thread::yield_now();
            }
        })
    };
    for wave in 0..WAVES {
        let threads: Vec<_> = (0..WAVE)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng((seed << 16) | (wave << 8) | t);
                    let mut mine: Vec<Blk> = Vec::new();
                    let inherited = pool.lock().unwrap().pop();
                    if let Some(mut block) = inherited {
                        if rng.below(2) == 0 {
                            block.free();
                        } else {
                            block.realloc(boundary_size(&mut rng));
                            mine.push(block);
                        }
                    }
                    for i in 0..150 {
                        let id = (seed << 48) | (wave << 24) | (t << 16) | i;
                        let size = if rng.below(10) == 0 {
                            boundary_size(&mut rng)
                        } else {
                            rng.size(4096)
                        };
                        mine.push(Blk::new(size, some_align(&mut rng), id, false));
                        if rng.below(3) == 0 {
                            mine.swap_remove(rng.index(mine.len())).free();
                        }
                    }
                    // Take up to 40 blocks of exited threads to free, and leave ours behind.
                    let theirs = {
                        let mut pool = pool.lock().unwrap();
                        let rest = pool.len().saturating_sub(40);
                        let theirs = pool.split_off(rest);
                        pool.extend(mine);
                        theirs
                    };
                    for block in theirs {
                        block.free();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
    stop.store(true, Relaxed);
    reaper.join().unwrap();
    let rest = std::mem::take(&mut *pool.lock().unwrap());
    assert_disjoint(&rest);
    for block in rest {
        block.free();
    }
    drop((pool, stop));
    assert_eq!(
        perfalloc::stats().threads,
        threads_at_start,
        "heaps in use after {} threads exited",
        WAVES * WAVE + 1
    );
    assert_balanced(start);
}

/// Blocks aligned to 16 B-64 KiB, smaller than, as large as and larger than their alignment, made
/// on one thread, checked, reallocated (which must keep the alignment) and freed on another; the
/// last ones are freed here once both threads have exited.
fn aligned_blocks_are_reallocated_and_freed_on_other_threads(seed: u64) {
    const BLOCKS: u64 = 2000;
    const ALIGNED: [usize; 6] = [16, 64, 4096, 16 << 10, 32 << 10, 64 << 10];
    const SIZES: [usize; 11] = [
        1, 100, 4096, 8192, 16384, 16385, 65536, 65537, 131_072, 131_073, 300_000,
    ];
    let start = Balance::take();
    let (sender, receiver) = mpsc::sync_channel::<Blk>(64);
    let producer = std::thread::spawn(move || {
        let mut rng = Rng(seed);
        for i in 0..BLOCKS {
            let size = SIZES[rng.index(SIZES.len())];
            let align = ALIGNED[rng.index(ALIGNED.len())];
            let block = Blk::new(size, align, (seed << 48) | i, rng.below(2) == 0);
            sender.send(block).unwrap();
        }
    });
    let consumer = std::thread::spawn(move || {
        let mut rng = Rng(!seed);
        let mut held: Vec<Blk> = Vec::new();
        for mut block in receiver {
            if rng.below(3) == 0 {
                block.realloc(SIZES[rng.index(SIZES.len())]);
            } else {
                block.check();
            }
            held.push(block);
            if held.len() > 64 {
                assert_disjoint(&held);
                held.swap_remove(rng.index(held.len())).free();
            }
        }
        held
    });
    producer.join().unwrap();
    for block in consumer.join().unwrap() {
        block.free();
    }
    assert_balanced(start);
}

/// 256 threads alive at once, each of which makes 40 blocks and frees the 40 of the thread before
/// it, exit at the same moment, twice: the second wave adopts the heaps the first handed back,
/// with the first wave's last blocks still live in them, and once all are joined no exited
/// thread's heap counts as in use.
fn many_threads_exit_at_once(seed: u64) {
    const THREADS: u64 = 256;
    const WAVES: u64 = 2;
    let start = Balance::take();
    let threads_at_start = perfalloc::stats().threads;
    let shared: Arc<Mutex<Vec<Blk>>> = Arc::new(Mutex::new(Vec::new()));
    for wave in 0..WAVES {
        let gate = Arc::new(Barrier::new(THREADS as usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (gate, shared) = (gate.clone(), shared.clone());
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || {
                        let mut rng = Rng((seed << 32) | (wave << 16) | t);
                        let mine: Vec<Blk> = (0..40)
                            .map(|i| {
                                let (size, align) = (rng.size(20_000), some_align(&mut rng));
                                Blk::new(
                                    size,
                                    align,
                                    (seed << 48) | (wave << 40) | (t << 20) | i,
                                    false,
                                )
                            })
                            .collect();
                        gate.wait(); // all alive
                        let theirs = std::mem::replace(&mut *shared.lock().unwrap(), mine);
                        for block in theirs {
                            block.free();
                        }
                        gate.wait(); // all exit together
                    })
                    .unwrap()
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(
            perfalloc::stats().threads,
            threads_at_start,
            "heaps in use after wave {wave} exited"
        );
    }
    for block in std::mem::take(&mut *shared.lock().unwrap()) {
        block.free();
    }
    drop(shared);
    assert_balanced(start);
}

/// Six threads allocate and free most of it, leaving dirty pages and sending some blocks to the
/// others; then three sleep past the point where other threads purge an idle heap (README,
/// "Giving memory back": the 200 ms purge delay and a whole period more) while the other three
/// keep allocating, free the blocks sent (remote frees into the sleepers' heaps) and call
/// `perfalloc::trim()`; the sleepers wake into heaps that the others' slow paths may have purged
/// under them. The roles swap each round. The blocks every thread holds throughout must keep their contents.
fn heaps_purged_while_their_owners_sleep_keep_their_blocks(seed: u64) {
    const THREADS: u64 = 6;
    const ROUNDS: u64 = 2;
    const IDLE: Duration = Duration::from_millis(500);
    let start = Balance::take();
    let (sender, receiver) = mpsc::channel::<Blk>();
    let receiver = Arc::new(Mutex::new(receiver));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (sender, receiver) = (sender.clone(), receiver.clone());
            std::thread::spawn(move || {
                let mut rng = Rng((seed << 8) | t);
                let mut next_id = (seed << 48) | (t << 40);
                let mut kept: Vec<Blk> = Vec::new();
                let free_what_was_sent = || {
                    let sent: Vec<Blk> = receiver.lock().unwrap().try_iter().collect();
                    for block in sent {
                        block.free();
                    }
                };
                for round in 0..ROUNDS {
                    let mut fresh: Vec<Blk> = (0..400)
                        .map(|_| {
                            next_id += 1;
                            let size = if rng.below(8) == 0 {
                                boundary_size(&mut rng)
                            } else {
                                rng.size(8192)
                            };
                            Blk::new(size, some_align(&mut rng), next_id, false)
                        })
                        .collect();
                    while fresh.len() > 20 {
                        let block = fresh.swap_remove(rng.index(fresh.len()));
                        if rng.below(4) == 0 {
                            sender.send(block).unwrap();
                        } else {
                            block.free();
                        }
                    }
                    kept.append(&mut fresh);
                    if (t + round) % 2 == 0 {
                        std::thread::sleep(IDLE);
                    } else {
                        let until = Instant::now() + IDLE;
                        while Instant::now() < until {
                            let churn: Vec<Box<[u8; 48]>> =
                                (0..600).map(|_| Box::new([1; 48])).collect();
                            drop(churn);
                            free_what_was_sent();
                            perfalloc::trim();
                        }
                    }
                    free_what_was_sent();
                    for block in &kept {
                        block.check();
                    }
                }
                kept
            })
        })
        .collect();
    drop(sender);
    let kept: Vec<Blk> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unclaimed: Vec<Blk> = receiver.lock().unwrap().try_iter().collect();
    drop(receiver);
    assert_disjoint(&kept);
    for block in kept.into_iter().chain(unclaimed) {
        block.free();
    }
    assert_balanced(start);
}

/// Blocks that live threads made, waiting for a late destructor to free them.
static FOR_LATE_DESTRUCTORS: Mutex<Vec<Blk>> = Mutex::new(Vec::new());
/// Blocks that late destructors made, waiting for a live thread to free them.
static FROM_LATE_DESTRUCTORS: Mutex<Vec<Blk>> = Mutex::new(Vec::new());
static LATE_KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();
static LATE_RUNS: AtomicUsize = AtomicUsize::new(0);
static LATE_FAILURES: AtomicUsize = AtomicUsize::new(0);

/// The destructor of `LATE_KEY`, made after perfalloc's own key (at the process's first
/// allocation), so it runs after perfalloc handed the thread's heap back: everything it does goes
/// through the shared fallback heap. Its argument is the seed of its sizes. A panic must not
/// unwind out of it, so a failed check is counted in `LATE_FAILURES` (its message is printed).
extern "C" fn late_traffic(seed: *mut libc::c_void) {
    let work = || {
        let mut rng = Rng(seed as u64);
        let theirs: Vec<Blk> = {
            let mut blocks = FOR_LATE_DESTRUCTORS.lock().unwrap();
            let rest = blocks.len().saturating_sub(30);
            blocks.split_off(rest)
        };
        for mut block in theirs {
            if rng.below(3) == 0 {
                block.realloc(boundary_size(&mut rng).min(300_000));
            }
            block.free();
        }
        let mine: Vec<Blk> = (0..30)
            .map(|i| {
                let (size, align) = (boundary_size(&mut rng), some_align(&mut rng));
                Blk::new(size.min(300_000), align, ((seed as u64) << 16) | i, false)
            })
            .collect();
        FROM_LATE_DESTRUCTORS.lock().unwrap().extend(mine);
    };
    if std::panic::catch_unwind(work).is_err() {
        LATE_FAILURES.fetch_add(1, Relaxed);
    }
    LATE_RUNS.fetch_add(1, Relaxed);
}

/// 200 threads end with a key destructor that runs after perfalloc's own exit cleanup, and so
/// allocates, reallocates and frees through the shared fallback heap: it frees blocks that a live
/// thread made and leaves blocks of its own, which that thread frees, while the live thread keeps
/// making more.
fn fallback_heap_traffic_from_late_key_destructors(seed: u64) {
    const THREADS: u64 = 200;
    const WAVE: u64 = 8;
    let start = Balance::take();
    let key = *LATE_KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY: `key` is a valid out-pointer, and `late_traffic` has the destructor's signature.
        let made = unsafe { libc::pthread_key_create(&mut key, Some(late_traffic)) };
        assert_eq!(made, 0, "pthread_key_create");
        key
    });
    let (runs_at_start, failures_at_start) = (LATE_RUNS.load(Relaxed), LATE_FAILURES.load(Relaxed));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(!seed);
            let mut next_id = (seed << 48) | (1 << 47);
            while !stop.load(Relaxed) {
                if FOR_LATE_DESTRUCTORS.lock().unwrap().len() < 240 {
                    let fresh: Vec<Blk> = (0..20)
                        .map(|_| {
                            next_id += 1;
                            let (size, align) = (boundary_size(&mut rng), some_align(&mut rng));
                            Blk::new(size.min(300_000), align, next_id, false)
                        })
                        .collect();
                    FOR_LATE_DESTRUCTORS.lock().unwrap().extend(fresh);
                }
                for block in std::mem::take(&mut *FROM_LATE_DESTRUCTORS.lock().unwrap()) {
                    block.free();
                }
                std::thread::yield_now();
            }
        })
    };
    for wave in (0..THREADS).step_by(WAVE as usize) {
        let threads: Vec<_> = (wave..wave + WAVE)
            .map(|t| {
                std::thread::spawn(move || {
                    drop(std::hint::black_box(vec![0u8; 64])); // the thread has a heap
                    let sizes_seed = (seed << 32) | t;
                    // SAFETY: the key exists; a non-null value makes its destructor run at exit.
                    unsafe { libc::pthread_setspecific(key, sizes_seed as *mut libc::c_void) };
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
    stop.store(true, Relaxed);
    feeder.join().unwrap();
    for block in std::mem::take(&mut *FOR_LATE_DESTRUCTORS.lock().unwrap()) {
        block.free();
    }
    for block in std::mem::take(&mut *FROM_LATE_DESTRUCTORS.lock().unwrap()) {
        block.free();
    }
    drop(stop);
    assert_eq!(
        LATE_RUNS.load(Relaxed) - runs_at_start,
        THREADS as usize,
        "late destructors that ran"
    );
    assert_eq!(
        LATE_FAILURES.load(Relaxed) - failures_at_start,
        0,
        "late destructors that failed a check (see above)"
    );
    assert_balanced(start);
}

/// What a forked child does: reallocates and frees blocks made by threads it does not have (their
/// heaps were orphaned at the fork), allocates and reallocates blocks of its own, and spawns a
/// thread that frees those and allocates more, which the child frees. Panics on a corrupted block.
fn forked_child_work(seed: u64, inherited: Vec<Blk>) {
    let mut rng = Rng(seed);
    for mut block in inherited {
        if rng.below(2) == 0 {
            block.realloc(boundary_size(&mut rng));
        }
        block.free();
    }
    let mut mine: Vec<Blk> = Vec::new();
    for i in 0..200 {
        let (size, align) = (boundary_size(&mut rng), some_align(&mut rng));
        mine.push(Blk::new(size, align, (seed << 16) | i, rng.below(3) == 0));
        if rng.below(3) == 0 {
            let j = rng.index(mine.len());
            mine[j].realloc(boundary_size(&mut rng));
        }
        if rng.below(3) == 0 {
            mine.swap_remove(rng.index(mine.len())).free();
        }
    }
    assert_disjoint(&mine);
    let helper = std::thread::spawn(move || {
        let mut rng = Rng(!seed);
        let made: Vec<Blk> = (0..100)
            .map(|i| Blk::new(rng.size(70_000), 8, (seed << 16) | (1 << 15) | i, false))
            .collect();
        for block in mine {
            block.free();
        }
        made
    });
    for block in helper.join().unwrap() {
        block.free();
    }
}

/// Waits for `child` up to `limit`, then kills it; returns its status and whether it was killed.
fn wait_for(child: libc::pid_t, limit: Duration) -> (libc::c_int, bool) {
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `child` is this process's child, not yet waited for; `status` is a valid pointer.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            return (status, false);
        }
        if start.elapsed() > limit {
            // SAFETY: as above; the child is killed and reaped here, once.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, &mut status, 0);
            }
            return (status, true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Four threads allocate, reallocate and free blocks of every size, passing some to each other;
/// this thread forks six times meanwhile, at random moments, holding blocks the others made. Each
/// child frees and reallocates those blocks, allocates, and spawns a thread (`forked_child_work`),
/// and must exit with status 0; in the parent the inherited blocks are still this thread's to
/// free.
fn fork_in_the_middle_of_multithreaded_allocation(seed: u64) {
    const CHURNERS: u64 = 4;
    const FORKS: u64 = 6;
    let start = Balance::take();
    let stop = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::channel::<Blk>();
    let receiver = Arc::new(Mutex::new(receiver));
    let churners: Vec<_> = (0..CHURNERS)
        .map(|t| {
            let (stop, sender, receiver) = (stop.clone(), sender.clone(), receiver.clone());
            std::thread::spawn(move || {
                let mut rng = Rng((seed << 8) | t);
                let mut next_id = (seed << 48) | (t << 40);
                let mut held: Vec<Blk> = Vec::new();
                while !stop.load(Relaxed) {
                    next_id += 1;
                    let (size, align) = (boundary_size(&mut rng), some_align(&mut rng));
                    held.push(Blk::new(size, align, next_id, false));
                    if rng.below(2) == 0 {
                        sender
                            .send(held.swap_remove(rng.index(held.len())))
                            .unwrap();
                    }
                    let sent = receiver.lock().unwrap().try_recv();
                    if let Ok(block) = sent {
                        block.free();
                    }
                    if held.len() > 32 {
                        let i = rng.index(held.len());
                        held[i].realloc(boundary_size(&mut rng));
                        held.swap_remove(i).free();
                    }
                }
                held
            })
        })
        .collect();
    drop(sender);
    let mut rng = Rng(!seed);
    let mut failures = Vec::new();
    for fork in 0..FORKS {
        let inherited: Vec<Blk> = {
            let receiver = receiver.lock().unwrap();
            (0..8).filter_map(|_| receiver.try_recv().ok()).collect()
        };
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        let child_seed = (seed << 8) | fork;
        // SAFETY: the child uses only the allocator (whose fork handlers hold its locks across
        // the fork), the blocks and a thread it spawns, no lock that a thread it does not have
        // may have held, and leaves with `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let worked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                forked_child_work(child_seed, inherited)
            }));
            // SAFETY: leaves the child at once, without the parent's exit path.
            unsafe { libc::_exit(if worked.is_ok() { 0 } else { 1 }) };
        }
        for block in inherited {
            block.free();
        }
        let (status, killed) = wait_for(child, Duration::from_secs(20));
        if killed {
            failures.push(format!(
                "fork {fork}: the child hung and was killed after 20 s"
            ));
        } else if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            failures.push(format!("fork {fork}: the child died of signal {signal}"));
        } else if libc::WEXITSTATUS(status) != 0 {
            let code = libc::WEXITSTATUS(status);
            failures.push(format!("fork {fork}: the child exited with {code}"));
        }
    }
    stop.store(true, Relaxed);
    for churner in churners {
        for block in churner.join().unwrap() {
            block.free();
        }
    }
    let unclaimed: Vec<Blk> = receiver.lock().unwrap().try_iter().collect();
    drop((receiver, stop));
    for block in unclaimed {
        block.free();
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_balanced(start);
}

/// A positive whole number from the environment variable `name`, or `default` if it is unset.
fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name}={value}: expected a positive whole number")),
        Err(_) => default,
    }
}

/// A test's name and body; the body takes the seed.
type Test = (&'static str, fn(u64));

fn main() {
    let scale = setting("PERFALLOC_STRESS_SCALE", 1);
    let first_seed = setting("PERFALLOC_STRESS_SEED", 1);
    let tests: &[Test] = &[
        (
            "realloc_chains_across_boundaries_with_blocks_changing_threads",
            realloc_chains_across_boundaries_with_blocks_changing_threads,
        ),
        (
            "blocks_outlive_waves_of_exiting_threads",
            blocks_outlive_waves_of_exiting_threads,
        ),
        (
            "aligned_blocks_are_reallocated_and_freed_on_other_threads",
            aligned_blocks_are_reallocated_and_freed_on_other_threads,
        ),
        ("many_threads_exit_at_once", many_threads_exit_at_once),
        (
            "heaps_purged_while_their_owners_sleep_keep_their_blocks",
            heaps_purged_while_their_owners_sleep_keep_their_blocks,
        ),
        (
            "fallback_heap_traffic_from_late_key_destructors",
            fallback_heap_traffic_from_late_key_destructors,
        ),
        (
            "fork_in_the_middle_of_multithreaded_allocation",
            fork_in_the_middle_of_multithreaded_allocation,
        ),
    ];
    let mut failed = Vec::new();
    for (name, test) in tests {
        for seed in first_seed..first_seed + scale {
            print!("test {name} (seed {seed}) ... ");
            std::io::stdout().flush().unwrap();
            let start = Instant::now();
            let ok = std::panic::catch_unwind(|| test(seed)).is_ok();
            let secs = start.elapsed().as_secs_f64();
            println!("{} ({secs:.2} s)", if ok { "ok" } else { "FAILED" });
            if !ok {
                failed.push(format!("{name}: rerun with PERFALLOC_STRESS_SEED={seed}"));
                break;
            }
        }
    }
    println!(
        "stress: {} tests, {} seeds each, {} failed",
        tests.len(),
        scale,
        failed.len()
    );
    for failure in &failed {
        println!("    {failure}");
    }
    std::process::exit(i32::from(!failed.is_empty()));
}
