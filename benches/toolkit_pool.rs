//! `BufferPool` get/put against allocating a fresh buffer, for 64 B to 1 MiB.
//!
//! Every variant does the same work per iteration: obtain a buffer of `size` bytes, write one
//! byte per 4 KiB page of it (so fresh memory pays its page faults, as it would when used), and
//! give it back. The fresh-allocation baselines call each allocator's `GlobalAlloc` methods
//! directly (`alloc` + `dealloc` with `Layout::array::<u8>(size)`, which is exactly what
//! `Vec::with_capacity(size)` and its drop do), so one binary can compare `System`, `PerfAlloc`,
//! mimalloc and jemalloc. See benches/README.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use perfalloc::pool::{BufferPool, BufferPoolConfig};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const PAGE: usize = 4096;
const SIZES: [usize; 5] = [64, 1 << 10, 16 << 10, 256 << 10, 1 << 20];

#[inline(always)]
fn fresh<A: GlobalAlloc>(a: &A, size: usize) {
    let layout = Layout::array::<u8>(size).unwrap();
    // SAFETY: `size > 0` (every entry of SIZES), so the layout is non-zero-sized.
    let p = unsafe { a.alloc(layout) };
    assert!(!p.is_null());
    for off in (0..size).step_by(PAGE) {
        // SAFETY: `off < size`: inside the allocation just made.
        unsafe { p.add(off).write_volatile(1) };
    }
    // SAFETY: `p` came from `a.alloc(layout)` just above and is freed once.
    unsafe { a.dealloc(black_box(p), layout) };
}

#[inline(always)]
fn pooled(pool: &BufferPool, size: usize) {
    let mut buf = pool.get(size);
    let spare = buf.spare_capacity_mut();
    for off in (0..size).step_by(PAGE) {
        spare[off].write(1);
    }
    black_box(buf.as_ptr());
}

fn get_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("buffer_get_put");
    let pool = BufferPool::new(BufferPoolConfig::default());
    let perfalloc = perfalloc::PerfAlloc::new();
    for size in SIZES {
        group.bench_with_input(BenchmarkId::new("BufferPool", size), &size, |b, &n| {
            b.iter(|| pooled(&pool, n))
        });
        group.bench_with_input(BenchmarkId::new("System", size), &size, |b, &n| {
            b.iter(|| fresh(&System, n))
        });
        group.bench_with_input(BenchmarkId::new("PerfAlloc", size), &size, |b, &n| {
            b.iter(|| fresh(&perfalloc, n))
        });
        group.bench_with_input(BenchmarkId::new("mimalloc", size), &size, |b, &n| {
            b.iter(|| fresh(&mimalloc::MiMalloc, n))
        });
        group.bench_with_input(BenchmarkId::new("jemalloc", size), &size, |b, &n| {
            b.iter(|| fresh(&tikv_jemallocator::Jemalloc, n))
        });
    }
    group.finish();
}

criterion_group!(benches, get_put);
criterion_main!(benches);
