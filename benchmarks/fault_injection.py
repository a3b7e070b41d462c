"""Fault injection: spilled runs killed with SIGKILL at random points, each resumed (and
possibly killed again) until it completes, then compared bit for bit with an uninterrupted
run.

Kill points are deterministic (tests/killpoints.py): each attempt draws a target function
from TARGETS and the call at which to die (before or after it) at random; an attempt that
ends before reaching its kill point completes the run. The child spills its counts, fits
one 64-gene slab per block and checkpoints the read pass after every chunk, so every kind
of step is on disk when the kill lands.

    python benchmarks/fault_injection.py --kills 50 [--cells 3000 --genes 300 --seed 0]

Prints each attempt, then the number of kills, of completed runs whose table matched and
any failure (a resume that exited with an error, or a table that differs).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile

import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from killpoints import killed, run_killed  # noqa: E402

from perturbglm import simulate  # noqa: E402

SETUP = ("from perturbglm.io import memory\nfrom perturbglm.io import scan\n"
         "memory.RECORD_BYTES, memory.BLOCK_BYTES = 10**9, 10**6\n"
         "memory.MIN_CHUNK_NNZ, memory.MIN_CHUNK_PER_GENE = 1, 0\n"
         "scan.CHECKPOINT_SECONDS = 0.0\n")
# (target, largest call number drawn): the read pass, checkpoints and every saved step,
# the file system calls that make them atomic, the stages, the output and its swap into
# place, and the removal of the workspace.
TARGETS = [
    ("perturbglm.io.summaries:Store.add", 8),
    ("perturbglm.io.summaries:Store.sync", 9),
    ("perturbglm.io.workspace:Workspace.save_arrays", 30),
    ("perturbglm.io.workspace:Workspace.save_json", 3),
    ("perturbglm.io.workspace:_write_npy", 150),
    ("os:replace", 30),
    ("os:fsync", 200),
    ("shutil:rmtree", 20),
    ("perturbglm.steps.initial:fit_initial", 5),
    ("perturbglm.steps.dispersion:final_dispersions", 5),
    ("perturbglm.steps.dispersion:trend", 1),
    ("perturbglm.steps.pvalues:pvalues", 1),
    ("perturbglm.io.output:write", 1),
    ("perturbglm.io.outdir:_write_marker", 1),
    ("perturbglm.io.outdir:_exchange", 1),
    ("perturbglm.io.workspace:Workspace.discard", 1),
    ("os:rename", 3),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--cells", type=int, default=3_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="perturbglm-faults-")
    try:
        screen = os.path.join(tmp, "screen.h5ad")
        simulate.write(screen, args.cells, args.genes, 8, seed=args.seed)
        out = os.path.join(tmp, "out")
        base = ["de", screen, "--groupby", "perturbation", "--control", simulate.CONTROL,
                "--quiet", "--chunk-cells", str(max(1, args.cells // 8))]
        ref = run_killed(base + ["--out", os.path.join(tmp, "ref")], TARGETS[0][0], 10**9,
                         setup=SETUP)
        assert ref.returncode == 0, ref.stderr
        reference = pd.read_parquet(os.path.join(tmp, "ref", "results.parquet"))
        kills = runs = matched = 0
        failures = []
        while kills < args.kills:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + ".partial", ignore_errors=True)
            runs += 1
            resume = False
            while True:
                target, most = rng.choice(TARGETS)
                nth, when = rng.randint(1, most), rng.choice(["before", "after"])
                proc = run_killed(base + ["--out", out] + ["--resume"] * resume, target, nth,
                                  when, SETUP)
                if killed(proc):
                    kills += 1
                    print(f"run {runs}: killed {when} call {nth} of {target}", flush=True)
                    resume = True
                    continue
                if proc.returncode != 0:
                    failures.append(f"run {runs}: exit {proc.returncode}: "
                                    f"{proc.stderr.strip()[-300:]}")
                else:
                    table = pd.read_parquet(os.path.join(out, "results.parquet"))
                    if table.equals(reference):
                        matched += 1
                    else:
                        failures.append(f"run {runs}: the table differs")
                print(f"run {runs}: completed ({'resumed' if resume else 'not killed'})",
                      flush=True)
                break
        print(f"{kills} kills in {runs} runs; {matched} of {runs} completed runs matched the "
              f"uninterrupted table bit for bit; {len(failures)} failures")
        for line in failures:
            print("  " + line)
        return 1 if failures else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
