//! `ByteBuffer` against a `VecDeque<u8>` model: random action sequences from a seeded PRNG,
//! invariants checked after every step.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use perfalloc::buffer::ByteBuffer;

mod common;
use common::Rng;

#[global_allocator]
static GLOBAL: perfalloc::PerfAlloc = perfalloc::PerfAlloc::new();

/// A reader that returns at most `chunk` bytes per call, like a socket.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Extend(usize),
    IoWrite(usize),
    Read(usize),
    Advance(usize),
    FillFrom(usize, usize),
    SpareCommit(usize),
    Reserve(usize),
    Compact,
    Clear,
}

fn random_action(rng: &mut Rng) -> Action {
    let n = match rng.index(4) {
        0 => rng.index(4),
        1 => rng.index(64),
        2 => rng.index(1024),
        _ => rng.index(20_000),
    };
    match rng.index(9) {
        0 => Action::Extend(n),
        1 => Action::IoWrite(n),
        2 => Action::Read(n),
        3 => Action::Advance(n),
        4 => Action::FillFrom(n, 1 + rng.index(5000)),
        5 => Action::SpareCommit(n),
        6 => Action::Reserve(n),
        7 => Action::Compact,
        _ => Action::Clear,
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut buf = ByteBuffer::with_capacity(rng.index(256));
    let mut model: VecDeque<u8> = VecDeque::new();
    let mut next_byte = 0u8;
    let mut fresh = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                next_byte = next_byte.wrapping_add(1);
                next_byte
            })
            .collect()
    };
    for step in 0..steps {
        let action = random_action(&mut rng);
        let ctx = format!("seed {seed} step {step} {action:?}");
        match action {
            Action::Extend(n) => {
                let data = fresh(n);
                buf.extend_from_slice(&data);
                model.extend(&data);
            }
            Action::IoWrite(n) => {
                let data = fresh(n);
                assert_eq!(buf.write(&data).unwrap(), n, "{ctx}");
                model.extend(&data);
            }
            Action::Read(n) => {
                let mut out = vec![0u8; n];
                let got = buf.read(&mut out).unwrap();
                assert_eq!(got, n.min(model.len()), "{ctx}");
                let expected: Vec<u8> = model.drain(..got).collect();
                assert_eq!(&out[..got], &expected[..], "{ctx}");
            }
            Action::Advance(n) => {
                let before = model.len();
                let got = buf.advance(n);
                assert_eq!(got, n.min(before), "{ctx}: advance clamps");
                model.drain(..got);
            }
            Action::FillFrom(n, chunk) => {
                let data = fresh(n);
                let mut reader = Trickle { data: &data, chunk };
                let got = buf.fill_from(&mut reader).unwrap();
                assert_eq!(
                    got,
                    n.min(chunk),
                    "{ctx}: one read call, at least 8 KiB offered"
                );
                model.extend(&data[..got]);
            }
            Action::SpareCommit(n) => {
                buf.reserve(n);
                let data = fresh(n);
                let spare = buf.spare_capacity_mut();
                assert!(spare.len() >= n, "{ctx}: reserve makes room");
                for (slot, &b) in spare.iter_mut().zip(&data) {
                    slot.write(b);
                }
                // SAFETY: the first `n` spare bytes were just written (spare.len() >= n).
                unsafe { buf.commit(n) };
                model.extend(&data);
            }
            Action::Reserve(n) => {
                let cap = buf.capacity();
                buf.reserve(n);
                assert!(buf.capacity() - buf.consumed() - buf.len() >= n, "{ctx}");
                if buf.stats().grows == 0 {
                    assert_eq!(buf.capacity(), cap, "{ctx}");
                }
            }
            Action::Compact => {
                let moved = buf.compact();
                assert!(moved <= model.len(), "{ctx}: only the unread tail moves");
                assert_eq!(buf.consumed(), 0, "{ctx}");
            }
            Action::Clear => {
                buf.clear();
                model.clear();
            }
        }
        buf.check_invariants();
        assert!(
            buf.consumed() + buf.len() <= buf.capacity(),
            "{ctx}: read <= write <= capacity"
        );
        assert!(
            buf.readable().iter().eq(model.iter()),
            "{ctx}: contents differ from the model"
        );
        let s = buf.stats();
        assert_eq!(s.readable, model.len(), "{ctx}");
        assert_eq!(s.capacity, buf.capacity(), "{ctx}");
        assert_eq!(
            s.bytes_written - s.bytes_consumed,
            model.len() as u64,
            "{ctx}"
        );
    }
}

