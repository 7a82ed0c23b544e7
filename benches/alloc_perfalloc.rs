//! Allocator workloads on `perfalloc` (see `alloc/workloads.rs` and `benches/README.md`).
#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
const ALLOCATOR: &str = "perfalloc";
include!("alloc/workloads.rs");
