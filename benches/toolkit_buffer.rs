//! `ByteBuffer` framing against `bytes::BytesMut` and `Vec<u8>` + `drain`.
//!
//! One iteration feeds a pre-encoded stream of length-prefixed frames (u32 little-endian length,
//! then payload) into the buffer in 4 KiB chunks, as a socket would deliver it, and after each
//! chunk parses every complete frame in place (reads its first payload byte and consumes it).
//! Chunks do not line up with frames, so every chunk leaves a partial frame behind: this is
//! where the three differ (how they make room for the next chunk).

use std::hint::black_box;

use bytes::{Buf, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use perfalloc::buffer::ByteBuffer;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

const CHUNK: usize = 4096;

/// About `total` bytes of frames with payloads in `min..max`, from a fixed xorshift sequence.
fn stream(total: usize, min: usize, max: usize) -> (Vec<u8>, usize) {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let (mut out, mut frames) = (Vec::with_capacity(total + max + 4), 0);
    while out.len() < total {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let len = min + (s as usize) % (max - min);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend((0..len).map(|i| i as u8));
        frames += 1;
    }
    (out, frames)
}

#[inline]
fn frame_len(header: &[u8]) -> usize {
    u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize
}

fn byte_buffer(input: &[u8]) -> u64 {
    let mut buf = ByteBuffer::with_capacity(2 * CHUNK);
    let mut acc = 0u64;
    for chunk in input.chunks(CHUNK) {
        buf.extend_from_slice(chunk);
        while buf.len() >= 4 {
            let len = frame_len(buf.readable());
            if buf.len() < 4 + len {
                break;
            }
            acc += buf.readable()[4] as u64 + len as u64;
            buf.advance(4 + len);
        }
    }
    acc
}

fn bytes_mut(input: &[u8]) -> u64 {
    let mut buf = BytesMut::with_capacity(2 * CHUNK);
    let mut acc = 0u64;
    for chunk in input.chunks(CHUNK) {
        buf.extend_from_slice(chunk);
        while buf.len() >= 4 {
            let len = frame_len(&buf);
            if buf.len() < 4 + len {
                break;
            }
            acc += buf[4] as u64 + len as u64;
            buf.advance(4 + len);
        }
    }
    acc
}

fn vec_drain(input: &[u8]) -> u64 {
    let mut buf: Vec<u8> = Vec::with_capacity(2 * CHUNK);
    let mut acc = 0u64;
    for chunk in input.chunks(CHUNK) {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        while buf.len() - pos >= 4 {
            let len = frame_len(&buf[pos..]);
            if buf.len() - pos < 4 + len {
                break;
            }
            acc += buf[pos + 4] as u64 + len as u64;
            pos += 4 + len;
        }
        buf.drain(..pos);
    }
    acc
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    for (name, min, max) in [
        ("small_16-512B", 16, 512),
        ("large_16-128KiB", 16 << 10, 128 << 10),
    ] {
        let (input, _frames) = stream(4 << 20, min, max);
        let expected = byte_buffer(&input);
        assert_eq!(bytes_mut(&input), expected);
        assert_eq!(vec_drain(&input), expected);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("ByteBuffer", name), &input, |b, i| {
            b.iter(|| byte_buffer(black_box(i)))
        });
        group.bench_with_input(BenchmarkId::new("BytesMut", name), &input, |b, i| {
            b.iter(|| bytes_mut(black_box(i)))
        });
        group.bench_with_input(BenchmarkId::new("Vec+drain", name), &input, |b, i| {
            b.iter(|| vec_drain(black_box(i)))
        });
    }
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
