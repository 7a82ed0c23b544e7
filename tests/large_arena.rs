//! Large blocks (above the heap pages, up to 16 MiB) share regions of the extent arena: freed
//! blocks coalesce and serve later requests of other sizes with memory that is still resident.
//! One test in its own binary, so that block addresses and page-fault counts are this test's alone.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const MIB: usize = 1 << 20;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn take(size: usize) -> *mut u8 {
    // SAFETY: non-zero size.
    let p = unsafe { alloc(layout(size)) };
    assert!(!p.is_null());
    p
}

fn give(p: *mut u8, size: usize) {
    // SAFETY: allocated by `take` (or resized to `size`) and not used again.
    unsafe { dealloc(p, layout(size)) }
}

fn minor_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
    u.ru_minflt
}

#[test]
fn large_blocks_coalesce_grow_in_place_and_are_reused_without_faults_then_trim() {
    // Freed neighbours coalesce: two freed 1 MiB blocks serve a 2 MiB request at the same place.
    let a = take(MIB);
    let b = take(MIB);
    let c = take(MIB);
    assert_eq!(b as usize, a as usize + MIB, "a fresh arena packs blocks");
    give(a, MIB);
    give(b, MIB);
    let d = take(2 * MIB);
    assert_eq!(
        d, a,
        "two freed neighbours serve one request of their joint size"
    );

    // The last block grows in place into the free space after it, and shrinks in place.
    // SAFETY: `c` is live with this layout; the new sizes are non-zero.
    unsafe {
        c.write_bytes(0x5A, MIB);
        assert_eq!(realloc(c, layout(MIB), 3 * MIB), c, "grows in place");
        assert_eq!(realloc(c, layout(3 * MIB), MIB / 2), c, "shrinks in place");
        assert_eq!(
            realloc(c, layout(MIB / 2), 3 * MIB),
            c,
            "regrows over its old tail"
        );
        assert!(std::slice::from_raw_parts(c, MIB / 2)
            .iter()
            .all(|&x| x == 0x5A));
    }
    give(c, 3 * MIB);

    // A reused block handed out by alloc_zeroed is zero, although its pages were written.
    // SAFETY: `d` is live with 2 MiB.
    unsafe { d.write_bytes(0xFF, 2 * MIB) };
    give(d, 2 * MIB);
    // SAFETY: non-zero size.
    let z = unsafe { alloc_zeroed(layout(2 * MIB)) };
    assert_eq!(z, d, "first fit reuses the freed block");
    // SAFETY: `z` is live with 2 MiB.
    assert!(unsafe { std::slice::from_raw_parts(z, 2 * MIB) }
        .iter()
        .all(|&x| x == 0));
    give(z, 2 * MIB);

    // Replacing blocks of changing sizes reuses resident memory: once warm, (almost) no page
    // faults. A mapping per block faulted in most pages of every new block (about 4 faults per
    // replacement here, where a block has 16-1024 pages).
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ring: Vec<Vec<u8>> = (0..8).map(|_| Vec::new()).collect();
    let mut replace = |rounds: usize| {
        for _ in 0..rounds {
            let size = 64 * 1024 + (next() % (4 * MIB as u64 - 64 * 1024)) as usize;
            let mut v = Vec::<u8>::with_capacity(size);
            for off in (0..size).step_by(4096) {
                // SAFETY: `off < size`, the capacity.
                unsafe { v.as_mut_ptr().add(off).write(1) };
            }
            let slot = (next() % 8) as usize;
            ring[slot] = v;
        }
    };
    replace(2_000);
    let before = minor_faults();
    let rounds = 4_000;
    replace(rounds);
    let faults = minor_faults() - before;
    assert!(
        faults < rounds as i64 / 4,
        "{faults} page faults in {rounds} replacements of resident-sized blocks"
    );
    drop(ring);

    // Alignment up to the granule is served by the arena, beyond it by a mapping of its own.
    for align in [4096, 16 * 1024, 64 * 1024, MIB] {
        let l = Layout::from_size_align(300 * 1024, align).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null() && p as usize % align == 0, "align {align}");
        // SAFETY: a live block of this layout.
        unsafe {
            p.write_bytes(7, l.size());
            dealloc(p, l);
        }
    }

    // With every large block freed, small allocations alone bring the arena's timed purges
    // along: within a few periods of 200 ms its empty region is unmapped. The small blocks are
    // kept, so that no small page empties and schedules a purge of its own.
    let mapped = perfalloc::stats().mapped_bytes;
    let start = std::time::Instant::now();
    // (Batches of small vectors: one big vector of them would be a large block.)
    let mut held: Vec<Vec<Vec<u8>>> = Vec::with_capacity(1_000);
    while perfalloc::stats().mapped_bytes + 64 * MIB as u64 > mapped {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the arena's free memory was never released"
        );
        held.push((0..100).map(|_| vec![0u8; 1000]).collect());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(held);

    // A thread's exit purges its own heap, not the arena the other threads share: the empty
    // region stays for its timed purge (checked only if no timed purge can be due yet).
    give(take(4 * MIB), 4 * MIB);
    let freed_at = std::time::Instant::now();
    let mapped = perfalloc::stats().mapped_bytes;
    std::thread::spawn(|| drop(std::hint::black_box(vec![0u8; 100])))
        .join()
        .unwrap();
    let after_exit = perfalloc::stats().mapped_bytes;
    if freed_at.elapsed() < std::time::Duration::from_millis(150) {
        assert!(
            after_exit + 64 * MIB as u64 > mapped,
            "a thread's exit released the shared arena: {after_exit} of {mapped} bytes mapped"
        );
    }

    // A trim does it at once.
    give(take(4 * MIB), 4 * MIB);
    let mapped = perfalloc::stats().mapped_bytes;
    perfalloc::trim();
    let trimmed = perfalloc::stats().mapped_bytes;
    assert!(
        trimmed + 64 * MIB as u64 <= mapped,
        "trim left {trimmed} of {mapped} bytes mapped"
    );
}
