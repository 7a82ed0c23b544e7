//! Randomised sequences of alloc / alloc_zeroed / realloc / dealloc against a model: every block
//! carries a pattern derived from its id, checked before it is freed or moved.
mod common;
use common::*;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

fn run(seed: u64, steps: usize, max_size: usize) {
    let mut rng = Rng(seed);
    let mut live: Vec<Blk> = Vec::new();
    let mut id = seed << 32;
    for step in 0..steps {
        match rng.below(10) {
            0..=3 => {
                let big = rng.below(50) == 0;
                let size = if big {
                    rng.size(max_size)
                } else {
                    rng.size(64 * 1024)
                };
                let bits = if rng.below(8) == 0 { 17 } else { 5 };
                let align = 1usize << rng.below(bits);
                id += 1;
                live.push(Blk::new(size, align, id, rng.below(4) == 0));
            }
            4 | 5 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let big = rng.below(20) == 0;
                let new = if big {
                    rng.size(max_size)
                } else {
                    rng.size(64 * 1024)
                };
                live[i].realloc(new);
            }
            _ if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                live.swap_remove(i).free();
            }
            _ => {}
        }
        if step % 512 == 0 {
            assert_disjoint(&live);
        }
    }
    assert_disjoint(&live);
    for b in live {
        b.free();
    }
}

#[test]
fn random_sequences_over_many_seeds() {
    for seed in 1..=24 {
        run(seed, 6_000, 8 << 20);
    }
}

#[test]
fn small_blocks_only_long_run() {
    run(1000, 60_000, 4096);
}

#[test]
fn alignments_up_to_64k_are_honoured_for_every_size_class_boundary() {
    let mut blocks = Vec::new();
    let mut id = 0;
    for shift in 0..=16 {
        let align = 1usize << shift;
        for size in [
            1, 8, 15, 16, 17, 24, 64, 65, 1000, 1024, 1025, 4000, 4096, 4097, 5000, 8192, 8193,
            9000, 65_536, 70_000, 131_072, 131_073,
        ] {
            id += 1;
            blocks.push(Blk::new(size, align, id, id % 2 == 0));
        }
    }
    assert_disjoint(&blocks);
    for b in blocks {
        b.free();
    }
}

#[test]
fn realloc_grows_and_shrinks_across_small_medium_and_large() {
    let mut b = Blk::new(1, 8, 77, false);
    for size in [
        7,
        64,
        1000,
        9000,
        70_000,
        200_000,
        3 << 20,
        9 << 20,
        100_000,
        5000,
        3,
    ] {
        b.realloc(size);
    }
    b.free();
    // A Vec grown by push hits every realloc transition the standard library makes.
    let mut v: Vec<u32> = Vec::new();
    for i in 0..2_000_000u32 {
        v.push(i);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10).collect::<Vec<_>>());
}

#[test]
fn lifo_and_fifo_bulk_frees_keep_every_block_intact() {
    for order in 0..2 {
        let mut blocks: Vec<Box<[u8; 48]>> =
            (0..100_000).map(|i| Box::new([i as u8; 48])).collect();
        if order == 1 {
            blocks.reverse();
        }
        for (i, b) in blocks.iter().enumerate() {
            let i = if order == 1 { 99_999 - i } else { i };
            assert!(b.iter().all(|&x| x == i as u8));
        }
        drop(blocks);
    }
}

/// A large block bigger than every cached mapping is assembled: the largest mapping grows and the
/// others' resident pages are moved into its tail. Such a block spans several kernel mappings,
/// which `mremap` refuses, so growing it again must fall back to a copy rather than fail.
#[test]
fn large_blocks_assembled_from_cached_mappings_grow_and_keep_contents() {
    std::thread::spawn(|| {
        let parts: Vec<Vec<u8>> = [300_000, 500_000, 700_000]
            .iter()
            .map(|&n| vec![1u8; n])
            .collect();
        drop(std::hint::black_box(parts));
        let mut v = std::hint::black_box(vec![7u8; 1_400_000]);
        assert!(v.iter().all(|&x| x == 7));
        v.resize(3_000_000, 9);
        v.resize(6_000_000, 5);
        assert!(v[..1_400_000].iter().all(|&x| x == 7));
        assert!(v[1_400_000..3_000_000].iter().all(|&x| x == 9));
        assert!(v[3_000_000..].iter().all(|&x| x == 5));
    })
    .join()
    .unwrap();
}
