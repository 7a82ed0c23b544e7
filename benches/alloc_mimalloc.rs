//! Allocator workloads on `mimalloc` (see `alloc/workloads.rs` and `benches/README.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
const ALLOCATOR: &str = "mimalloc";
include!("alloc/workloads.rs");