#[test]
fn random_actions_match_the_model() {
    for seed in 0..24 {
        run(seed, 600);
    }
}

#[test]
fn framing_round_trip_through_a_trickling_reader() {
    // Length-prefixed frames written to a stream, read back through 7-byte reads.
    let mut stream = Vec::new();
    let mut frames = Vec::new();
    let mut rng = Rng(7);
    for i in 0..500u32 {
        let len = rng.index(300);
        let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        stream.extend_from_slice(&(len as u32).to_le_bytes());
        stream.extend_from_slice(&payload);
        frames.push(payload);
    }
    let mut reader = Trickle {
        data: &stream,
        chunk: 7,
    };
    let mut buf = ByteBuffer::with_capacity(64);
    let mut parsed = Vec::new();
    loop {
        while buf.len() >= 4 {
            let len = u32::from_le_bytes(buf.readable()[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            parsed.push(buf.readable()[4..4 + len].to_vec());
            buf.advance(4 + len);
        }
        if buf.fill_from(&mut reader).unwrap() == 0 {
            break;
        }
    }
    assert!(buf.is_empty());
    assert_eq!(parsed, frames);
}

#[test]
fn lagging_reader_costs_amortised_linear_copying() {
    // A reader that keeps a few bytes unread after every write: compacting on every `reserve`
    // would copy O(n^2) bytes in total. The policy must keep the bytes moved within a small
    // multiple of the bytes written.
    let mut buf = ByteBuffer::with_capacity(1024);
    let chunk = [0x5Au8; 100];
    for _ in 0..20_000 {
        buf.extend_from_slice(&chunk);
        let keep = 3;
        buf.advance(buf.len() - keep);
    }
    let s = buf.stats();
    assert!(
        s.bytes_moved <= s.bytes_written,
        "moved {} for {} written",
        s.bytes_moved,
        s.bytes_written
    );
    assert!(
        buf.capacity() <= 4096,
        "steady state must not keep growing: {}",
        buf.capacity()
    );
}

#[test]
fn long_unread_tail_is_not_moved_for_a_few_bytes_of_room() {
    // The reader keeps ~1000 bytes unread and consumes 10 per 10 written: compacting whenever
    // the prefix makes room would move ~1000 bytes per 10 written. `reserve` must grow instead.
    let mut buf = ByteBuffer::with_capacity(1024);
    buf.extend_from_slice(&[1; 1000]);
    for _ in 0..10_000 {
        buf.advance(10);
        buf.extend_from_slice(&[2; 10]);
    }
    let s = buf.stats();
    assert!(
        s.bytes_moved <= 2 * s.bytes_written,
        "moved {} for {} written",
        s.bytes_moved,
        s.bytes_written
    );
}

#[test]
fn reserve_prefers_compaction_only_when_it_is_cheaper() {
    // Big consumed prefix, small tail: compact in place.
    let mut buf = ByteBuffer::with_capacity(1000);
    buf.extend_from_slice(&[1; 1000]);
    buf.advance(900);
    let cap = buf.capacity();
    buf.reserve(800);
    assert_eq!(
        (
            buf.capacity(),
            buf.stats().compactions,
            buf.stats().bytes_moved
        ),
        (cap, 1, 100)
    );

    // Small consumed prefix, big tail: grow, copying only the tail.
    let mut buf = ByteBuffer::with_capacity(1000);
    buf.extend_from_slice(&[1; 1000]);
    buf.advance(100);
    buf.reserve(50);
    let s = buf.stats();
    assert_eq!((s.compactions, s.grows, s.bytes_moved), (0, 1, 900));
    assert!(buf.capacity() >= 2000);
}

#[test]
fn failed_fill_leaves_the_contents_alone() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            ))
        }
    }
    let mut buf = ByteBuffer::new();
    buf.extend_from_slice(b"partial");
    buf.advance(3);
    let err = buf.fill_from(&mut Broken).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(buf.readable(), b"tial");
    buf.check_invariants();
}

#[test]
fn stats_serialize() {
    let mut buf = ByteBuffer::new();
    buf.extend_from_slice(b"abc");
    let json = serde_json::to_string(&buf.stats()).unwrap();
    let back: perfalloc::buffer::ByteBufferStats = serde_json::from_str(&json).unwrap();
    assert_eq!(back, buf.stats());
}
