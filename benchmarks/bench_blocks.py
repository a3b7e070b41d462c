"""Gene-block size: fitting time and peak RSS of one screen fitted in gene blocks of at most
N non-zeros, its counts kept in memory or spilled to disk, each setting in its own process,
alternating --repeat times (medians). It shows where larger blocks stop paying for their
memory (memory.MAX_BLOCK_NNZ) and what one block saves when the counts are in memory (stage
B orders every block but the last again).

usage: python benchmarks/bench_blocks.py SCREEN.h5ad [--caps 2M,8M,32M,none]
           [--max-memory 2G] [--repeat 3]
(SCREEN: e.g. M from bench_scale.py.)
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from itertools import product

from _measure import run

CHILD = """
import sys
from dataclasses import replace
from perturbglm import cli
from perturbglm.io import memory
plan = memory.plan
memory.plan = lambda *a: replace(plan(*a), in_memory=sys.argv[1] == "memory",
                                 block_nnz=int(float(sys.argv[2])))
sys.exit(cli.main(sys.argv[3:]))
"""


def _count(text):
    return 2**62 if text == "none" else float(text.upper().replace("M", "e6"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("screen")
    ap.add_argument("--caps", default="2M,8M,32M,none")
    ap.add_argument("--max-memory", default="2G")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    settings = list(product(("memory", "spilled"), args.caps.split(",")))
    rows = {key: {"wall": [], "fit": [], "rss": [], "blocks": None} for key in settings}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        for _ in range(args.repeat):
            for mode, cap in settings:
                wall, rss, _ = run([sys.executable, "-c", CHILD, mode, str(_count(cap)), "de",
                                    args.screen, "--groupby", "perturbation", "--control",
                                    "non-targeting", "--out", out, "--max-memory",
                                    args.max_memory, "--quiet", "--overwrite"])
                with open(os.path.join(out, "run.json")) as fh:
                    info = json.load(fh)
                t = info["timings"]
                row = rows[mode, cap]
                row["wall"].append(wall)
                row["fit"].append(sum(v for k, v in t.items()
                                      if k not in ("read_metadata", "read_counts", "write",
                                                   "total", "trend")))
                row["rss"].append(rss)
                row["blocks"] = info["memory"]["gene_blocks"]
    print(f"{os.path.basename(args.screen)}, --max-memory {args.max_memory}, "
          f"medians of {args.repeat} alternating runs")
    print(f"{'counts':>8} {'block ceiling':>14} {'blocks':>7} {'fit s':>7} {'wall s':>7} "
          f"{'RSS MiB':>8}")
    for (mode, cap), row in rows.items():
        print(f"{mode:>8} {cap:>14} {row['blocks']:>7} {statistics.median(row['fit']):>7.3f} "
              f"{statistics.median(row['wall']):>7.2f} {statistics.median(row['rss']):>8.0f}")


if __name__ == "__main__":
    main()
