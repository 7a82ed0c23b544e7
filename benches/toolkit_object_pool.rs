//! `ObjectPool` against building the object each time, for an expensive object and a cheap one.
//!
//! * `parser`: a per-request scratch state (64 KiB byte buffer, a 1024-entry hash map, a vector
//!   of strings): three allocations, one of them large, and a hash map to initialise.
//! * `small_vec`: a 64-byte `Vec<u8>`: one small allocation, where a pool has nothing to win.
//!
//! Each iteration gets an object, uses it a little (a few writes, as a request would), and drops
//! it (back to the pool after `reset`, or freed).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use perfalloc::pool::ObjectPool;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

struct Parser {
    buf: Vec<u8>,
    headers: HashMap<u64, u64>,
    names: Vec<String>,
}

fn new_parser() -> Parser {
    Parser {
        buf: Vec::with_capacity(64 << 10),
        headers: HashMap::with_capacity(1024),
        names: Vec::with_capacity(64),
    }
}

fn reset_parser(p: &mut Parser) {
    p.buf.clear();
    p.headers.clear();
    p.names.clear();
}

#[inline(always)]
fn use_parser(p: &mut Parser) {
    p.buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
    p.headers.insert(black_box(1), 2);
    p.headers.insert(black_box(3), 4);
    black_box(&p.buf);
}

fn objects(c: &mut Criterion) {
    let mut group = c.benchmark_group("object_get_put");
    let pool = ObjectPool::new(new_parser, reset_parser);
    group.bench_function("parser/ObjectPool", |b| {
        b.iter(|| {
            let mut p = pool.get();
            use_parser(&mut p);
        })
    });
    group.bench_function("parser/create", |b| {
        b.iter(|| {
            let mut p = new_parser();
            use_parser(&mut p);
        })
    });
    let small = ObjectPool::new(|| Vec::<u8>::with_capacity(64), Vec::clear);
    group.bench_function("small_vec/ObjectPool", |b| {
        b.iter(|| {
            let mut v = small.get();
            v.extend_from_slice(black_box(b"0123456789"));
            black_box(v.as_ptr());
        })
    });
    group.bench_function("small_vec/create", |b| {
        b.iter(|| {
            let mut v = Vec::<u8>::with_capacity(64);
            v.extend_from_slice(black_box(b"0123456789"));
            black_box(v.as_ptr());
        })
    });
    group.finish();
}

criterion_group!(benches, objects);
criterion_main!(benches);
