"""Scale: simulated screens S, M, L (issue 3), each measured side by side in one run.

For every screen, each job in its own process (wall time including start-up, peak RSS):
- the I/O floor: one pass over the file with h5py, summing counts per (group, gene);
- perturbglm de (CLI, all cores, --max-memory as given), with its own split of the time
  into reading and fitting (run.json);
  the two alternate --repeat times (these machines are noisy: the floor alone varies by
  30% from minute to minute) and the table gives their medians, the ratio of the medians
  and the range of the per-pair ratios;
- crispyx 0.2.2 nb_glm_test(n_jobs=all cores) on S and M, run by --peer-python (an
  environment with crispyx installed; it is never a dependency of perturbglm);
- with --baseline SRC, perturbglm from another source tree (e.g. a `git worktree` of the
  last release's commit, its src/ folder) in the same alternation, for before/after
  ratios measured side by side.

Screens are generated once into --data (the generation time is printed): shuffled cell
order, as most real files are; `--grouped` adds a copy of M sorted by perturbation.

usage: python benchmarks/bench_scale.py [--sizes S,M,L] [--data /tmp/perturbglm-bench]
           [--max-memory 2G] [--grouped] [--peer-python /opt/peers/bin/python]
           [--peer-sizes S,M] [--repeat 3] [--baseline OLD_CHECKOUT/src]
           [--variants 'NAME=OPTIONS;...']
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from _measure import run

SIZES = {  # cells, genes, perturbations
    "S": (20_000, 1_000, 50),
    "M": (100_000, 2_000, 200),
    "L": (1_000_000, 8_000, 5_000),
}

FLOOR = """
import sys
import h5py, numpy as np, scipy.sparse as sp
from anndata.io import read_elem
with h5py.File(sys.argv[1], "r") as f:
    group = read_elem(f["obs"]["perturbation"]).codes.astype(np.int64)
    X = f["X"]
    indptr = X["indptr"][:]
    n, n_genes = len(indptr) - 1, int(X.attrs["shape"][1])
    sums = np.zeros((group.max() + 1, n_genes))
    step = 20_000
    for s in range(0, n, step):
        e = min(s + step, n)
        lo, hi = indptr[s], indptr[e]
        m = sp.csr_matrix((X["data"][lo:hi], X["indices"][lo:hi], indptr[s:e + 1] - lo),
                          shape=(e - s, n_genes))
        ind = sp.csr_matrix((np.ones(e - s), (group[s:e], np.arange(e - s))),
                            shape=(sums.shape[0], e - s))
        sums += (ind @ m).toarray()
print(sums.sum())
"""

CRISPYX = """
import sys, os
import crispyx
crispyx.nb_glm_test(sys.argv[1], perturbation_column="perturbation",
                    control_label="non-targeting", n_jobs=int(sys.argv[3]),
                    output_path=os.path.join(sys.argv[2], "cx.h5ad"), force=True,
                    verbose=False)
