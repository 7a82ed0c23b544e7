//! `MappedFile`: contents equal `std::fs::read`, and every error path is a clean `io::Error`.

use std::io::ErrorKind;
use std::path::PathBuf;

use perfalloc::mmap::{MapError, MappedFile};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("perfalloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn map_error(err: &std::io::Error) -> Option<MapError> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<MapError>())
        .copied()
}

#[test]
fn contents_match_fs_read_across_page_boundaries() {
    let dir = TempDir::new("mmap-contents");
    for len in [1usize, 4095, 4096, 4097, 3 * 4096 + 17, 1 << 20] {
        let path = dir.0.join(format!("f{len}"));
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let map = MappedFile::open(&path).unwrap();
        assert_eq!(map.len(), len);
        assert_eq!(&map[..], &std::fs::read(&path).unwrap()[..]);
    }
}

#[test]
fn empty_files_directories_and_missing_paths_are_clean_errors() {
    let dir = TempDir::new("mmap-errors");
    let empty = dir.0.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let err = MappedFile::open(&empty).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(map_error(&err), Some(MapError::Empty));

    let err = MappedFile::open(&dir.0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(map_error(&err), Some(MapError::NotAFile));

    let err = MappedFile::open(dir.0.join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(map_error(&err), None);
}

#[cfg(target_os = "linux")]
#[test]
fn files_that_report_size_zero_are_not_silently_empty() {
    // /proc files have contents but report size 0: mapping would silently lose them.
    let err = MappedFile::open("/proc/self/status").unwrap_err();
    assert_eq!(map_error(&err), Some(MapError::Empty));
}

#[cfg(unix)]
#[test]
fn unreadable_files_are_permission_errors() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mmap-perm");
    let path = dir.0.join("secret");
    std::fs::write(&path, b"no peeking").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let result = MappedFile::open(&path);
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // root bypasses file permissions: the open must then simply work.
        assert_eq!(&result.unwrap()[..], b"no peeking");
    } else {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::PermissionDenied);
    }
}

#[test]
fn map_outlives_the_path_and_is_shared_between_threads() {
    let dir = TempDir::new("mmap-threads");
    let path = dir.0.join("data");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let map = MappedFile::open(&path).unwrap();
    map.advise_sequential();
    std::fs::remove_file(&path).unwrap(); // unlinking does not invalidate a mapping
    let sums: Vec<u64> = std::thread::scope(|s| {
        let map = &map;
        let handles: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    map[t * 50_000..(t + 1) * 50_000]
                        .iter()
                        .map(|&b| b as u64)
                        .sum::<u64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        sums.iter().sum::<u64>(),
        data.iter().map(|&b| b as u64).sum::<u64>()
    );
}

#[test]
fn stats_count_opens_failures_and_live_bytes() {
    let dir = TempDir::new("mmap-stats");
    let path = dir.0.join("f");
    std::fs::write(&path, [1u8; 12345]).unwrap();
    let before = MappedFile::stats();
    let map = MappedFile::open(&path).unwrap();
    let _ = MappedFile::open(dir.0.join("missing"));
    let mid = MappedFile::stats();
    // Counters only grow, whatever other tests do in parallel.
    assert!(mid.opens > before.opens);
    assert!(mid.failures > before.failures);
    assert!(mid.live_bytes >= 12345 && mid.live_maps >= 1);
    drop(map);
    let json = serde_json::to_string(&mid).unwrap();
    assert_eq!(
        serde_json::from_str::<perfalloc::mmap::MapStats>(&json).unwrap(),
        mid
    );
}
