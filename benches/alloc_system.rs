//! Allocator workloads on `system` (see `alloc/workloads.rs` and `benches/README.md`).
#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;
const ALLOCATOR: &str = "system";
include!("alloc/workloads.rs");
