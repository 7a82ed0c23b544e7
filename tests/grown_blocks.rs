//! A block that `realloc` grows to 64 KiB or more moves into the extent arena (where larger
//! blocks live) even though its size has a class, so that its next growths are in place: a `Vec`
//! growing from 32 KiB to 256 KiB is copied once, not three times. Such a block is freed to the
//! arena, shrinks in place while it stays at 64 KiB or more, and moves back to a class below.
//! One test in its own binary, so that the arena's layout is this test's alone. The live-block
//! and `measure` checks need the `stats` feature; the placement checks hold without it.

mod common;

use std::alloc::{alloc, dealloc, realloc, Layout};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const KIB: usize = 1024;

fn layout(size: usize) -> Layout {
    aligned(size, 8)
}

fn aligned(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

// Every byte, not `common::fill`'s sample: a shrink keeps a prefix whose end the sample may miss.
fn fill(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the callers' blocks hold at least `len` bytes.
    unsafe { (0..len).for_each(|i| *p.add(i) = common::pattern(seed.into(), i)) };
}

fn holds(p: *mut u8, len: usize, seed: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { (0..len).all(|i| *p.add(i) == common::pattern(seed.into(), i)) }
}

/// Reallocates `p` (of `old` bytes) to `new` bytes, checking that the first `keep` bytes survive.
fn resize(p: *mut u8, old: usize, new: usize, keep: usize, seed: u8) -> *mut u8 {
    resize_aligned(p, old, 8, new, keep, seed)
}

/// `resize` for a block allocated with alignment `align`, which the result must keep.
fn resize_aligned(
    p: *mut u8,
    old: usize,
    align: usize,
    new: usize,
    keep: usize,
    seed: u8,
) -> *mut u8 {
    // SAFETY: `p` is live with `aligned(old, align)`; `new` is non-zero.
    let q = unsafe { realloc(p, aligned(old, align), new) };
    assert!(!q.is_null());
    assert_eq!(
        q as usize % align,
        0,
        "{old} -> {new} kept the alignment {align}"
    );
    assert!(holds(q, keep, seed), "{old} -> {new} kept the contents");
    fill(q, new, seed);
    q
}

/// A fresh block of `size` bytes aligned to `align`, filled from `seed`.
fn filled(size: usize, align: usize, seed: u8) -> *mut u8 {
    // SAFETY: non-zero size.
    let p = unsafe { alloc(aligned(size, align)) };
    assert!(!p.is_null());
    fill(p, size, seed);
    p
}

/// Live blocks of the class whose blocks are `block_size` bytes (0 if none is in use).
fn class_live(block_size: u64) -> u64 {
    common::ClassLive::now().of(block_size)
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
    check(1); // into the arena, as a large block (the in-place growths below show it too)
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

    edges(base);
}

/// The edges of the rule: alignments up to and past the arena's granule, exactly 64 KiB and one
/// byte less, a grown block freed and grown by another thread, and growth past the arena's
/// largest block and back to a class. In the same test as the above, which needs the arena alone.
fn edges(base: u64) {
    // Alignments up to the granule (16 KiB) keep the rule; above it the block stays in a class.
    for (align, to_arena) in [
        (8, true),
        (4 * KIB, true),
        (16 * KIB, true),
        (32 * KIB, false),
    ] {
        let p = filled(40 * KIB, align, 3);
        let q = resize_aligned(p, 40 * KIB, align, 100 * KIB, 40 * KIB, 3);
        assert_large(base + u64::from(to_arena));
        let r = resize_aligned(q, 100 * KIB, align, 120 * KIB, 100 * KIB, 3);
        if to_arena {
            assert_eq!(r, q, "align {align}: grows in place in the arena");
        }
        // SAFETY: `r` is live with this layout.
        unsafe { dealloc(r, aligned(120 * KIB, align)) };
        assert_large(base);
    }

    // Exactly 64 KiB moves; one byte less moves back to the 64 KiB class.
    let p = filled(40 * KIB, 8, 4);
    let q = resize(p, 40 * KIB, 64 * KIB, 40 * KIB, 4);
    assert_large(base + 1);
    let class_64k = class_live(64 * 1024);
    let r = resize(q, 64 * KIB, 64 * KIB - 1, 64 * KIB - 1, 4);
    assert_large(base);
    if COUNTED {
        assert_eq!(
            class_live(64 * 1024),
            class_64k + 1,
            "64 KiB - 1 is in its class"
        );
    }
    // SAFETY: `r` is live with this layout.
    unsafe { dealloc(r, layout(64 * KIB - 1)) };

    // Grown on one thread, grown again and freed on another.
    let p = std::thread::spawn(|| {
        let p = filled(40 * KIB, 8, 5);
        resize(p, 40 * KIB, 90 * KIB, 40 * KIB, 5) as usize
    })
    .join()
    .unwrap() as *mut u8;
    assert_large(base + 1);
    let q = resize(p, 90 * KIB, 110 * KIB, 90 * KIB, 5);
    assert_eq!(q, p, "grows in place on a thread that did not allocate it");
    // SAFETY: `q` is live with this layout.
    unsafe { dealloc(q, layout(110 * KIB)) };
    assert_large(base);

    // Past the arena's largest block (16 MiB, a mapping of its own) and back to a class.
    let class_112k = class_live(112 * 1024);
    let p = resize(filled(40 * KIB, 8, 6), 40 * KIB, 100 * KIB, 40 * KIB, 6);
    let q = resize(p, 100 * KIB, 20 << 20, 100 * KIB, 6);
    assert_large(base + 1);
    let r = resize(q, 20 << 20, 100 * KIB, 100 * KIB, 6);
    assert_large(base);
    if COUNTED {
        assert_eq!(
            class_live(112 * 1024),
            class_112k + 1,
            "back in the 112 KiB class"
        );
    }
    // SAFETY: `r` is live with this layout.
    unsafe { dealloc(r, layout(100 * KIB)) };
    if COUNTED {
        assert_eq!(class_live(112 * 1024), class_112k);
    }
}
