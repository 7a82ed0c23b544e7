//! Allocator workloads on `jemalloc` (see `alloc/workloads.rs` and `benches/README.md`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
const ALLOCATOR: &str = "jemalloc";
include!("alloc/workloads.rs");
