//! perfalloc: a fast thread-caching global allocator with always-on statistics.
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
#![warn(missing_docs)]

mod counters;
mod global;
mod heap;
mod large;
mod os;
mod segment;
mod size_class;
mod sync;

pub use global::PerfAlloc;
