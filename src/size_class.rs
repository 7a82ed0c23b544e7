//! Size classes: which block size serves a request, computed in O(1).
//!
//! Classes are 8 B apart up to 64 B, then four per power of two (80, 96, 112, 128, 160, 192, ...),
//! the spacing mimalloc and jemalloc use: a request above 64 B is rounded up by less than 25% of
//! itself, and by less than 20% of the block it lands in. Blocks sit at `page_start + i *
//! block_size` in pages whose start is aligned to their largest block or more (8 KiB for a small
//! segment's first page, which starts after the segment header; 64 KiB for the other small pages,
//! 512 KiB for medium ones), so a block is aligned to the largest power of two its class divides
//! by. An aligned request takes its own class when that is a multiple of the
//! alignment (up to 16 for any size, up to 1 KiB above 4 KiB, where every class is a multiple of
//! 1 KiB); otherwise the power-of-two class of `max(size, align)`, as every power of two is a class.
//!
//! Classes `0..SMALL_CLASSES` (blocks up to 8 KiB) live in 64 KiB pages; classes
//! `SMALL_CLASSES..CLASSES` (10 KiB to 128 KiB) in 512 KiB pages; larger requests go to `large`.

use static_assertions::const_assert;

/// Number of size classes served by heaps.
pub const CLASSES: usize = 52;
/// Classes below this index use small (64 KiB) pages.
pub const SMALL_CLASSES: usize = 36;
/// The largest block served by a heap; larger requests are `large`.
pub const MAX_SMALL_SIZE: usize = 128 * 1024;
/// The largest block in a small page.
pub const MAX_SMALL_PAGE_BLOCK: usize = 8 * 1024;
/// Requests up to this size with alignment up to `FAST_ALIGN` find their class in one table load.
pub const TABLE_MAX: usize = 4096;
/// The alignment every class guarantees without rounding (all block sizes are multiples of 8).
pub const FAST_ALIGN: usize = 8;
/// Requests above `TABLE_MAX` (up to `MAX_SMALL_SIZE`) find their class in `CLASS_OF_KIB`, one
/// entry per this many bytes: every class boundary above `TABLE_MAX` is a multiple of it.
const KIB: usize = 1024;
/// The alignment every class above `TABLE_MAX` guarantees: its blocks are multiples of `KIB`, at
/// multiples of their size from a page start aligned to 8 KiB or more.
pub const KIB_ALIGN: usize = KIB;

const fn compute_class(size: usize) -> usize {
    if size <= 64 {
        if size == 0 {
            0
        } else {
            size.div_ceil(8) - 1
        }
    } else {
        let w = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize; // 2^w < size <= 2^(w+1)
        let sub = ((size - 1) >> (w - 2)) & 3;
        8 + (w - 6) * 4 + sub
    }
}

const fn compute_block_size(class: usize) -> usize {
    if class < 8 {
        (class + 1) * 8
    } else {
        let w = (class - 8) / 4 + 6;
        let sub = (class - 8) % 4;
        (1 << w) + (sub + 1) * (1 << (w - 2))
    }
}

const fn make_sizes() -> [u32; CLASSES] {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = compute_block_size(c) as u32;
        c += 1;
    }
    t
}

const fn make_table() -> [u8; TABLE_MAX + 1] {
    let mut t = [0u8; TABLE_MAX + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = compute_class(i) as u8;
        i += 1;
    }
    t
}

/// Block size of each class.
pub static BLOCK_SIZE: [u32; CLASSES] = make_sizes();
/// `CLASS_OF_SIZE[size]` is the class of `size` for `size <= TABLE_MAX`: indexed by the size itself,
/// not by words, so the fast path does no arithmetic before the load (4 KiB of table, of which a
/// program touches the lines of the sizes it uses). A `const`, not a `static`: inlined into the
/// caller's crate it is addressed RIP-relative, without a GOT load.
const CLASS_OF_SIZE: [u8; TABLE_MAX + 1] = make_table();

const fn table_is_in_range() -> bool {
    let mut i = 0;
    while i < CLASS_OF_SIZE.len() {
        if CLASS_OF_SIZE[i] as usize >= CLASSES {
            return false;
        }
        i += 1;
    }
    true
}
const_assert!(table_is_in_range());

const fn make_kib_table() -> [u8; MAX_SMALL_SIZE / KIB] {
    let mut t = [0u8; MAX_SMALL_SIZE / KIB];
    let mut i = 0;
    while i < t.len() {
        // Entry `i` covers sizes `i * KIB + 1 ..= (i + 1) * KIB`; the largest decides.
        t[i] = compute_class((i + 1) * KIB) as u8;
        i += 1;
    }
    t
}

