//! perfalloc: a fast thread-caching global allocator with always-on statistics.
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
#![warn(missing_docs)]

pub mod aligned;
pub mod buffer;
mod counters;
mod global;
mod heap;
mod large;
pub mod mmap;
mod os;
pub mod pool;
mod segment;
mod size_class;
mod stats;
mod sync;

pub use global::PerfAlloc;
pub use stats::{
    limit, measure, reset_peak, reset_thread_peak, set_limit, stats, thread_stats, trim,
    ClassStats, LargeStats, Measurement, Stats, ThreadStats, PUBLISH_THRESHOLD,
};

// The crate's own unit tests run on the allocator they test.
#[cfg(test)]
#[global_allocator]
static TEST_GLOBAL: PerfAlloc = PerfAlloc::new();
