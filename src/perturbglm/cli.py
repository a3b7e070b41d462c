"""Command line: perturbglm de | report | simulate | demo."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

from .errors import DiskFull, InputError
from .io import memory, outdir
from .options import CHOICES, Options, defaults


def _add_de(sub):
    d = defaults()
    p = sub.add_parser("de", help="test every perturbation against the control cells")
    p.add_argument("screen", help=".h5ad file with raw counts")
    p.add_argument("--groupby", required=True, help="obs column naming each cell's perturbation")
    p.add_argument("--control", required=True,
                   help="label of the control cells in --groupby; several, separated by "
                        "commas, are pooled into one control group")
    p.add_argument("--contrast", dest="contrasts", action="append", metavar="A:B",
                   help="also compare perturbation A with perturbation B (B the reference, "
                        "log2fc = log2(A / B)), as DESeq2 on A's and B's cells; repeatable")
    p.add_argument("--covariates",
                   help="comma-separated obs columns (categorical: one-hot, first level "
                        "dropped; numeric: centred and scaled)")
    p.add_argument("--layer", help="counts in layers/NAME, or 'raw' for raw.X (default: X)")
    p.add_argument("--size-factors",
                   help=f"library, poscounts, ratio, or obs:COLUMN (default {d['size_factors']})")
    p.add_argument("--dispersion", choices=CHOICES["dispersion"],
                   help="per-comparison (DESeq2 on control + one perturbation) or global (one "
                        f"dispersion per gene from all cells); default {d['dispersion']}")
    p.add_argument("--test", choices=CHOICES["test"],
                   help="wald (DESeq2's nbinomWaldTest) or lrt (nbinomLRT against the design "
                        f"without the perturbation); default {d['test']}")
    p.add_argument("--outliers", choices=CHOICES["outliers"],
                   help="Cook's distance outliers: filter (max_cooks column; p-value NaN by "
                        "results()' rule with minReplicatesForReplace=Inf) or off (no Cook's "
                        f"distances, cooksCutoff=FALSE); default {d['outliers']}")
    p.add_argument("--shrink", choices=CHOICES["shrink"],
                   help="log2 fold-change shrinkage: none, or apeglm (lfcShrink(type="
                        f"'apeglm')) into log2fc_shrunk, lfc_se_shrunk; default {d['shrink']}")
    p.add_argument("--min-cells", type=int,
                   help=f"skip (and report) perturbations with fewer cells "
                        f"(default {d['min_cells']})")
    p.add_argument("--min-mu", type=float,
                   help=f"floor on fitted means (default {d['min_mu']:g}; 0.5 is DESeq2's "
                        "classic value)")
    p.add_argument("--fdr", type=float,
                   help=f"FDR for the summary and the independent filtering (default {d['fdr']})")
    p.add_argument("--independent-filtering", action="store_true", default=None,
                   help="padj as results()' default: genes of low baseMean left out of BH "
                        "(padj NaN) at the cutoff DESeq2 chooses per perturbation for the "
                        "most rejections at --fdr (default: BH over every tested gene, "
                        "independentFiltering=FALSE)")
    p.add_argument("--min-base-mean", type=float,
                   help="leave genes with base_mean below X out of the tests and the FDR "
                        f"(pvalue, padj NaN; default {d['min_base_mean']:g}: none)")
    p.add_argument("--min-pct", type=float,
                   help="leave genes with a non-zero count in less than X percent of the "
                        "cells of both arms out of the tests and the FDR (pvalue, padj NaN; "
                        f"default {d['min_pct']:g}: none)")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--max-memory",
                   help=f"memory budget, e.g. 2G or 500M (default {memory.DEFAULT}); sets the "
                        "read chunk and whether counts are spilled to OUT.partial on disk")
    p.add_argument("--chunk-cells", type=int,
                   help="cells read per chunk (default: set by --max-memory); a chunk holds "
                        "at least 100,000 stored values whatever it asks")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (or an interrupted run's OUT.partial)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.partial")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _options(args) -> Options:
    """The Options of `perturbglm de ARGS`: what was given, the defaults for the rest."""
    given = {name: getattr(args, name) for name in defaults()
             if getattr(args, name, None) is not None}
    if "covariates" in given:
        given["covariates"] = [c for c in given["covariates"].split(",") if c]
    return Options(groupby=args.groupby, control=args.control, **given)


def _cmd_de(args) -> int:
    from . import pipeline
    from .progress import Progress

    opts = _options(args)
    bar = None if args.quiet else Progress()
    try:
        written = pipeline.run(args.screen, opts, args.out, overwrite=args.overwrite,
                               resume=args.resume, progress=bar)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        if outdir.has_workspace(args.out):
            print(f"perturbglm: interrupted; finished steps are kept in "
                  f"{outdir.partial_path(args.out)}: {_rerun(args)} to continue",
                  file=sys.stderr)
        else:
            print("perturbglm: interrupted; nothing was written", file=sys.stderr)
        return 130
    if bar:
        bar.close()
    _report(written.summary, written.run_info, args.out)
    return 0


def _rerun(args) -> str:
    """How to continue `perturbglm de ARGS` from its workspace: --resume unless given."""
    return "rerun the same command" if args.resume else "rerun with --resume"


def _report(rows: list[dict], info: dict, out: str) -> None:
    n_contrasts = len(info.get("contrasts", []))
    compared = (f"{len(rows) - n_contrasts} perturbations and {n_contrasts} contrast(s)"
                if n_contrasts else f"{len(rows)} perturbations")
    print(f"{compared} x {info['n_genes']:,} genes; "
          f"{sum(r['de_genes'] for r in rows)} DE pairs at FDR {info['parameters']['fdr']}; "
          f"{info['timings']['total']:.2f} s")
    pooled = info.get("control_labels", [])
    if len(pooled) > 1 and rows:
        print(f"control: {len(pooled)} labels pooled ({', '.join(pooled)}), "
              f"{rows[0]['control_cells']:,} cells")
    if info.get("skipped_groups"):
        sk = info["skipped_groups"]
        print(f"skipped {len(sk)} perturbation(s) below --min-cells: "
              + ", ".join(f"{k} ({v} cells)" for k, v in list(sk.items())[:10])
              + (" ..." if len(sk) > 10 else ""))
    if info.get("skipped_groups_without_counts"):
        sk = info["skipped_groups_without_counts"]
        print(f"skipped {len(sk)} perturbation(s) whose cells have no counts: "
              + ", ".join(sk[:10]) + (" ..." if len(sk) > 10 else ""))
    if info.get("renamed_genes"):
        ren = info["renamed_genes"]
        print(f"made {len(ren)} repeated gene name(s) unique: "
              + ", ".join(f"{o} -> {n}" for n, o in list(ren.items())[:5])
              + (" ..." if len(ren) > 5 else "") + " (all in run.json)")
    if info.get("independent_filtering"):
        per = info["independent_filtering"]["perturbations"].values()
        print(f"independent filtering left {sum(r['filtered'] for r in per):,} p-values of "
              f"{sum(r['filtered'] > 0 for r in per)} perturbation(s) out of BH (cutoffs in "
              "run.json)")
    if info.get("cells_without_counts"):
        print(f"left out {info['cells_without_counts']} cells with no counts")
    if info.get("cells_without_label"):
        print(f"left out {info['cells_without_label']} cells with no --groupby label")
    print(f"wrote {out}/results.parquet, summary.csv, run.json")


def _add_report(sub):
    p = sub.add_parser("report", help="figures and an HTML page of a results folder "
                                      "(needs matplotlib: pip install 'perturbglm[plot]')")
    p.add_argument("results", help="results folder of `perturbglm de` (its --out)")
    p.add_argument("--perturbations",
                   help="comma-separated perturbations to plot besides the top ones")
    p.add_argument("--out", help="report folder (default: RESULTS/report)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing report folder (only a folder perturbglm wrote)")


def _cmd_report(args) -> int:
    from . import report
    from .result import Result

    report.need_matplotlib()
    report.check_results_folder(args.results)
    named = [p for p in (args.perturbations or "").split(",") if p]
    out = Result.read(args.results).report(args.out, named, args.overwrite)
    print(f"wrote {out}/index.html and its figures")
    return 0


def _add_simulate(sub):
    p = sub.add_parser("simulate", help="write a simulated screen and its truth table")
    p.add_argument("out", help="output .h5ad path")
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=1_000)
    p.add_argument("--perturbations", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def _cmd_simulate(args) -> int:
    from . import simulate

    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"'{args.out}' exists; pass --overwrite to replace it")
    if min(args.cells, args.genes, args.perturbations) < 1:
        raise InputError("--cells, --genes and --perturbations must be at least 1")
    if args.perturbations > args.genes:
        raise InputError("--perturbations cannot exceed --genes (each target is a gene)")
    t0 = time.perf_counter()
    truth = simulate.write(args.out, args.cells, args.genes, args.perturbations, args.seed)
    print(f"wrote {args.out} ({args.cells:,} cells x {args.genes:,} genes, "
          f"{args.perturbations} perturbations) and {truth} in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_demo(args) -> int:
    import numpy as np
    import pandas as pd

    from . import api, simulate

    with tempfile.TemporaryDirectory(prefix="perturbglm-demo-") as tmp:
        path = os.path.join(tmp, "demo.h5ad")
        print("simulating a screen: 8,000 cells x 500 genes, 12 perturbations ...")
        simulate.write(path, 8_000, 500, 12, seed=1)
        truth = pd.read_parquet(simulate.truth_path_for(path))
        print("perturbglm de demo.h5ad --groupby perturbation --control non-targeting "
              "--size-factors obs:size_factor")
        res = api.de(path, groupby="perturbation", control=simulate.CONTROL,
                     size_factors="obs:size_factor")
        out = os.path.join(tmp, "out")
        res.write(out)
        _report(res.summary.to_dict("records"), res.run_info, "<temporary folder>")
    merged = res.table.merge(truth, on=["perturbation", "gene"])
    called = merged["padj"] < 0.1
    real = merged["true_log2fc"] != 0
    fdp = (called & ~real).sum() / max(called.sum(), 1)
    power = (called & real).sum() / max(real.sum(), 1)
    print()
    print(res.summary[["perturbation", "cells", "genes_tested", "de_genes", "target_log2fc",
                       "target_padj"]].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print()
    ok = merged[real & np.isfinite(merged["log2fc"])]
    corr = np.corrcoef(ok["log2fc"], ok["true_log2fc"])[0, 1] if len(ok) > 2 else float("nan")
    print(f"against the simulated truth: {called.sum()} calls at FDR 0.1, realised FDR "
          f"{fdp:.3f}, power {power:.2f}, correlation of log2fc with truth {corr:.3f}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, like the errors."""
    print(f"perturbglm: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="perturbglm",
        description="DESeq2-grade negative binomial DE for every perturbation of a screen.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_de(sub)
    _add_report(sub)
    _add_simulate(sub)
    sub.add_parser("demo", help="simulate a small screen, analyse it and print a summary")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return {"de": _cmd_de, "report": _cmd_report, "simulate": _cmd_simulate,
                    "demo": _cmd_demo}[args.command](args)
    except InputError as exc:
        print(f"perturbglm: error: {exc}", file=sys.stderr)
        return 2
    except DiskFull as exc:
        print(f"perturbglm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("perturbglm: interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as exc:      # permissions, a file vanishing mid-run
        then = "and rerun"
        if args.command == "de" and outdir.has_workspace(args.out):
            then = f"then {_rerun(args)} to continue from {outdir.partial_path(args.out)}"
        print(f"perturbglm: error: {exc}; fix the cause {then}", file=sys.stderr)
        return 1


def entry() -> None:
    """The console command: `main`, then exit without the interpreter's teardown. Unloading
    pandas, numba's thread pool and a run's arrays takes 0.2-0.4 s, a tenth of a 100k-cell
    analysis; by then every output is written, closed and renamed into place, and only the
    standard streams remain to flush."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
