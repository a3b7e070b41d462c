"""What contrasts cost on the real screen (Papalexi 2021, 16k cells x 299 genes, 25
perturbations): perturbglm.de() without and with two contrasts (STAT1:JAK2, IRF1:IFNGR1),
timed side by side in one process (after a warm-up of each, which fills numba's compilation
cache), alternating, median of --repeat pairs; also the contrasts' own steps as run.json
times them (timings["contrasts"]["total"]).

usage: python benchmarks/bench_contrasts.py [--repeat 5] [--outliers filter]
"""

import argparse
import os
import statistics
import time
import warnings

import perturbglm

HERE = os.path.dirname(os.path.abspath(__file__))
SCREEN = os.path.join(HERE, "..", "..", "shared", "data", "papalexi_eccite_lowmoi.h5ad")
CONTRASTS = [("STAT1", "JAK2"), ("IRF1", "IFNGR1")]


def timed(contrasts, outliers):
    t0 = time.perf_counter()
    res = perturbglm.de(SCREEN, groupby="gene", control="non-targeting",
                        size_factors="obs:size_factor", contrasts=contrasts, outliers=outliers)
    wall = time.perf_counter() - t0
    own = res.run_info["timings"].get("contrasts", {}).get("total", 0.0)
    return wall, own


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--outliers", default="filter")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    timed([], args.outliers)
    timed(CONTRASTS, args.outliers)
    without, with_, own = [], [], []
    for _ in range(args.repeat):
        without.append(timed([], args.outliers)[0])
        wall, steps = timed(CONTRASTS, args.outliers)
        with_.append(wall)
        own.append(steps)
    a, b = statistics.median(without), statistics.median(with_)
    print(f"outliers={args.outliers}, {args.repeat} pairs")
    print(f"without contrasts: median {a:.2f} s ({min(without):.2f}-{max(without):.2f})")
    print(f"with 2 contrasts:  median {b:.2f} s ({min(with_):.2f}-{max(with_):.2f}), "
          f"x{b / a:.2f}; the contrasts' steps {statistics.median(own):.2f} s")


if __name__ == "__main__":
    main()
