//! The remote-free list: the one lock-free protocol in the allocator.
//!
//! Any thread may push a chain of blocks (`push_chain`); the heap's owner, or a thread purging the
//! heap for it, takes them all at once (`take_all`). A push is a Treiber-stack push of a whole chain: link the chain's tail to the
//! current head, then compare-and-swap the head from that value to the chain's head (Release, so
//! the links are visible to the taker). `take_all` swaps the head with null (Acquire). Because the
//! consumer never pops single nodes, a node's address can never be re-pushed while a stale head is
//! being compared: there is no ABA problem. The model is checked with loom
//! (`RUSTFLAGS="--cfg loom" cargo test --release --test loom_remote`).

use crate::sync::atomic::{AtomicPtr, Ordering};
use core::ptr;

/// A node whose first word links it into a list.
pub trait Link {
    /// # Safety
    /// `this` points to a node nobody else is accessing.
    unsafe fn set_next(this: *mut Self, next: *mut Self);
}

/// A multi-producer, single-consumer list of nodes (see the module docs).
///
/// Invariant: `head` is null or the first node of a null-terminated chain owned by the list.
pub struct RemoteList<T> {
    head: AtomicPtr<T>,
}

impl<T: Link> RemoteList<T> {
    /// An empty list.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RemoteList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// An empty list.
    #[cfg(loom)]
    pub fn new() -> Self {
        RemoteList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Whether the list looked empty (a hint: a push may land right after).
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }

    /// Pushes the chain `head ..= tail` (linked through `Link`, `tail` last).
    ///
    /// # Safety
    /// The chain's nodes belong to the caller and stay valid until the consumer takes them.
    pub unsafe fn push_chain(&self, head: *mut T, tail: *mut T) {
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is the caller's until the CAS below publishes it.
            unsafe { T::set_next(tail, old) };
            match self
                .head
                .compare_exchange_weak(old, head, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    /// The first node now (null if empty), only to compare with a later look: a list whose head
    /// has not changed has been neither taken nor pushed onto in between.
    pub fn head(&self) -> *mut T {
        self.head.load(Ordering::Relaxed)
    }

    /// Takes every node pushed so far, as a null-terminated chain. Callers that take at the same
    /// time get disjoint chains (a swap), but the nodes' users must not race: the allocator takes
    /// a heap's list only under that heap's `slow` lock.
    pub fn take_all(&self) -> *mut T {
        self.head.swap(ptr::null_mut(), Ordering::Acquire)
    }
}
