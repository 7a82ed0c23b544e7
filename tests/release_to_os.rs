//! A program that frees 90% of a 1 GiB peak sees its resident set fall. One test in its own binary,
//! so that no other test's memory blurs the resident-set readings.

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

fn rss() -> u64 {
    perfalloc::stats().resident_bytes
}

#[test]
fn freeing_90_percent_of_1gib_gives_memory_back() {
    let mut rng = 0x1234_5678u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let base = rss();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    while total < 1 << 30 {
        let size = 1 + (next() % (64 * 1024)) as usize;
        blocks.push(vec![0xA5; size]); // touches every page
        total += size;
    }
    let peak = rss() - base;
    assert!(
        peak >= 1 << 30,
        "expected at least 1 GiB resident, got {peak}"
    );
    let mut kept = 0usize;
    for b in blocks.iter_mut() {
        if next() % 10 == 0 {
            kept += b.len();
        } else {
            *b = Vec::new();
        }
    }
    // Without any help: the heap purges as dirty memory passes its bound while the frees happen.
    let after = rss() - base;
    // After the purge delay, the program's next allocations purge the rest; `trim` does it now.
    perfalloc::trim();
    let trimmed = rss() - base;
    assert!(blocks
        .iter()
        .filter(|b| !b.is_empty())
        .all(|b| b.iter().all(|&x| x == 0xA5)));
    eprintln!(
        "peak {} MiB, kept {} MiB, resident after {} MiB, after trim {} MiB",
        peak >> 20,
        kept >> 20,
        after >> 20,
        trimmed >> 20
    );
    // The survivors sit on nearly every 64 KiB page; the pages inside free blocks must go back.
    let kept = kept as u64;
    assert!(
        after < kept * 5 / 2,
        "resident {after} bytes after freeing 90%; {kept} live"
    );
    assert!(
        trimmed < kept * 3 / 2,
        "resident {trimmed} bytes after trim; {kept} live"
    );
}
