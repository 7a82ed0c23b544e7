#!/usr/bin/env bash
# Time per 64-byte alloc+free pair of perfalloc with and without the `stats` feature, outside
# criterion: `examples/pair_loop.rs` built both ways, run alternately, medians and their ratio.
# Usage: benches/pair_time.sh [rounds] [size] [pairs]   (defaults 9, 64, 200000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-9}
size=${2:-64}
pairs=${3:-200000000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo build --release --example pair_loop -q
cp target/release/examples/pair_loop "$dir/stats"
cargo build --release --example pair_loop -q --no-default-features
cp target/release/examples/pair_loop "$dir/nostats"
for _ in $(seq "$rounds"); do
  for b in stats nostats; do
    "$dir/$b" perfalloc "$size" "$pairs" | sed -n "s/.*, \([0-9.]*\) ns a pair/\1/p" >>"$dir/$b.txt"
  done
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
s=$(median "$dir/stats.txt")
n=$(median "$dir/nostats.txt")
echo "with statistics:    $(tr '\n' ' ' <"$dir/stats.txt")"
echo "without statistics: $(tr '\n' ' ' <"$dir/nostats.txt")"
echo "$s $n" | awk '{ printf "medians: %.3f ns a pair with statistics, %.3f ns without: %.3fx\n", $1, $2, $2 / $1 }'
