"""Peak RSS against --max-memory: each budget of a sweep in its own process on each screen,
with the plan's verdict (refused, counts in memory or spilled). Run it once before
measuring so that numba's cache holds the kernels (a first run compiles them, which the
plan counts), or pass --cold to report that first run.

usage: python benchmarks/bench_memory.py SCREEN.h5ad [SCREEN.h5ad ...]
           [--budgets 150M,220M,300M,400M,500M,700M,1G] [--chunk-cells N]
(SCREEN: e.g. `perturbglm simulate m300k.h5ad --cells 300000 --genes 1000
--perturbations 100`.)
"""

import argparse
import json
import os
import sys
import tempfile

from _measure import run

from perturbglm.io.memory import parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("screens", nargs="+")
    ap.add_argument("--budgets", default="150M,220M,300M,400M,500M,700M,1G")
    ap.add_argument("--chunk-cells", default=None)
    args = ap.parse_args()
    print("| screen | budget | plan | peak RSS MiB | peak / budget | wall s |")
    print("|---|---:|---|---:|---:|---:|")
    for screen in args.screens:
        for budget in args.budgets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "out")
                cmd = [sys.executable, "-m", "perturbglm", "de", screen, "--groupby",
                       "perturbation", "--control", "non-targeting", "--out", out,
                       "--max-memory", budget, "--quiet"]
                if args.chunk_cells:
                    cmd += ["--chunk-cells", args.chunk_cells]
                try:
                    wall, rss, _ = run(cmd)
                except RuntimeError as exc:
                    line = str(exc).strip().splitlines()[-1]
                    print(f"| {os.path.basename(screen)} | {budget} | refused: {line} | | | |")
                    continue
                with open(os.path.join(out, "run.json")) as fh:
                    mem = json.load(fh)["memory"]
            plan = "in memory" if mem["counts_in_memory"] else "spilled"
            plan += f", {mem['gene_blocks']} blocks"
            print(f"| {os.path.basename(screen)} | {budget} | {plan} | {rss:,.0f} | "
                  f"{rss * 2**20 / parse(budget):.2f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
