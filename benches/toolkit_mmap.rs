//! `MappedFile` against `std::fs::read` on a 256 MiB file (warm page cache).
//!
//! The file is written to a fresh directory under the system temp dir before the group runs and
//! removed afterwards. Both variants open the file and read every byte (a wrapping sum of u64
//! words), so the map cannot win by not touching the data; `open_only` shows what
//! the map costs when only the header of a large file is needed. Set
//! `PERFALLOC_BENCH_MMAP_MIB` to change the size. Flat sampling with 10 samples keeps the
//! default run short (each iteration reads the whole file).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use perfalloc::mmap::MappedFile;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn make_file(mib: usize) -> TempFile {
    let dir = std::env::temp_dir().join(format!("perfalloc-bench-mmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    f.sync_all().unwrap();
    TempFile(path)
}

#[inline]
fn checksum(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    let mut acc = 0u64;
    for w in &mut words {
        acc = acc.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
    }
    words
        .remainder()
        .iter()
        .fold(acc, |a, &b| a.wrapping_add(b as u64))
}

fn read_file(c: &mut Criterion) {
    let mib: usize = std::env::var("PERFALLOC_BENCH_MMAP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let file = make_file(mib);
    let path = file.0.clone();
    let expected = checksum(&std::fs::read(&path).unwrap());
    assert_eq!(checksum(&MappedFile::open(&path).unwrap()), expected);

    let mut group = c.benchmark_group("read_file");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes((mib as u64) << 20));
    group.bench_function("mmap_checksum", |b| {
        b.iter(|| checksum(&MappedFile::open(black_box(&path)).unwrap()))
    });
    group.bench_function("fs_read_checksum", |b| {
        b.iter(|| checksum(&std::fs::read(black_box(&path)).unwrap()))
    });
    group.finish();

    // No throughput here: it reads one byte, so bytes per second would mean nothing.
    let mut group = c.benchmark_group("open_only");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("mmap_open_first_byte", |b| {
        b.iter(|| MappedFile::open(black_box(&path)).unwrap()[0])
    });
    group.finish();
    drop(file);
}

criterion_group!(benches, read_file);
criterion_main!(benches);
