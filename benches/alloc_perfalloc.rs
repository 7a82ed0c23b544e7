//! Allocator workloads on `perfalloc` (see `alloc/workloads.rs` and `benches/README.md`).
#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
// Built with `--no-default-features`, the same binary measures perfalloc without statistics.
const ALLOCATOR: &str = if cfg!(feature = "stats") {
    "perfalloc"
} else {
    "perfalloc-nostats"
};
include!("alloc/workloads.rs");
