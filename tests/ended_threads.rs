//! Heaps whose thread ended without perfalloc's exit destructor: they go back for reuse.
//!
//! The two tests compare process-wide figures (`Stats::threads`, mapped bytes), so they take turns.
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

static mut KEY: libc::pthread_key_t = 0;
static LATE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// glibc runs key destructors in up to four rounds, and never the destructor of a key set during
/// the last one. This destructor sets its key again for rounds 1-3 and allocates for the first time
/// in round 4: the thread adopts a heap that no destructor of perfalloc's will hand back.
unsafe extern "C" fn allocate_in_the_last_round(round: *mut libc::c_void) {
    let round = round as usize;
    if round < 4 {
        // SAFETY: the key exists (made before any thread that sets it).
        unsafe { libc::pthread_setspecific(KEY, (round + 1) as *mut libc::c_void) };
        return;
    }
    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 100 + i * 50]).collect();
    black_box(&v);
    LATE_ALLOCATIONS.fetch_add(1, Relaxed);
}

/// A raw thread that allocates nothing while it runs, only in its key destructors.
extern "C" fn set_the_key(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: the key exists; a non-null value makes its destructor run.
    unsafe { libc::pthread_setspecific(KEY, 1 as *mut libc::c_void) };
    std::ptr::null_mut()
}

#[test]
fn a_thread_whose_first_allocation_is_in_the_last_destructor_round_leaves_no_heap_behind() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: an out-pointer to a static only this test writes, before any thread reads it.
    assert_eq!(
        unsafe {
            libc::pthread_key_create(
                std::ptr::addr_of_mut!(KEY),
                Some(allocate_in_the_last_round),
            )
        },
        0
    );
    let before = perfalloc::stats();
    const THREADS: usize = 200;
    for _ in 0..THREADS {
        let mut t: libc::pthread_t = 0;
        // SAFETY: a valid start routine and out-pointer; the thread is joined at once.
        unsafe {
            assert_eq!(
                libc::pthread_create(&mut t, std::ptr::null(), set_the_key, std::ptr::null_mut()),
                0
            );
            assert_eq!(libc::pthread_join(t, std::ptr::null_mut()), 0);
        }
    }
    assert_eq!(
        LATE_ALLOCATIONS.load(Relaxed),
        THREADS,
        "the last round's destructor did not run"
    );
    let after = perfalloc::stats();
    // Each such thread used to keep a heap and its 4 MiB segment: 200 more threads, 800 MiB more.
    assert!(
        after.threads <= before.threads + 8,
        "{} threads counted after {THREADS} ended, {} before",
        after.threads,
        before.threads
    );
    assert!(
        after.mapped_bytes <= before.mapped_bytes + (64 << 20),
        "mapped {} -> {} bytes",
        before.mapped_bytes,
        after.mapped_bytes
    );
}

#[test]
fn a_forked_child_counts_only_its_own_thread_and_allocates_on_new_threads() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Three threads with heaps, parked outside the allocator while the process forks: each
    // allocates, frees, says so and sleeps (which allocates nothing) until told to end.
    let ready = std::sync::Arc::new(AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let parked: Vec<_> = (0..3)
        .map(|_| {
            let (ready, done) = (ready.clone(), done.clone());
            std::thread::spawn(move || {
                black_box(vec![1u8; 1000]);
                ready.fetch_add(1, Relaxed);
                while !done.load(Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        })
        .collect();
    while ready.load(Relaxed) < 3 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(perfalloc::stats().threads >= 4);
    // SAFETY (test): the child allocates, spawns and joins threads, and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let alone = perfalloc::stats().threads;
        // New threads take the heaps the parent's threads left here (their bins emptied).
        for _ in 0..4 {
            std::thread::spawn(|| {
                let v: Vec<Vec<u64>> = (0..2000).map(|i| vec![i; (i % 50) as usize]).collect();
                assert!(v
                    .iter()
                    .enumerate()
                    .all(|(i, x)| x.iter().all(|&y| y == i as u64)));
            })
            .join()
            .unwrap();
        }
        // 1, this thread; 2 if a thread of the test harness was inside a slow path at the fork,
        // which leaves its heap out of use (see `fork_child`). Without the fork handler's
        // orphaning, at least 5 (with the parked threads and the harness's).
        let code = if alone > 2 { 2 } else { 0 };
        // SAFETY (test): leave the child without running the test harness's exit path.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY (test): waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    done.store(true, Relaxed);
    for h in parked {
        h.join().unwrap();
    }
    assert!(libc::WIFEXITED(status), "child died: {status}");
    match libc::WEXITSTATUS(status) {
        0 => {}
        2 => panic!("the child counted threads it does not have"),
        c => panic!("child failed: {c}"),
    }
}
