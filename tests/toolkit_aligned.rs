//! `AlignedBuffer`: alignment and contents over random sizes, every error path, stats.

use std::sync::Mutex;

use perfalloc::aligned::{AlignError, AlignedBuffer};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Tests that read the process-wide gauges hold this, so no other test in this binary moves
/// them in between.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn random_sizes_and_alignments_hold_their_pattern() {
    let _g = serial();
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut live = Vec::new();
    for i in 0..400 {
        let align = 1usize << (next() % 22); // up to 2 MiB (huge-page) alignment
        let len = match next() % 3 {
            0 => 0,
            1 => (next() % 64) as usize,
            _ => (next() % 100_000) as usize,
        };
        let mut buf = AlignedBuffer::new(len, align).unwrap();
        assert_eq!(buf.as_ptr() as usize % align, 0, "len {len} align {align}");
        assert_eq!((buf.len(), buf.align()), (len, align));
        assert!(buf.iter().all(|&b| b == 0));
        buf.fill(i as u8);
        live.push((buf, i as u8));
        if live.len() > 16 {
            let (old, tag) = live.swap_remove((next() % 16) as usize);
            assert!(old.iter().all(|&b| b == tag), "buffers overlap");
        }
    }
    for (buf, tag) in &live {
        assert!(buf.iter().all(|b| b == tag), "buffers overlap");
    }
}

#[test]
fn errors_are_typed_and_displayed() {
    let _g = serial();
    let before = AlignedBuffer::stats();
    for align in [0, 3, 24, 1000, usize::MAX] {
        let err = AlignedBuffer::zeroed(64, align).unwrap_err();
        assert_eq!(err, AlignError::BadAlign { align });
        assert!(err.to_string().contains("power of two"));
    }
    // `len` rounded up to `align` must fit in isize::MAX.
    let err = AlignedBuffer::new(isize::MAX as usize, 4096).unwrap_err();
    assert_eq!(
        err,
        AlignError::TooLarge {
            len: isize::MAX as usize,
            align: 4096
        }
    );
    // A valid layout no allocator can satisfy (1 EiB): null, reported, not an abort.
    let err = AlignedBuffer::new(1 << 60, 64).unwrap_err();
    assert_eq!(
        err,
        AlignError::AllocFailed {
            len: 1 << 60,
            align: 64
        }
    );
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(boxed.to_string().contains("could not provide"));
    let after = AlignedBuffer::stats();
    assert_eq!(after.failures - before.failures, 7);
    assert_eq!(after.allocations, before.allocations);
}

#[test]
fn stats_track_live_bytes() {
    let _g = serial();
    let before = AlignedBuffer::stats();
    let a = AlignedBuffer::new(1000, 64).unwrap();
    let b = AlignedBuffer::zeroed(5000, 4096).unwrap();
    let empty = AlignedBuffer::new(0, 4096).unwrap(); // allocates nothing
    let mid = AlignedBuffer::stats();
    assert_eq!(mid.allocations - before.allocations, 2);
    assert_eq!(mid.live_buffers - before.live_buffers, 2);
    assert_eq!(mid.live_bytes - before.live_bytes, 6000);
    drop((a, b, empty));
    let after = AlignedBuffer::stats();
    assert_eq!(
        (after.live_buffers, after.live_bytes),
        (before.live_buffers, before.live_bytes)
    );
    let json = serde_json::to_string(&after).unwrap();
    assert_eq!(
        serde_json::from_str::<perfalloc::aligned::AlignedStats>(&json).unwrap(),
        after
    );
}

#[test]
fn send_sync_clone_and_zero_length() {
    let _g = serial();
    let mut buf = AlignedBuffer::from_slice(b"shared bytes", 256).unwrap();
    let copy = buf.clone();
    buf[0] = b'S';
    assert_eq!(&copy[..], b"shared bytes", "clone is a deep copy");
    assert_eq!(copy.align(), 256);
    assert_eq!(copy.as_ptr() as usize % 256, 0);
    std::thread::scope(|s| {
        let r = &buf;
        let h = s.spawn(move || r.iter().filter(|&&b| b == b's').count());
        assert_eq!(h.join().unwrap(), 1);
    });
    let moved = std::thread::spawn(move || buf.len()).join().unwrap();
    assert_eq!(moved, 12);
    for shift in [0, 12, 21, 30] {
        let empty = AlignedBuffer::zeroed(0, 1 << shift).unwrap();
        assert!(empty.is_empty());
        assert_eq!(&empty[..], &[] as &[u8]);
        assert_eq!(empty.as_ptr() as usize % (1 << shift), 0);
    }
}
