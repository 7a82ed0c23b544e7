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
# The bench profile (one code unit), as criterion's builds; its output goes to the release directory.
cargo build --profile bench --example pair_loop -q
bin=${CARGO_TARGET_DIR:-target}/release/examples/pair_loop
for r in $(seq 0 $((rounds - 1))); do
  for s in "${sizes[@]}"; do
    for i in 0 1 2 3; do
      a=${allocs[$(((i + r) % 4))]}
      t=$("$bin" "$a" "$s" "$pairs" | sed -n "s/.*, \([0-9.]*\) ns a pair/\1/p")
      [ -n "$t" ] || { echo "pair_loop $a $s printed no time" >&2; exit 1; }
      echo "$t" >>"$dir/$a.${s/:/_}"
    done
  done
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "$rounds rounds of $pairs pairs; medians, and the others' medians over perfalloc's:"
echo "| pair | perfalloc | vs system | vs mimalloc | vs jemalloc |"
echo "|---|---|---|---|---|"
for s in "${sizes[@]}"; do
  f=${s/:/_}
  p=$(median "$dir/perfalloc.$f")
  row="| $s B | $p ns"
  for a in system mimalloc jemalloc; do
    row="$row | $(echo "$(median "$dir/$a.$f") $p" | awk '{ printf "%.2fx", $1 / $2 }')"
  done
  echo "$row |"
done
