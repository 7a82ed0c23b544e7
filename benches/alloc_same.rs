//! The allocator workloads (see `alloc/workloads.rs`) in one binary for all four allocators, the
//! one used chosen at start-up by `ALLOC_SAME=perfalloc|system|mimalloc|jemalloc` (default
//! perfalloc). The other `alloc_*` binaries each compile the workloads' own code (B-tree search,
//! formatting) separately, and that code alone has run up to 3% apart between builds; here it is
//! the same machine code for every allocator. The price is a load and a branch in every call,
//! paid by all four alike. Ids are `<workload>/same-<allocator>`; `compare.py --same-binary` runs it.
use std::alloc::{GlobalAlloc, System}; // `Layout` comes with the workloads
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

static PERF: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NAMES: [&str; 4] = ["perfalloc", "system", "mimalloc", "jemalloc"];
/// 0 until the first allocation reads `ALLOC_SAME`, then 1 + an index into `NAMES`. Fixed from
/// then on: a block must go back to the allocator that gave it.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

#[inline(always)]
fn chosen() -> u8 {
    match CHOSEN.load(Relaxed) {
        0 => choose(),
        c => c,
    }
}

#[cold]
fn choose() -> u8 {
    // `getenv`, not `std::env::var`: this runs inside the first allocation, which may not allocate.
    // SAFETY: a NUL-terminated name; the result is null or a NUL-terminated string.
    let v = unsafe { libc::getenv(c"ALLOC_SAME".as_ptr()) };
    let name = if v.is_null() {
        &b""[..]
    } else {
        // SAFETY: as above.
        unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes()
    };
    let i = match NAMES.iter().position(|n| n.as_bytes() == name) {
        Some(i) => i,
        None if name.is_empty() => 0,
        None => {
            // A misspelt name would otherwise measure perfalloc under another name.
            let msg = b"alloc_same: ALLOC_SAME is not perfalloc, system, mimalloc or jemalloc\n";
            // SAFETY: writes a static buffer to stderr; no allocation on the way out.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            std::process::abort();
        }
    };
    let c = i as u8 + 1;
    // Two threads racing here read the same environment and store the same value.
    CHOSEN.store(c, Relaxed);
    c
}

struct Same;

macro_rules! dispatch {
    ($method:ident($($arg:expr),*)) => {
        // SAFETY: forwarded caller promise; every block goes back to the allocator that gave it,
        // since the choice never changes.
        unsafe {
            match chosen() {
                1 => PERF.$method($($arg),*),
                2 => System.$method($($arg),*),
                3 => MI.$method($($arg),*),
                _ => JE.$method($($arg),*),
            }
        }
    };
}

// SAFETY: every call goes to one of four allocators, the same one for the whole run.
// Built with `--cfg alloc_share` (as `benches/alloc_share.sh` builds it), these methods are never
// inlined, so that callgrind can count every instruction spent inside them: inlined into the
// workload's code (hashbrown's drop, for one), an allocator's fast path and the slow paths it
// jumps to would be counted as the workload's own.
unsafe impl GlobalAlloc for Same {
    #[cfg_attr(alloc_share, inline(never))]
    #[cfg_attr(not(alloc_share), inline)]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        dispatch!(alloc(l))
    }
    #[cfg_attr(alloc_share, inline(never))]
    #[cfg_attr(not(alloc_share), inline)]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        dispatch!(alloc_zeroed(l))
    }
    #[cfg_attr(alloc_share, inline(never))]
    #[cfg_attr(not(alloc_share), inline)]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        dispatch!(dealloc(p, l))
    }
    #[cfg_attr(alloc_share, inline(never))]
    #[cfg_attr(not(alloc_share), inline)]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        dispatch!(realloc(p, l, new))
    }
}

#[global_allocator]
static GLOBAL: Same = Same;

/// The chosen allocator's name in ids and reports: `same-<allocator>`.
struct Chosen;
const ALLOCATOR: Chosen = Chosen;

impl std::fmt::Display for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "same-{}", NAMES[chosen() as usize - 1])
    }
}

impl From<Chosen> for String {
    fn from(c: Chosen) -> String {
        c.to_string()
    }
}

include!("alloc/workloads.rs");