/// `CLASS_OF_KIB[(size - 1) / KIB]` is the class of `size` for `TABLE_MAX < size <=
/// MAX_SMALL_SIZE`: 128 bytes of table instead of the arithmetic of `compute_class`.
const CLASS_OF_KIB: [u8; MAX_SMALL_SIZE / KIB] = make_kib_table();

/// Every class boundary above `TABLE_MAX` falls on a multiple of `KIB`, so all sizes one entry of
/// `CLASS_OF_KIB` covers share a class; and each of those blocks is a multiple of `KIB_ALIGN`
/// (the same constant: a block size that is a multiple of it is aligned to it).
const fn kib_classes_split_on_kib() -> bool {
    let mut c = compute_class(TABLE_MAX) + 1;
    while c < CLASSES {
        if compute_block_size(c) % KIB_ALIGN != 0 {
            return false;
        }
        c += 1;
    }
    TABLE_MAX % KIB == 0 && compute_block_size(compute_class(TABLE_MAX)) == TABLE_MAX
}
const_assert!(kib_classes_split_on_kib());

const_assert!(compute_block_size(CLASSES - 1) == MAX_SMALL_SIZE);
const_assert!(compute_block_size(SMALL_CLASSES - 1) == MAX_SMALL_PAGE_BLOCK);
const_assert!(compute_class(MAX_SMALL_SIZE) == CLASSES - 1);
const_assert!(compute_class(MAX_SMALL_PAGE_BLOCK) == SMALL_CLASSES - 1);
const_assert!(compute_class(65) == 8 && compute_block_size(8) == 80);
// Medium pages (512 KiB) hold at most 64 blocks, so one u64 bitmap covers a page.
const_assert!(512 * 1024 / compute_block_size(SMALL_CLASSES) <= 64);

/// Whether a request takes the table path: `table_class` then applies. `heap::alloc` and
/// `heap::free` spell it out as two separate tests (see `heap::alloc` for why); keep them in step.
#[inline(always)]
pub fn is_table_size(size: usize, align: usize) -> bool {
    size <= TABLE_MAX && align <= FAST_ALIGN
}

/// The class of a request for which `is_table_size` holds: one load. Always `< CLASSES`
/// (checked at compile time above).
#[inline(always)]
pub fn table_class(size: usize) -> usize {
    debug_assert!(size <= TABLE_MAX);
    CLASS_OF_SIZE[size] as usize
}

/// The class for a request of `size` bytes with alignment `align`, or `None` if it is large.
///
/// `align` must be a power of two.
#[inline]
pub fn class_of(size: usize, align: usize) -> Option<usize> {
    if is_table_size(size, align) {
        return Some(table_class(size));
    }
    class_above_table(size, align)
}

/// `class_of` for a request that `is_table_size` turned away: above 4 KiB or aligned above 8.
/// One table load when it is above 4 KiB and aligned to at most 1 KiB; `class_16` when it is up to
/// 4 KiB and aligned to 16 (what `HashMap` tables ask for: hashbrown aligns them to its 16-byte
/// control groups); `class_of_slow` otherwise.
#[inline]
pub fn class_above_table(size: usize, align: usize) -> Option<usize> {
    debug_assert!(!is_table_size(size, align));
    if size > TABLE_MAX && size <= MAX_SMALL_SIZE && align <= KIB_ALIGN {
        return Some(CLASS_OF_KIB[(size - 1) / KIB] as usize);
    }
    if size <= TABLE_MAX && align == 16 {
        return Some(class_16(size));
    }
    class_of_slow(size, align)
}

/// The class of a request of at most `TABLE_MAX` bytes aligned to 16: that of the size rounded up
/// to 16, a multiple of 16 (as in `class_of_slow`). Computed, not read from `CLASS_OF_SIZE`: with
/// the load, a HashMap workload ran 6% slower, for a reason not found (`benches/NOTES.md`).
#[inline(always)]
pub fn class_16(size: usize) -> usize {
    debug_assert!(size <= TABLE_MAX);
    compute_class((size + 15) & !15)
}

fn class_of_slow(size: usize, align: usize) -> Option<usize> {
    let size = if align <= 16 {
        // Every class of a multiple of 16 is a multiple of 16 (16, 32, 48, 64, 80, ...).
        (size.checked_add(align - 1)?) & !(align - 1)
    } else {
        // A power-of-two block in a page aligned to its own size is aligned to itself.
        size.max(align).checked_next_power_of_two()?
    };
    if size > MAX_SMALL_SIZE {
        return None;
    }
    Some(compute_class(size))
}

/// The block size of `class`.
#[inline(always)]
pub fn block_size(class: usize) -> usize {
    BLOCK_SIZE[class] as usize
}

