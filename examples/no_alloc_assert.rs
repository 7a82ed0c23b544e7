//! Using `perfalloc::measure` to prove that a hot loop allocates nothing, and to catch one that does.
//!
//!     cargo run --release --example no_alloc_assert
#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Sums the numbers in a comma-separated line without allocating.
fn sum_fields(line: &str) -> u64 {
    line.split(',')
        .filter_map(|f| f.trim().parse::<u64>().ok())
        .sum()
}

/// The same, written the easy way: it allocates a Vec per line.
fn sum_fields_collecting(line: &str) -> u64 {
    let fields: Vec<&str> = line.split(',').collect();
    fields
        .iter()
        .filter_map(|f| f.trim().parse::<u64>().ok())
        .sum()
}

fn main() {
    let lines: Vec<String> = (0..10_000)
        .map(|i| format!("{i}, {}, {}, x, {}", i * 2, i * 3, i % 7))
        .collect();

    let (total, m) = perfalloc::measure(|| lines.iter().map(|l| sum_fields(l)).sum::<u64>());
    println!("zero-allocation loop: total {total}; {m}");
    assert_eq!(m.allocations, 0, "the hot loop allocated");
    assert_eq!(m.reallocations, 0);

    let (total2, m2) =
        perfalloc::measure(|| lines.iter().map(|l| sum_fields_collecting(l)).sum::<u64>());
    println!("collecting loop:      total {total2}; {m2}");
    assert_eq!(total, total2);
    assert_eq!(m2.allocations, 10_000, "one Vec per line");
    assert_eq!(m2.net_bytes(), 0, "and every one of them freed");
    println!("ok: the first loop allocates nothing; the second allocates once per line");
}
