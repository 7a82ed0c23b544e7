//! An alloc+free loop for counting instructions per pair with callgrind (see `benches/callgrind.sh`).
//!
//! `pair_loop <perfalloc|system|mimalloc|jemalloc|noop> <size[:align]> <iterations> [grow]`: each
//! allocator is called through its `GlobalAlloc` impl behind a non-inlined shim, as `__rust_alloc`
//! calls the global one. `noop` hands out one static buffer and frees nothing: what it counts is
//! the loop and the calls themselves, to subtract from the others. It prints the time a pair took,
//! which `benches/pair_time.sh` compares across builds (with and without statistics) and
//! `benches/pair_compare.sh` across allocators. With `grow`, each round allocates `size` bytes,
//! reallocates them to twice that (a `String` or `Vec` growing) and frees the result.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

static PERF: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The harness alone: an allocator of one block, whose alloc is one load and free one store (so
/// that the compiler cannot drop the calls).
struct Noop;
const NOOP_BUF_SIZE: usize = 1 << 16;
/// The most alignment `noop` serves.
const NOOP_ALIGN: usize = 4096;
/// The one block.
#[repr(C, align(4096))]
struct NoopBuf([u8; NOOP_BUF_SIZE]);
static mut NOOP_BUF: NoopBuf = NoopBuf([0; NOOP_BUF_SIZE]);
static_assertions::const_assert_eq!(core::mem::align_of::<NoopBuf>(), NOOP_ALIGN);
static NOOP_FREE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

// SAFETY: every request gets the same static buffer, as large and as aligned as any layout `main`
// lets `noop` take; nothing reads or writes through it.
unsafe impl GlobalAlloc for Noop {
    unsafe fn alloc(&self, _: Layout) -> *mut u8 {
        let p = NOOP_FREE.load(Relaxed);
        if p.is_null() {
            return core::ptr::addr_of_mut!(NOOP_BUF).cast();
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, _: Layout) {
        NOOP_FREE.store(p, Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, _: Layout, _: usize) -> *mut u8 {
        // The one block is large enough for any size `main` lets `noop` take.
        p
    }
}

#[inline(never)]
fn pairs<A: GlobalAlloc>(a: &A, layout: Layout, n: u64) {
    for _ in 0..n {
        let (size, align) = black_box((layout.size(), layout.align()));
        // SAFETY: a valid non-zero layout; the block is freed with the same one.
        unsafe {
            let p = shim_alloc(a, size, align);
            shim_dealloc(a, black_box(p), size, align);
        }
    }
}

#[inline(never)]
fn grows<A: GlobalAlloc>(a: &A, layout: Layout, n: u64) {
    for _ in 0..n {
        let (size, align) = black_box((layout.size(), layout.align()));
        // SAFETY: a valid non-zero layout; the block is reallocated and freed with the sizes it has.
        unsafe {
            let p = shim_alloc(a, size, align);
            let q = shim_realloc(a, black_box(p), size, align, 2 * size);
            shim_dealloc(a, black_box(q), 2 * size, align);
        }
    }
}

/// # Safety
/// `p` came from `shim_alloc` with this `size` and `align`; `new` is non-zero.
#[inline(never)]
unsafe fn shim_realloc<A: GlobalAlloc>(
    a: &A,
    p: *mut u8,
    size: usize,
    align: usize,
    new: usize,
) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    unsafe { a.realloc(p, Layout::from_size_align_unchecked(size, align), new) }
}

// The shims take what `__rust_alloc(size, align)` and `__rust_dealloc(ptr, size, align)` take, in
// the same registers, and build the `Layout` inside, as the `#[global_allocator]` glue does.

/// # Safety
/// `size` and `align` form a valid `Layout` of non-zero size.
#[inline(never)]
unsafe fn shim_alloc<A: GlobalAlloc>(a: &A, size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    unsafe { a.alloc(Layout::from_size_align_unchecked(size, align)) }
}

/// # Safety
/// `p` came from `shim_alloc` with this `size` and `align`.
#[inline(never)]
unsafe fn shim_dealloc<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize, align: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { a.dealloc(p, Layout::from_size_align_unchecked(size, align)) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("perfalloc");
    // `SIZE` or `SIZE:ALIGN` (alignment 8 unless given).
    let spec = args.get(2).map(String::as_str).unwrap_or("64");
    let (size, align) = spec.split_once(':').unwrap_or((spec, "8"));
    let size: usize = size.parse().expect("size: a number of bytes");
    let align: usize = align.parse().expect("alignment: a number of bytes");
    let n: u64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let layout = Layout::from_size_align(size, align).expect("a valid layout");
    assert!(
        which != "noop" || size <= NOOP_BUF_SIZE && align <= NOOP_ALIGN,
        "noop serves up to {NOOP_BUF_SIZE} bytes aligned to at most {NOOP_ALIGN}"
    );
    let grow = args.get(4).map(String::as_str) == Some("grow");
    assert!(
        which != "noop" || !grow || 2 * size <= NOOP_BUF_SIZE,
        "noop serves up to {NOOP_BUF_SIZE} bytes"
    );
    fn run<A: GlobalAlloc>(a: &A, layout: Layout, n: u64, grow: bool) {
        if grow {
            grows(a, layout, n)
        } else {
            pairs(a, layout, n)
        }
    }
    let start = std::time::Instant::now();
    match which {
        "perfalloc" => run(&PERF, layout, n, grow),
        "system" => run(&System, layout, n, grow),
        "mimalloc" => run(&MI, layout, n, grow),
        "jemalloc" => run(&JE, layout, n, grow),
        "noop" => run(&Noop, layout, n, grow),
        other => panic!("unknown allocator {other}"),
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / n as f64;
    if grow {
        println!(
            "{which} {size} B: {n} rounds (alloc, realloc to twice, free), {ns:.3} ns a round"
        );
    } else {
        println!("{which} {size} B: {n} pairs, {ns:.3} ns a pair");
    }
}