"""


def _fit_seconds(timings: dict) -> float:
    """Seconds in the statistics: every timing but reading, writing and the total (the
    steps' names differ between versions)."""
    return sum(v for k, v in timings.items()
               if k not in ("read_metadata", "read_counts", "write", "total"))


def ensure(path, size, grouped=False):
    """Generate the screen if missing; returns the generation wall time (or None)."""
    if os.path.exists(path):
        return None
    cells, genes, perts = SIZES[size]
    code = ("import sys; from perturbglm import simulate; "
            f"simulate.write(sys.argv[1], {cells}, {genes}, {perts}, seed=7, "
            f"grouped={grouped})")
    wall, _, _ = run([sys.executable, "-c", code, path])
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="S,M")
    ap.add_argument("--data", default="/tmp/perturbglm-bench")
    ap.add_argument("--max-memory", default="2G")
    ap.add_argument("--peer-python", default="/opt/peers/bin/python")
    ap.add_argument("--peer-sizes", default="S,M", help="screens crispyx also runs on")
    ap.add_argument("--grouped", action="store_true", help="also run M with sorted cells")
    ap.add_argument("--repeat", type=int, default=3, help="alternating floor/ours runs")
    ap.add_argument("--baseline", default=None,
                    help="src/ folder of another perturbglm version to run alternately")
    ap.add_argument("--variants", default="",
                    help="NAME=OPTIONS;... runs of this version with extra options (e.g. "
                         "'apeglm=--shrink apeglm;off=--outliers off'), in the same "
                         "alternation; reported against the default run and the baseline")
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    cores = os.cpu_count()
    screens = [(s, os.path.join(args.data, f"{s}.h5ad"), False)
               for s in args.sizes.split(",")]
    if args.grouped:
        screens.append(("M grouped", os.path.join(args.data, "M_grouped.h5ad"), True))
    rows = []
    for name, path, grouped in screens:
        size = name.split()[0]
        gen = ensure(path, size, grouped)
        if gen is not None:
            print(f"generated {name} ({os.path.getsize(path) / 2**30:.2f} GiB) in {gen:.0f} s",
                  flush=True)
        run([sys.executable, "-c", FLOOR, path])     # warm the page cache alike for all
        floors, walls, rss, timings, base_walls = [], [], 0.0, [], []
        variants = dict(v.split("=", 1) for v in args.variants.split(";") if v)
        variant_walls = {v: [] for v in variants}
        with tempfile.TemporaryDirectory(dir=args.data) as tmp:
            out = os.path.join(tmp, "out")
            de = [sys.executable, "-m", "perturbglm", "de", path, "--groupby", "perturbation",
                  "--control", "non-targeting", "--out", out, "--max-memory",
                  args.max_memory, "--quiet", "--overwrite"]
            for _ in range(args.repeat):
                floors.append(run([sys.executable, "-c", FLOOR, path])[0])
                if args.baseline:
                    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline))
                    base_walls.append(run(de, env)[0])
                wall, peak, _ = run(de)
                walls.append(wall)
                for v, extra in variants.items():
                    variant_walls[v].append(run(de + extra.split())[0])
                rss = max(rss, peak)
                with open(os.path.join(out, "run.json")) as fh:
                    timings.append(json.load(fh)["timings"])
            cx = None
            if (not grouped and size in args.peer_sizes.split(",")
                    and os.path.exists(args.peer_python)):
                cx, cx_rss, _ = run([args.peer_python, "-c", CRISPYX, path, tmp, str(cores)])
        floor, wall = statistics.median(floors), statistics.median(walls)
        ratios = [w / f for w, f in zip(walls, floors, strict=True)]
        t = timings[walls.index(sorted(walls)[len(walls) // 2])]
        read = t["read_metadata"] + t["read_counts"]
        fit = _fit_seconds(t)
        rows.append((name, os.path.getsize(path) / 2**30, floor, wall, min(ratios),
                     max(ratios), rss, read, fit, t["write"], cx, cx_rss if cx else None))
        print(f"{name}: floor {floor:.2f} s, perturbglm {wall:.2f} s ({rss:.0f} MiB), "
              f"ratios {', '.join(f'{r:.2f}' for r in ratios)}"
              + (f", crispyx {cx:.1f} s" if cx else ""), flush=True)
        if base_walls:
            base = statistics.median(base_walls)
            print(f"{name}: baseline {base:.2f} s, this version / baseline "
                  f"{wall / base:.3f} (pairs: "
                  + ", ".join(f"{w / b:.3f}" for w, b in zip(walls, base_walls, strict=True))
                  + ")", flush=True)
        for v, vw in variant_walls.items():
            med = statistics.median(vw)
            vs_base = (f", / baseline {med / statistics.median(base_walls):.3f}"
                       if base_walls else "")
            print(f"{name}: {v} ({variants[v]}) {med:.2f} s, / default {med / wall:.3f} "
                  "(pairs: " + ", ".join(f"{a / b:.3f}" for a, b in zip(vw, walls,
                                                                       strict=True))
                  + f"){vs_base}", flush=True)
    print()
    print(f"max-memory {args.max_memory}, {cores} cores, medians of {args.repeat} alternating "
          "runs; wall seconds incl. start-up; RSS in MiB (largest)")
    print(f"{'screen':10s} {'GiB':>6s} {'floor s':>8s} {'ours s':>8s} {'ours/floor':>10s} "
          f"{'range':>11s} {'RSS':>6s} {'read s':>7s} {'fit s':>7s} {'write s':>8s} "
          f"{'crispyx s':>10s} {'cx RSS':>7s} {'cx/ours':>8s}")
    for name, gib, floor, wall, r_lo, r_hi, rss, read, fit, write, cx, cx_rss in rows:
        cxs = (f"{cx:10.1f} {cx_rss:7.0f} {cx / wall:8.1f}" if cx
               else f"{'':>10s} {'':>7s} {'':>8s}")
        print(f"{name:10s} {gib:6.2f} {floor:8.2f} {wall:8.2f} {wall / floor:10.2f} "
              f"{r_lo:5.2f}-{r_hi:<5.2f} {rss:6.0f} {read:7.2f} {fit:7.2f} {write:8.2f} {cxs}")


if __name__ == "__main__":
    main()
