//! Loom model of the remote-free list: every node pushed by concurrent producers is taken by the
//! consumer exactly once, whatever the interleaving. Runs only with `--cfg loom`:
//!
//!     RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_remote
#![cfg(loom)]

use loom::sync::Arc;
use perfalloc::remote::{Link, RemoteList};

struct Node {
    next: *mut Node,
    id: usize,
}

impl Link for Node {
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        unsafe { (*this).next = next };
    }
}

struct Shared(RemoteList<Node>);
// SAFETY (test): nodes move between threads only through the list's atomics.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// A chain of `ids`, linked in order.
fn chain(ids: &[usize]) -> (usize, usize) {
    let nodes: Vec<*mut Node> = ids
        .iter()
        .map(|&id| {
            Box::into_raw(Box::new(Node {
                next: std::ptr::null_mut(),
                id,
            }))
        })
        .collect();
    for w in nodes.windows(2) {
        unsafe { (*w[0]).next = w[1] };
    }
    (nodes[0] as usize, *nodes.last().unwrap() as usize)
}

fn drain(list: &RemoteList<Node>, seen: &mut Vec<usize>) {
    let mut n = list.take_all();
    while !n.is_null() {
        let node = unsafe { Box::from_raw(n) };
        seen.push(node.id);
        n = node.next;
    }
}

#[test]
fn concurrent_chain_pushes_are_all_taken_once() {
    loom::model(|| {
        let list = Arc::new(Shared(RemoteList::new()));
        let producers: Vec<_> = [[1usize, 2], [3, 4]]
            .into_iter()
            .map(|ids| {
                let list = list.clone();
                let (h, t) = chain(&ids);
                loom::thread::spawn(move || unsafe {
                    list.0.push_chain(h as *mut Node, t as *mut Node)
                })
            })
            .collect();
        let mut seen = Vec::new();
        drain(&list.0, &mut seen); // races with the producers
        for p in producers {
            p.join().unwrap();
        }
        drain(&list.0, &mut seen);
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2, 3, 4]);
    });
}
