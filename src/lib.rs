#![doc = include_str!("../README.md")]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
#![warn(missing_docs)]

#[cfg(not(loom))]
pub mod aligned;
#[cfg(not(loom))]
pub mod buffer;
#[cfg(not(loom))]
mod counters;
#[cfg(not(loom))]
mod extent;
#[cfg(not(loom))]
mod global;
#[cfg(not(loom))]
mod heap;
#[cfg(not(loom))]
mod large;
#[cfg(not(loom))]
pub mod mmap;
#[cfg(not(loom))]
mod os;
#[cfg(not(loom))]
pub mod pool;
#[cfg(loom)]
pub mod remote;
#[cfg(not(loom))]
mod remote;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod size_class;
#[cfg(not(loom))]
mod stats;
#[cfg_attr(loom, allow(dead_code))]
mod sync;

#[cfg(not(loom))]
pub use global::PerfAlloc;
#[cfg(not(loom))]
pub use stats::{
    limit, measure, reset_peak, reset_thread_peak, set_limit, stats, thread_stats, trim,
    ClassStats, LargeStats, Measurement, Stats, ThreadStats, PUBLISH_THRESHOLD,
};

// The crate's own unit tests run on the allocator they test.
#[cfg(all(test, not(loom)))]
#[global_allocator]
static TEST_GLOBAL: PerfAlloc = PerfAlloc::new();
