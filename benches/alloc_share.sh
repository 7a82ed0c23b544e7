#!/usr/bin/env bash
# Instructions per iteration of the single-thread workloads, split into the allocator's part (inside
# `alloc_same`'s `alloc`, `dealloc`, `realloc` and `alloc_zeroed`, callees included) and
# the rest, counted by callgrind in `alloc_same` (the workloads' own code is the same machine code
# for all four allocators). Each figure is the difference between runs of 6 and 1 iterations,
# divided by 5, which cancels start-up. The last column is what the rest alone would take, as a
# fraction of System's whole: the most any allocator could gain over System there by instructions.
# Usage: benches/alloc_share.sh [workload ...]   (default: the four realistic workloads)
set -euo pipefail
cd "$(dirname "$0")/.."
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(realistic/vec_push_100k realistic/strings_10k realistic/btreemap_10k
  realistic/hashmaps_1k)
# Built with `--cfg alloc_share`, in a target directory of its own: `alloc_same`'s allocator
# methods are then never inlined, so that every instruction of an allocation is counted inside one.
export RUSTFLAGS="${RUSTFLAGS:-} --cfg alloc_share"
cargo bench -q --bench alloc_same --no-run --target-dir target/alloc_share
bin=$(cargo bench -q --bench alloc_same --no-run --target-dir target/alloc_share \
  --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*alloc_same[^"]*\)".*/\1/p' | tail -n 1)
toggles=()
for f in alloc dealloc realloc alloc_zeroed; do
  toggles+=("--toggle-collect=<alloc_same::Same as core::alloc::global::GlobalAlloc>::$f")
done
count() { # allocator workload iterations [alloc]
  local extra=()
  [ "${4:-}" = alloc ] && extra=(--collect-atstart=no "${toggles[@]}")
  ALLOC_SAME=$1 ALLOC_BENCH_MODE=count ALLOC_BENCH_WORKLOAD=$2 ALLOC_BENCH_ITERS=$3 \
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "${extra[@]}" "$bin" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_iter() { echo "$(count "$1" "$2" 6 "${3:-}") $(count "$1" "$2" 1 "${3:-}")" | awk '{ print ($1 - $2) / 5 }'; }
printf '%-24s %-10s %14s %14s %14s %9s\n' workload allocator "all (M)" "allocator (M)" "rest (M)" "rest/sys"
for w in "${workloads[@]}"; do
  sys_all=
  for a in system perfalloc mimalloc jemalloc; do
    all=$(per_iter "$a" "$w")
    in=$(per_iter "$a" "$w" alloc)
    [ -n "$sys_all" ] || sys_all=$all
    echo "$w $a $all $in $sys_all" |
      awk '{ printf "%-24s %-10s %14.2f %14.2f %14.2f %9.2f\n", $1, $2, $3/1e6, $4/1e6, ($3-$4)/1e6, ($3-$4)/$5 }'
  done
done
