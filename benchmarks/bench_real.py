"""Speed on the real screen (Papalexi 2021, 16k cells x 299 genes, 25 perturbations).

Measured side by side in one run, each in its own process, median of --repeat runs after
one warm-up (which fills numba's compilation cache):
- perturbglm CLI, wall time including interpreter start-up, at 1 thread and all cores;
- perturbglm.de() call alone, timed inside the child: its first call in a fresh process
  (which pays numba's ~0.35 s dispatcher start-up and loads the cached kernels) and a
  repeat call in the same process;
- crispyx 0.2.2 nb_glm_test(n_jobs=1), timed the same two ways, run by --peer-python (an
  environment with crispyx installed; it is never a dependency of perturbglm).

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
for _ in range(2):
    t0 = time.perf_counter()
    perturbglm.de(sys.argv[1], groupby="gene", control="non-targeting", threads=int(sys.argv[2]))
    print(time.perf_counter() - t0)
"""

CRISPYX_CALL = """
import os, sys, time
import crispyx
for i in range(2):
    t0 = time.perf_counter()
    crispyx.nb_glm_test(sys.argv[1], perturbation_column="gene", control_label="non-targeting",
                        n_jobs=1, output_path=os.path.join(sys.argv[2], f"cx{i}.h5ad"),
                        force=True, verbose=False)
    print(time.perf_counter() - t0)
"""


CRISPYX = "crispyx 0.2.2 nb_glm_test(n_jobs=1)"


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
            "perturbglm CLI, 1 thread (wall incl. start-up)": cli(1),
            f"perturbglm CLI, {cores} threads (wall incl. start-up)": cli(cores),
            "perturbglm.de(), 1 thread": [sys.executable, "-c", DE_CALL, SCREEN, "1"],
            f"perturbglm.de(), {cores} threads": [sys.executable, "-c", DE_CALL, SCREEN,
                                                  str(cores)],
        }
        if os.path.exists(args.peer_python):
            jobs[CRISPYX] = [args.peer_python, "-c", CRISPYX_CALL, SCREEN, tmp]
        for name, cmd in jobs.items():
            run(cmd)  # warm-up: compilation caches
            walls, firsts, repeats, rss = [], [], [], []
            for _ in range(args.repeat):
                wall, peak, out = run(cmd)
                walls.append(wall)
                rss.append(peak)
                if "CLI" not in name:
                    first, repeat = (float(x) for x in out.split()[-2:])
                    firsts.append(first)
                    repeats.append(repeat)
            if "CLI" in name:
                rows.append((name, statistics.median(walls), float("nan"), max(rss)))
            else:
                rows.append((name + " call", statistics.median(firsts),
                             statistics.median(repeats), max(rss)))
    cx = {n: (t, r) for n, t, r, _ in rows}.get(CRISPYX + " call")
    print(f"{'job':58s} {'first s':>8s} {'repeat s':>9s} {'peak RSS MiB':>13s} "
          f"{'crispyx/this first':>19s} {'crispyx/this repeat':>20s}")
    for name, t, rep, peak in rows:
        r1 = f"{cx[0] / t:19.1f}" if cx else f"{'n/a':>19s}"
        r2 = f"{cx[1] / rep:20.1f}" if cx and rep == rep else f"{'':>20s}"
        print(f"{name:58s} {t:8.3f} {rep:9.3f} {peak:13.0f} {r1} {r2}")


if __name__ == "__main__":
    main()
