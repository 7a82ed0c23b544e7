//! The allocator before `main`, in a forked child, and on requests it cannot serve.
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

static BEFORE_MAIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn before_main() {
    let v: Vec<String> = (0..1000).map(|i| format!("{i}")).collect();
    BEFORE_MAIN.store(v.len(), std::sync::atomic::Ordering::SeqCst);
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = before_main;

#[test]
fn works_before_main() {
    assert_eq!(BEFORE_MAIN.load(std::sync::atomic::Ordering::SeqCst), 1000);
}

#[test]
fn works_in_a_forked_child_while_other_threads_allocate() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![0; i * 100]).collect();
                    black_box(v);
                }
            })
        })
        .collect();
    for _ in 0..20 {
        // SAFETY (test): the child only allocates, frees and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let v: Vec<Vec<u64>> = (0..10_000).map(|i| vec![i; (i % 100) as usize]).collect();
            let ok = v
                .iter()
                .enumerate()
                .all(|(i, x)| x.iter().all(|&y| y == i as u64));
            let big = vec![1u8; 8 << 20];
            // SAFETY (test): leave the child without running the test harness's exit path.
            unsafe { libc::_exit(if ok && big[4 << 20] == 1 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY (test): waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: {status}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in busy {
        h.join().unwrap();
    }
}

#[test]
fn impossible_requests_return_null() {
    let a = perfalloc::PerfAlloc::new();
    let cases = [
        Layout::from_size_align(isize::MAX as usize - 4095, 1).unwrap(),
        Layout::from_size_align(isize::MAX as usize / 2, 4096).unwrap(),
        Layout::from_size_align(1 << 47, 1 << 46).unwrap(), // more address space than exists
        Layout::from_size_align(8, 1 << 62).unwrap(),
    ];
    for layout in cases {
        // SAFETY (test): non-zero sizes.
        let p = unsafe { a.alloc(black_box(layout)) };
        assert!(black_box(p).is_null(), "{layout:?} should fail");
        // SAFETY (test): as above.
        let z = unsafe { a.alloc_zeroed(black_box(layout)) };
        assert!(black_box(z).is_null(), "{layout:?} zeroed should fail");
    }
    // A realloc that cannot be served leaves the old block intact.
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY (test): valid layout; the block is freed below.
    unsafe {
        let p = a.alloc(layout);
        p.write_bytes(7, 100);
        let q = a.realloc(p, layout, black_box(isize::MAX as usize - 100));
        assert!(q.is_null());
        assert!((0..100).all(|i| *p.add(i) == 7));
        a.dealloc(p, layout);
    }
    // The standard library sees the failure as an error, not a crash.
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(isize::MAX as usize - 1).is_err());
    assert!(v.try_reserve(10).is_ok());
}
