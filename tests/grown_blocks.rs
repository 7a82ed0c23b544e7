//! A block that `realloc` grows to 64 KiB or more moves into the extent arena (where larger
//! blocks live) even though its size has a class, so that its next growths are in place: a `Vec`
//! growing from 32 KiB to 256 KiB is copied once, not three times. Such a block is freed to the
//! arena, shrinks in place while it stays at 64 KiB or more, and moves back to a class below.
//! One test in its own binary, so that the arena's layout is this test's alone. The live-block
//! and `measure` checks need the `stats` feature; the placement checks hold without it.

use std::alloc::{alloc, dealloc, realloc, Layout};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const KIB: usize = 1024;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn fill(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the callers' blocks hold at least `len` bytes.
    unsafe { (0..len).for_each(|i| *p.add(i) = seed ^ (i % 251) as u8) };
}

fn holds(p: *mut u8, len: usize, seed: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { (0..len).all(|i| *p.add(i) == seed ^ (i % 251) as u8) }
}

/// Reallocates `p` (of `old` bytes) to `new` bytes, checking that the first `keep` bytes survive.
fn resize(p: *mut u8, old: usize, new: usize, keep: usize, seed: u8) -> *mut u8 {
    // SAFETY: `p` is live with `layout(old)`; `new` is non-zero.
    let q = unsafe { realloc(p, layout(old), new) };
    assert!(!q.is_null());
    assert!(holds(q, keep, seed), "{old} -> {new} kept the contents");
    fill(q, new, seed);
    q
}

/// Whether the allocator counts (the `stats` feature); without it every figure reads zero.
const COUNTED: bool = cfg!(feature = "stats");

fn large_blocks() -> u64 {
    perfalloc::stats().large.live_blocks
}

/// Checks the live large blocks, where they are counted.
fn assert_large(want: u64) {
    if COUNTED {
        assert_eq!(large_blocks(), want, "live large blocks");
    }
}

/// Grows a block from 32 KiB through the arena and shrinks it back to a class, checking where it
/// goes; `large` (if given) reads the live large blocks, which starts at `base`.
fn grow_and_shrink(large: Option<&dyn Fn() -> u64>, base: u64) {
    let check = |want: u64| {
        if let Some(large) = large.filter(|_| COUNTED) {
            assert_eq!(large(), base + want, "live large blocks");
        }
    };
    // SAFETY: non-zero size.
    let p = unsafe { alloc(layout(32 * KIB)) };
    assert!(!p.is_null());
    fill(p, 32 * KIB, 7);
    let q = resize(p, 32 * KIB, 64 * KIB, 32 * KIB, 7);
    assert_ne!(q, p, "moves out of its 32 KiB class");
    check(1); // into the arena, as a large block
    let r = resize(q, 64 * KIB, 128 * KIB, 64 * KIB, 7);
    assert_eq!(r, q, "grows in place to 128 KiB");
    let s = resize(r, 128 * KIB, 256 * KIB, 128 * KIB, 7);
    assert_eq!(s, q, "and past the size classes");
    let t = resize(s, 256 * KIB, 80 * KIB, 80 * KIB, 7);
    assert_eq!(t, q, "shrinks in place while it stays at 64 KiB or more");
    let u = resize(t, 80 * KIB, 100 * KIB, 80 * KIB, 7);
    assert_eq!(u, q, "and grows in place again");
    check(1);
    let v = resize(u, 100 * KIB, 16 * KIB, 16 * KIB, 7);
    assert_ne!(v, q, "moves back to a class below 64 KiB");
    // The arena block was freed.
    check(0);
    // SAFETY: `v` is live with this layout.
    unsafe { dealloc(v, layout(16 * KIB)) };
}

#[test]
fn a_growing_block_moves_into_the_arena_once_then_resizes_in_place() {
    let base = large_blocks();
    grow_and_shrink(Some(&large_blocks), base);
    // The same again, measured (without the `stats` calls, which allocate).
    let ((), m) = perfalloc::measure(|| grow_and_shrink(None, 0));
    let counts = (m.allocations, m.deallocations, m.reallocations);
    if COUNTED {
        assert_eq!(counts, (1, 1, 6));
        assert_eq!(m.allocated_bytes, m.freed_bytes);
    } else {
        assert_eq!((counts, m.allocated_bytes), ((0, 0, 0), 0));
    }
    assert_large(base);

    // A grown block of a class's size is freed to the arena: the arena's first fit serves the
    // next one at the same address (had it gone to the class's bin, its granules would still be
    // taken and the next grown block would land elsewhere).
    let grown = |seed| {
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout(40 * KIB)) };
        assert!(!p.is_null());
        fill(p, 40 * KIB, seed);
        resize(p, 40 * KIB, 100 * KIB, 40 * KIB, seed)
    };
    let a = grown(1);
    assert_large(base + 1);
    // SAFETY: `a` is live with this layout.
    unsafe { dealloc(a, layout(100 * KIB)) };
    assert_large(base);
    let b = grown(2);
    assert_eq!(b, a, "the freed granules served the next grown block");
    // SAFETY: `b` is live with this layout.
    unsafe { dealloc(b, layout(100 * KIB)) };
    assert_large(base);
}
