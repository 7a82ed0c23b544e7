//! Reads length-prefixed messages (u32 little-endian length, then payload) from a file through a
//! `ByteBuffer`, copies each payload into a buffer from a `BufferPool` (as a server would before
//! handing a message to a worker), and prints throughput and the pool's statistics.
//!
//! ```text
//! cargo run --release --example framing             # writes and reads a 64 MiB sample file
//! cargo run --release --example framing -- FILE     # reads FILE (same framing)
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use perfalloc::buffer::ByteBuffer;
use perfalloc::pool::{BufferPool, BufferPoolConfig};

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// Largest payload accepted, so a corrupt length cannot make us allocate gigabytes.
const MAX_FRAME: usize = 16 << 20;

/// Writes about `total` bytes of frames with payloads from 16 B to 16 KiB (a fixed xorshift
/// sequence, mostly small), and returns the number of frames.
fn write_sample(path: &PathBuf, total: usize) -> io::Result<u64> {
    let mut out = BufWriter::new(File::create(path)?);
    let (mut s, mut written, mut frames) = (0x9E37_79B9_7F4A_7C15u64, 0, 0);
    let payload: Vec<u8> = (0..16 << 10).map(|i| i as u8).collect();
    while written < total {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let len = if s % 8 == 0 {
            16 + (s >> 8) as usize % (16 << 10)
        } else {
            16 + (s >> 8) as usize % 1024
        };
        out.write_all(&(len as u32).to_le_bytes())?;
        out.write_all(&payload[..len - 16])?;
        out.write_all(&[0xAB; 16])?;
        written += 4 + len;
        frames += 1;
    }
    out.flush()?;
    Ok(frames)
}

fn main() -> io::Result<()> {
    let (path, sample, expected_frames) = match std::env::args_os().nth(1) {
        Some(p) => (PathBuf::from(p), false, None),
        None => {
            let p =
                std::env::temp_dir().join(format!("perfalloc-framing-{}.bin", std::process::id()));
            let frames = write_sample(&p, 64 << 20)?;
            (p, true, Some(frames))
        }
    };

    let pool = BufferPool::new(BufferPoolConfig::default());
    let mut buf = ByteBuffer::with_capacity(64 << 10);
    let mut file = File::open(&path)?;
    let (mut frames, mut payload_bytes, mut checksum) = (0u64, 0u64, 0u64);

    let start = Instant::now();
    loop {
        // Parse every complete frame in place.
        while buf.len() >= 4 {
            let len = u32::from_le_bytes(buf.readable()[..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {len} bytes"),
                ));
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len()); // room for the rest of this frame
                break;
            }
            let mut message = pool.get(len);
            message.extend_from_slice(&buf.readable()[4..4 + len]);
            buf.advance(4 + len);
            // "Process" the message: a cheap checksum over it.
            checksum = message
                .iter()
                .fold(checksum, |a, &b| a.rotate_left(5) ^ b as u64);
            frames += 1;
            payload_bytes += len as u64;
        } // `message` went back to the pool at the end of each iteration
        if buf.fill_from(&mut file)? == 0 {
            break;
        }
    }
    let elapsed = start.elapsed();
    if !buf.is_empty() {
        eprintln!(
            "warning: {} trailing bytes do not form a whole frame",
            buf.len()
        );
    }
    if let Some(expected) = expected_frames {
        assert_eq!(frames, expected, "every frame written was read back");
    }

    let file_bytes = payload_bytes + 4 * frames + buf.len() as u64;
    let secs = elapsed.as_secs_f64();
    println!(
        "read {} frames, {:.1} MiB in {:.3} s",
        frames,
        file_bytes as f64 / (1 << 20) as f64,
        secs
    );
    println!(
        "throughput: {:.0} MiB/s, {:.2} M frames/s (checksum {checksum:#x})",
        file_bytes as f64 / (1 << 20) as f64 / secs,
        frames as f64 / secs / 1e6
    );
    let stats = pool.stats();
    let hit_rate = stats.hits as f64 / (stats.hits + stats.misses + stats.oversize).max(1) as f64;
    println!(
        "pool hit rate: {:.4}% ({} allocations for {} messages)",
        hit_rate * 100.0,
        stats.misses,
        frames
    );
    let classes: Vec<_> = stats.classes.iter().filter(|c| c.shared_idle > 0).collect();
    println!(
        "pool: hits {} misses {} oversize {} returns {} discards {} idle {} buffers / {} bytes; shared lists {:?}",
        stats.hits,
        stats.misses,
        stats.oversize,
        stats.returns,
        stats.discards,
        stats.idle_buffers,
        stats.idle_bytes,
        classes
    );
    println!(
        "pool stats (JSON): {}",
        serde_json::to_string(&stats).expect("serialisable")
    );
    println!("read buffer: {:?}", buf.stats());

    if sample {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
