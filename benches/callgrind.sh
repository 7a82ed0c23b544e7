#!/usr/bin/env bash
# Instructions per alloc+free pair through GlobalAlloc, counted by callgrind (deterministic).
# Runs each allocator at two iteration counts and divides the difference, which cancels start-up.
# The last column subtracts the `noop` allocator's count: the loop and the two calls, not the
# allocator's own work.
# Usage: benches/callgrind.sh [size[:align]] [grow]   (default 64, aligned to 8; with `grow`, each
# round is an alloc of `size`, a realloc to twice that and a free, as a growing `String` or `Vec`
# makes)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-64}
mode=${2:-}
cargo build --release --example pair_loop -q
bin=target/release/examples/pair_loop
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$size" "$2" $mode 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_pair() {
  lo=$(count "$1" 100000)
  hi=$(count "$1" 1100000)
  echo "$lo $hi" | awk '{ printf "%.1f", ($2 - $1) / 1000000 }'
}
harness=$(per_pair noop)
what="$size-byte pair"
[ -n "$mode" ] && what="$size-byte round"
printf '%-10s %-28s %s\n' allocator "instructions per $what" "without the harness ($harness)"
for a in perfalloc mimalloc jemalloc system; do
  n=$(per_pair "$a")
  printf '%-10s %-28s %s\n' "$a" "$n" "$(echo "$n $harness" | awk '{ printf "%.1f", $1 - $2 }')"
done