/// Whether `class` lives in medium (512 KiB, bitmap-managed) pages.
#[inline(always)]
pub fn is_medium(class: usize) -> bool {
    class >= SMALL_CLASSES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_fits_its_class_with_bounded_waste() {
        for size in 1..=MAX_SMALL_SIZE {
            let c = class_of(size, 1).unwrap();
            let b = block_size(c);
            assert!(b >= size, "size {size} class {c} block {b}");
            if c > 0 {
                assert!(
                    block_size(c - 1) < size,
                    "size {size} not in the smallest class"
                );
            }
            if size > 64 {
                assert!((b - size) * 4 < size, "waste above 25% at {size}");
            }
        }
        assert_eq!(class_of(MAX_SMALL_SIZE + 1, 1), None);
    }

    #[test]
    fn table_agrees_with_the_computation() {
        for size in 1..=TABLE_MAX {
            assert!(is_table_size(size, FAST_ALIGN));
            // `class_of` itself takes the table for these sizes: compare with the arithmetic.
            assert_eq!(table_class(size), compute_class(size), "size {size}");
        }
        assert!(!is_table_size(TABLE_MAX + 1, 1) && !is_table_size(8, FAST_ALIGN * 2));
    }

    #[test]
    fn the_kib_table_agrees_with_the_computation() {
        for size in TABLE_MAX + 1..=MAX_SMALL_SIZE {
            for align in [1, FAST_ALIGN, 16, 64, KIB_ALIGN] {
                let c = class_of(size, align);
                assert_eq!(c, Some(compute_class(size)), "size {size} align {align}");
                assert_eq!(
                    block_size(c.unwrap()) % align,
                    0,
                    "size {size} align {align}"
                );
            }
        }
        // Past the table's range or its alignment: the arithmetic, or large.
        assert_eq!(class_of(MAX_SMALL_SIZE + 1, 1), None);
        let c = class_of(TABLE_MAX + 1, 2 * KIB_ALIGN).unwrap();
        assert_eq!(
            block_size(c),
            8 * 1024,
            "the power of two at or above the size"
        );
    }

    #[test]
    fn sixteen_byte_aligned_requests_take_the_class_of_their_rounded_size() {
        for size in 1..=TABLE_MAX {
            let c = class_of(size, 16).unwrap();
            // From the block sizes, not from `class_16`'s formula: the smallest class whose blocks
            // hold the size and are multiples of 16.
            let want = (0..CLASSES)
                .find(|&k| block_size(k) >= size && block_size(k) % 16 == 0)
                .unwrap();
            assert_eq!(c, want, "size {size}");
        }
    }

    #[test]
    fn the_table_takes_exactly_small_sizes_with_small_alignments() {
        // From the data, not from `is_table_size`'s formula: the sizes the table has an entry
        // for, and the largest alignment every one of its classes' blocks has.
        let table_len = CLASS_OF_SIZE.len();
        let guaranteed = (0..table_len)
            .map(|s| 1usize << block_size(table_class(s)).trailing_zeros())
            .min()
            .unwrap();
        assert_eq!(guaranteed, 8);
        for shift in 0..usize::BITS {
            let align = 1usize << shift;
            for size in (0..=TABLE_MAX + 2).chain([usize::MAX / 2, usize::MAX]) {
                let expected = size < table_len && align <= guaranteed;
                assert_eq!(
                    is_table_size(size, align),
                    expected,
                    "size {size} align {align}"
                );
            }
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        let mut align = 1;
        while align <= MAX_SMALL_SIZE {
            for size in [1, 7, 8, 9, 15, 17, 100, 1000, 4095, 4097, 70_000] {
                if let Some(c) = class_of(size, align) {
                    let b = block_size(c);
                    assert!(b >= size);
                    // Blocks are at multiples of `b` from a page aligned to >= b, so alignment
                    // holds when b is a multiple of align (align <= 16) or a power of two >= align.
                    assert_eq!(b % align.min(b), 0, "size {size} align {align} block {b}");
                    assert!(b % align == 0 || b.is_power_of_two() && b >= align);
                }
            }
            align *= 2;
        }
        assert_eq!(class_of(8, 256 * 1024), None);
        assert_eq!(class_of(usize::MAX - 8, 16), None);
    }

    #[test]
    fn block_sizes_increase_and_classes_split_at_the_page_kinds() {
        for c in 1..CLASSES {
            assert!(block_size(c) > block_size(c - 1));
        }
        assert!(block_size(SMALL_CLASSES - 1) <= MAX_SMALL_PAGE_BLOCK);
        assert!(block_size(SMALL_CLASSES) > MAX_SMALL_PAGE_BLOCK);
        assert!(is_medium(SMALL_CLASSES) && !is_medium(SMALL_CLASSES - 1));
    }
}
