"""Speed on the real screen (Papalexi 2021, 16k cells x 299 genes, 25 perturbations).

Measured side by side in one run, each in its own process, median of --repeat runs after
one warm-up (which fills numba's compilation cache):
- perturbglm CLI, wall time including interpreter start-up, at 1 thread and all cores;
- perturbglm.de() call alone (in-process timing printed by the child);
- crispyx 0.2.2 nb_glm_test(n_jobs=1), call alone, run by --peer-python (an environment
  with crispyx installed; it is never a dependency of perturbglm).

usage: python benchmarks/bench_real.py [--peer-python /opt/peers/bin/python] [--repeat 3]
"""

import argparse
import os
import statistics
import sys
import tempfile

from _measure import run

HERE = os.path.dirname(os.path.abspath(__file__))
SCREEN = os.path.join(HERE, "..", "..", "shared", "data", "papalexi_eccite_lowmoi.h5ad")

DE_CALL = """
import sys, time
import perturbglm
t0 = time.perf_counter()
perturbglm.de(sys.argv[1], groupby="gene", control="non-targeting", threads=int(sys.argv[2]))
print(time.perf_counter() - t0)
"""

CRISPYX_CALL = """
import os, sys, time
import crispyx
t0 = time.perf_counter()
crispyx.nb_glm_test(sys.argv[1], perturbation_column="gene", control_label="non-targeting",
                    n_jobs=1, output_path=os.path.join(sys.argv[2], "cx.h5ad"), force=True,
                    verbose=False)
print(time.perf_counter() - t0)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-python", default="/opt/peers/bin/python")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def cli(threads):
            out = os.path.join(tmp, f"out{threads}")
            return [sys.executable, "-m", "perturbglm.cli", "de", SCREEN, "--groupby", "gene",
                    "--control", "non-targeting", "--threads", str(threads), "--out", out,
                    "--overwrite"]

        jobs = {
            "perturbglm CLI, 1 thread (wall incl. start-up)": (cli(1), False),
            f"perturbglm CLI, {cores} threads (wall incl. start-up)": (cli(cores), False),
            "perturbglm.de() call, 1 thread": (
                [sys.executable, "-c", DE_CALL, SCREEN, "1"], True),
            f"perturbglm.de() call, {cores} threads": (
                [sys.executable, "-c", DE_CALL, SCREEN, str(cores)], True),
        }
        if os.path.exists(args.peer_python):
            jobs["crispyx 0.2.2 nb_glm_test(n_jobs=1) call"] = (
                [args.peer_python, "-c", CRISPYX_CALL, SCREEN, tmp], True)
        for name, (cmd, inner) in jobs.items():
            run(cmd)  # warm-up: compilation caches
            walls, rss = [], []
            for _ in range(args.repeat):
                wall, peak, out = run(cmd)
                walls.append(float(out.strip().splitlines()[-1]) if inner else wall)
                rss.append(peak)
            rows.append((name, statistics.median(walls), max(rss)))
    base = dict((n, t) for n, t, _ in rows)
    cx = base.get("crispyx 0.2.2 nb_glm_test(n_jobs=1) call")
    print(f"{'job':58s} {'seconds':>8s} {'peak RSS MiB':>13s} {'crispyx / this':>15s}")
    for name, t, peak in rows:
        ratio = f"{cx / t:15.1f}" if cx else f"{'n/a':>15s}"
        print(f"{name:58s} {t:8.3f} {peak:13.0f} {ratio}")


if __name__ == "__main__":
    main()
