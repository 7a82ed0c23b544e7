#!/usr/bin/env bash
# Instructions per alloc+free pair through GlobalAlloc, counted by callgrind (deterministic).
# Runs each allocator at two iteration counts and divides the difference, which cancels start-up.
# Usage: benches/callgrind.sh [size]   (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-64}
cargo build --release --example pair_loop -q
bin=target/release/examples/pair_loop
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$size" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-10s %s\n' allocator "instructions per $size-byte pair"
for a in perfalloc mimalloc jemalloc system; do
  lo=$(count "$a" 100000)
  hi=$(count "$a" 1100000)
  echo "$a $lo $hi" | awk '{ printf "%-10s %.1f\n", $1, ($3 - $2) / 1000000 }'
done
