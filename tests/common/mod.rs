//! Helpers shared by the allocator's integration tests.
#![allow(dead_code)]

use perfalloc::PerfAlloc;
use std::alloc::{GlobalAlloc, Layout};

/// SplitMix64: small, seedable, good enough for test sequences.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A number in `0..n`, for indices.
    pub fn index(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A size from 1 B to `max`, log-uniform so that every size class gets traffic.
    pub fn size(&mut self, max: usize) -> usize {
        let bits = 64 - (max as u64).leading_zeros() as u64;
        let b = self.below(bits) + 1;
        let s = (self.next() & ((1u64 << b) - 1)) as usize + 1;
        s.min(max)
    }
}

/// Byte `i` of the pattern for block `id`.
#[inline]
pub fn pattern(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

/// Offsets checked in a block: every byte of small blocks, a sample of big ones.
pub fn offsets(len: usize) -> impl Iterator<Item = usize> {
    let step = if len <= 16 * 1024 { 1 } else { 509 };
    (0..len).step_by(step).chain(len.saturating_sub(64)..len)
}

pub fn fill(p: *mut u8, len: usize, id: u64) {
    for i in offsets(len) {
        // SAFETY (test): `p` is a live block of `len` bytes.
        unsafe { *p.add(i) = pattern(id, i) };
    }
}

pub fn check(p: *const u8, len: usize, id: u64) {
    for i in offsets(len) {
        // SAFETY (test): `p` is a live block of `len` bytes.
        let got = unsafe { *p.add(i) };
        assert_eq!(
            got,
            pattern(id, i),
            "block {id} of {len} bytes corrupted at {i}"
        );
    }
}

pub static A: PerfAlloc = PerfAlloc::new();

/// A block allocated through `A` directly, with its layout and pattern id.
pub struct Blk {
    pub p: *mut u8,
    pub layout: Layout,
    pub id: u64,
}

// SAFETY (test): a Blk is an owned allocation; moving it between threads moves the ownership.
unsafe impl Send for Blk {}

impl Blk {
    pub fn new(size: usize, align: usize, id: u64, zeroed: bool) -> Blk {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY (test): non-zero size.
        let p = unsafe {
            if zeroed {
                A.alloc_zeroed(layout)
            } else {
                A.alloc(layout)
            }
        };
        assert!(!p.is_null(), "allocation of {layout:?} failed");
        assert_eq!(p as usize % align, 0, "misaligned block for {layout:?}");
        if zeroed {
            for i in offsets(size) {
                // SAFETY (test): live block.
                assert_eq!(
                    unsafe { *p.add(i) },
                    0,
                    "alloc_zeroed block not zero at {i}"
                );
            }
        }
        fill(p, size, id);
        Blk { p, layout, id }
    }

    pub fn check(&self) {
        check(self.p, self.layout.size(), self.id);
    }

    pub fn realloc(&mut self, new_size: usize) {
        self.check();
        let old = self.layout.size();
        // SAFETY (test): live block with this layout; non-zero new size.
        let q = unsafe { A.realloc(self.p, self.layout, new_size) };
        assert!(!q.is_null());
        assert_eq!(
            q as usize % self.layout.align(),
            0,
            "realloc broke alignment"
        );
        let keep = old.min(new_size);
        for i in offsets(old).filter(|&i| i < keep) {
            // SAFETY (test): `q` holds at least `keep` bytes.
            assert_eq!(
                unsafe { *q.add(i) },
                pattern(self.id, i),
                "realloc lost byte {i}"
            );
        }
        self.p = q;
        self.layout = Layout::from_size_align(new_size, self.layout.align()).unwrap();
        fill(q, new_size, self.id);
    }

    pub fn free(self) {
        self.check();
        // SAFETY (test): live block with this layout.
        unsafe { A.dealloc(self.p, self.layout) };
    }
}

/// Asserts no two live blocks overlap.
pub fn assert_disjoint(blocks: &[Blk]) {
    let mut spans: Vec<(usize, usize)> = blocks
        .iter()
        .map(|b| (b.p as usize, b.p as usize + b.layout.size()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "blocks overlap: {:x?} and {:x?}",
            w[0],
            w[1]
        );
    }
}

/// Live blocks per class block size, from one snapshot, kept on the stack so that taking one
/// adds no block to any class (the snapshot's own vector is freed before the next is taken).
#[derive(PartialEq, Debug)]
pub struct ClassLive([(u64, u64); 64]);

impl ClassLive {
    pub fn now() -> ClassLive {
        let mut t = [(0, 0); 64];
        let s = perfalloc::stats();
        assert!(s.size_classes.len() <= t.len(), "room for every class");
        for (slot, c) in t.iter_mut().zip(&s.size_classes) {
            *slot = (c.block_size, c.live_blocks);
        }
        ClassLive(t)
    }
    pub fn of(&self, block_size: u64) -> u64 {
        self.0
            .iter()
            .find(|&&(b, _)| b == block_size)
            .map_or(0, |&(_, n)| n)
    }
    /// Equal live blocks in every class either snapshot lists (a class unused so far is absent).
    pub fn same_as(&self, o: &ClassLive) -> bool {
        self.0
            .iter()
            .chain(&o.0)
            .all(|&(b, _)| self.of(b) == o.of(b))
    }
}
