#!/usr/bin/env python3
"""Times workloads process by process, the allocators alternating, outside criterion.

    python3 benches/alternate.py --rounds 11 realistic/btreemap_10k bulk_100k/fifo
    python3 benches/alternate.py --stats-overhead --rounds 11 bulk_100k/fifo

Every run is one process of `alloc_same` (the workloads' code is the same machine code for every
allocator) in mode `count`: it runs one workload `--iters` times and prints the median time of an
iteration. Each round runs every allocator once per workload, in an order rotated between rounds,
so that a slow spell of the machine falls on all of them alike. A ratio is the other allocator's
time / perfalloc's time in the same round; the table gives the median over rounds and the range of
the middle half of them (above 1.00 perfalloc is faster). With `--stats-overhead` the two
allocators are perfalloc with and without the `stats` feature (a second build, in target/nostats).
With `--baseline REV` they are perfalloc as it is and perfalloc at git revision REV (exported with
`git archive` to a temporary directory, built in target/baseline): a regression check for a change.

    python3 benches/alternate.py --baseline HEAD~1 --rounds 11 realistic/btreemap_10k
"""
import argparse, os, pathlib, shutil, statistics, subprocess, tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOCS = ["perfalloc", "system", "mimalloc", "jemalloc"]


def build(features, target_dir, src=ROOT):
    cmd = ["cargo", "bench", "-q", "--bench", "alloc_same", "--no-run", "--message-format=json"]
    cmd += features + ["--target-dir", str(target_dir)]
    out = subprocess.run(cmd, cwd=src, check=True, capture_output=True, text=True).stdout
    exes = [line for line in out.splitlines() if '"executable":"' in line and "alloc_same" in line]
    return exes[-1].split('"executable":"')[1].split('"')[0]


def run(binary, alloc, workload, iters):
    env = {**os.environ, "ALLOC_SAME": alloc, "ALLOC_BENCH_MODE": "count",
           "ALLOC_BENCH_WORKLOAD": workload, "ALLOC_BENCH_ITERS": str(iters)}
    out = subprocess.run([binary], env=env, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def quartiles(xs):
    xs = sorted(xs)
    return xs[len(xs) // 4], xs[(3 * len(xs)) // 4]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workloads", nargs="+")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--iters", type=int, default=51, help="iterations in each process")
    ap.add_argument("--stats-overhead", action="store_true")
    ap.add_argument("--baseline", metavar="REV", help="compare with perfalloc at this git revision")
    args = ap.parse_args()
    target = ROOT / "target"
    if args.baseline:
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        src = pathlib.Path(tempfile.mkdtemp(prefix="perfalloc-baseline-"))
        try:
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            configs = [("perfalloc", build([], target), "perfalloc"),
                       (f"perfalloc@{args.baseline}", build([], target / "baseline", src),
                        "perfalloc")]
        finally:
            shutil.rmtree(src)  # the binary, if built, is in target/baseline
    elif args.stats_overhead:
        configs = [("perfalloc", build([], target), "perfalloc"),
                   ("perfalloc-nostats", build(["--no-default-features"], target / "nostats"),
                    "perfalloc")]
    else:
        binary = build([], target)
        configs = [(a, binary, a) for a in ALLOCS]
    times = {(w, c[0]): [] for w in args.workloads for c in configs}
    for r in range(args.rounds):
        k = r % len(configs)
        for w in args.workloads:
            for label, binary, alloc in configs[k:] + configs[:k]:
                times[(w, label)].append(run(binary, alloc, w, args.iters))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    base = configs[0][0]
    print(f"\n| workload | {base} | " + " | ".join(f"vs {c[0]}" for c in configs[1:])
          + f" |  ({args.rounds} rounds of {args.iters} iterations; median ratio [middle half])")
    print("|---|---|" + "---|" * (len(configs) - 1))
    for w in args.workloads:
        mine = times[(w, base)]
        cells = []
        for label, _, _ in configs[1:]:
            ratios = [o / m for o, m in zip(times[(w, label)], mine)]
            lo, hi = quartiles(ratios)
            cells.append(f"{statistics.median(ratios):.2f}x [{lo:.2f}-{hi:.2f}]")
        print(f"| {w} | {statistics.median(mine) / 1e3:.1f} us | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
