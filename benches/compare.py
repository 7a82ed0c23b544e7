#!/usr/bin/env python3
"""Runs the allocator benchmarks for perfalloc, System, mimalloc and jemalloc interleaved, several
rounds, and prints median ratios measured side by side.

    python3 benches/compare.py --rounds 3          # timings, peak memory, release-to-OS
    python3 benches/compare.py --rounds 1 --only pair
    python3 benches/compare.py --stats-overhead --rounds 3   # perfalloc with vs without stats
    python3 benches/compare.py --memory-only       # peak memory and release-to-OS, no timings
    python3 benches/compare.py --same-binary --rounds 5 --only realistic --skip-memory
        # the four allocators in one binary (alloc_same), so the workloads' own code is identical

A ratio is other allocator's time / perfalloc's time, per round, then the median over rounds:
above 1.00 perfalloc is faster. Peak memory is the child's peak resident set per workload.
"""
import argparse, json, os, pathlib, re, statistics, subprocess, sys

ALLOCS = ["perfalloc", "system", "mimalloc", "jemalloc"]
ROOT = pathlib.Path(__file__).resolve().parent.parent
CRIT = ROOT / "target" / "criterion"


def bench(alloc, extra, env=None):
    features = []
    if alloc == "perfalloc-nostats":
        alloc, features = "perfalloc", ["--no-default-features"]
    if alloc.startswith("same-"):
        env = {**(env or {}), "ALLOC_SAME": alloc[len("same-"):]}
        alloc = "same"
    cmd = ["cargo", "bench", "-q", "--bench", f"alloc_{alloc}"] + features + ["--"] + extra
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, check=True,
                          capture_output=True, text=True).stdout


def estimates(alloc):
    out = {}
    for f in CRIT.glob("**/new/estimates.json"):
        parts = f.relative_to(CRIT).parts  # group, alloc, [param], new, estimates.json
        if parts[1] != alloc:
            continue
        name = "/".join([parts[0]] + list(parts[2:-2]))
        out[name] = json.loads(f.read_text())["median"]["point_estimate"]
    return out


def fmt_ns(ns):
    return f"{ns:.1f} ns" if ns < 1e3 else f"{ns / 1e3:.1f} us" if ns < 1e6 else f"{ns / 1e6:.2f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="criterion filter, e.g. pair")
    ap.add_argument("--warm-up", default="1")
    ap.add_argument("--measure", default="2")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak memory and release-to-OS tables (no criterion rounds)")
    ap.add_argument("--stats-overhead", action="store_true",
                    help="compare perfalloc with and without the stats feature instead")
    ap.add_argument("--same-binary", action="store_true",
                    help="run all four allocators in the one binary alloc_same")
    args = ap.parse_args()
    global ALLOCS
    if args.stats_overhead:
        ALLOCS = ["perfalloc", "perfalloc-nostats"]
        args.skip_memory = True
    if args.same_binary:
        ALLOCS = ["same-" + a for a in ALLOCS]
    if not args.memory_only:
        timings(args)
    if not args.skip_memory:
        memory()


def timings(args):
    base = ALLOCS[0]
    rounds = []
    for r in range(args.rounds):
        res = {}
        k = r % len(ALLOCS)
        order = ALLOCS[k:] + ALLOCS[:k]  # rotate the order between rounds
        for a in order:
            extra = ["--warm-up-time", args.warm_up, "--measurement-time", args.measure]
            if args.only:
                extra.append(args.only)
            bench(a, extra)
            res[a] = estimates(a)
            print(f"round {r + 1}: {a} done", file=sys.stderr)
        rounds.append(res)
    names = sorted(set(rounds[0][base]))
    if args.only:
        names = [n for n in names if re.search(args.only, n)]
    print(f"\n| workload | {base} | " + " | ".join(f"vs {a}" for a in ALLOCS[1:])
          + f" |  ({args.rounds} rounds, median of per-round ratios)")
    print("|---|---|" + "---|" * (len(ALLOCS) - 1))
    for n in names:
        perf = statistics.median(r[base][n] for r in rounds)
        cells = []
        for a in ALLOCS[1:]:
            ratios = [r[a][n] / r[base][n] for r in rounds if n in r[a]]
            cells.append(f"{statistics.median(ratios):.2f}x" if ratios else "-")
        print(f"| {n} | {fmt_ns(perf)} | " + " | ".join(cells) + " |")


def memory():
    mem = {}
    for a in ALLOCS:
        for line in bench(a, [], {"ALLOC_BENCH_MODE": "memory"}).splitlines():
            _, name, alloc, kib = line.split()
            mem.setdefault(name, {})[alloc] = int(kib)
    print("\n| peak RSS (MiB) | " + " | ".join(ALLOCS) + " |")
    print("|---|" + "---|" * len(ALLOCS))
    for name, row in mem.items():
        print(f"| {name} | " + " | ".join(f"{row[a] / 1024:.1f}" for a in ALLOCS) + " |")
    print("\n| 1 GiB, 90% freed | peak MiB | live MiB | RSS after frees | RSS 1 s later |")
    print("|---|---|---|---|---|")
    for a in ALLOCS:
        out = bench(a, [], {"ALLOC_BENCH_MODE": "release"}).split()
        f = dict(zip(out[2::2], out[3::2]))
        print(f"| {a} | {f['peak_mib']} | {f['kept_mib']} | {f['after_free_mib']} | {f['after_1s_mib']} |")


if __name__ == "__main__":
    main()
