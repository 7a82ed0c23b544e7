#!/usr/bin/env bash
# Time per alloc+free pair of the four allocators called out of line, as a program's
# `__rust_alloc` calls them (`examples/pair_loop.rs`, one process per run), outside criterion,
# whose loops have perfalloc's fast path inlined into them. Rounds alternate the allocators in a
# rotated order; the table gives each allocator's median and the other allocators' median time
# over perfalloc's (above 1.00 perfalloc is faster).
# Usage: benches/pair_compare.sh [rounds] [pairs] [size[:align] ...]
#        (defaults 7, 50000000, and 16 64 256 1024 4096 32768)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
pairs=${2:-50000000}
shift $(($# < 2 ? $# : 2))
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(16 64 256 1024 4096 32768)
allocs=(perfalloc system mimalloc jemalloc)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo build --release --example pair_loop -q
bin=target/release/examples/pair_loop
for r in $(seq 0 $((rounds - 1))); do
  for s in "${sizes[@]}"; do
    for i in 0 1 2 3; do
      a=${allocs[$(((i + r) % 4))]}
      "$bin" "$a" "$s" "$pairs" | sed -n "s/.*, \([0-9.]*\) ns a pair/\1/p" >>"$dir/$a.${s/:/_}"
    done
  done
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "| pair | perfalloc | vs system | vs mimalloc | vs jemalloc |  ($rounds rounds of $pairs pairs, medians)"
echo "|---|---|---|---|---|"
for s in "${sizes[@]}"; do
  f=${s/:/_}
  p=$(median "$dir/perfalloc.$f")
  row="| $s | $p ns"
  for a in system mimalloc jemalloc; do
    row="$row | $(echo "$(median "$dir/$a.$f") $p" | awk '{ printf "%.2fx", $1 / $2 }')"
  done
  echo "$row |"
done
