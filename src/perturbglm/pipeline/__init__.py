"""The analysis from file to table, in bounded memory.

1. Metadata: obs columns used, the design, a memory plan (io/memory.py).
2. One pass over the counts (io/scan.py), filing non-zeros by gene slab, in memory or
   spilled to OUT.partial; a second pass only for poscounts and ratio size factors.
3. The statistics: the list of steps for the options (steps/), executed by the local runner
   (runner.py) over gene blocks and chunks of comparisons.
4. The table, assembled a chunk of comparisons at a time from the steps' outputs and
   streamed to parquet (io/output.py).

Each perturbation is compared with the control cells as DESeq2 would compare the two groups
alone (its own trend and prior), or, with dispersion="global", every comparison shares one
dispersion per gene estimated from all cells. Every finished step is saved in the workspace,
so --resume continues an interrupted run.
"""

from __future__ import annotations

import errno
import os
import time
import warnings
from dataclasses import asdict

import numba
import numpy as np

from .. import design as design_mod
from .. import size_factors as sf_mod
from .. import steps as steps_mod
from ..errors import DiskFull, InputError
from ..io import memory, outdir, output, scan, summaries, workspace
from ..io.reader import (
    length,
    locate_counts,
    make_unique,
    obs_columns,
    open_h5ad,
    read_obs,
    read_var_names,
    stored_dtypes,
    stored_nnz,
)
from ..io.workspace import Workspace, fingerprint
from ..options import Options
from ..steps.context import context
from .runner import Blocks, Runner

__all__ = ["Options", "run"]

NUMERIC_COVARIATE_WARNING = 5_000   # control atoms above which a run warns (see run)


def run(path: str, opts: Options, out_dir: str, overwrite: bool = False,
        resume: bool = False, progress=None) -> output.Written:
    """Analyse the .h5ad at `path` and write OUT_DIR/results.parquet, summary.csv, run.json,
    holding the lock on OUT_DIR (one run at a time). A full disk (ENOSPC, EDQUOT) raises
    DiskFull, OUT_DIR.partial kept for --resume."""
    opts.check()
    budget = memory.parse(opts.max_memory)
    outdir.check_paths(out_dir, path)
    disk = {"folder": outdir.partial_path(out_dir), "need": None}
    with outdir.lock(out_dir):
        # with --resume an existing OUT_DIR may be this run's own results (a run killed
        # after they were swapped into place): _analyse checks that against the fingerprint
        outdir.check_destination(out_dir, overwrite or resume)
        try:
            return _analyse(path, opts, budget, out_dir, overwrite, resume, progress, disk)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            need = ("" if disk["need"] is None else
                    f"; this run needs about {_megabytes(disk['need'])} free there (8 bytes "
                    "per non-zero count when the counts are spilled, plus ~64 bytes per "
                    "perturbation x gene)")
            raise DiskFull(f"the disk holding '{disk['folder']}' is full ({exc.strerror})"
                           f"{need}; free space and "
                           f"{'rerun the same command' if resume else 'rerun with --resume'} "
                           "to continue from the steps already saved") from exc


def _megabytes(n: int) -> str:
    return f"{max(1, round(n / 1e6)):,} MB"


def _disk_need(plan: memory.Plan, nnz: int, n_comps: int, n_genes: int) -> int:
    """Bytes a run writes to its workspace and output, as the README states it: the spilled
    counts (8 bytes per non-zero) and the per-block results (~64 bytes per pair)."""
    return (0 if plan.in_memory else nnz * summaries.RECORD.itemsize) + 64 * n_comps * n_genes


def _analyse(path: str, opts: Options, budget: int, out_dir: str, overwrite: bool,
             resume: bool, progress, disk: dict) -> output.Written:
    """The analysis run() describes, under its lock. Sets disk["need"] (bytes) once the
    memory plan is known and disk["folder"] to the folder being written, for run()'s message
    on a full disk."""
    timings = {}
    t0 = time.perf_counter()
    numba.set_num_threads(min(opts.threads or numba.config.NUMBA_NUM_THREADS,
                              numba.config.NUMBA_NUM_THREADS))
    with open_h5ad(path) as f:
        src = locate_counts(f, opts.layer)
        genes, renamed = make_unique(read_var_names(f, src))
        kind, column = sf_mod.parse(opts.size_factors)
        columns = obs_columns(f)
        obs = read_obs(f, [opts.groupby, *opts.covariates] + ([column] if column else []))
        n_obs = length(obs[opts.groupby]) if opts.groupby in obs else src.n_cells
        if n_obs != src.n_cells:
            raise InputError(f"obs has {n_obs} cells but the matrix has {src.n_cells}")
        if src.n_cells == 0 or src.n_genes == 0:
            raise InputError(f"the matrix is empty ({src.n_cells} cells x {src.n_genes} genes)")
        des = design_mod.build(obs, columns, opts.groupby, opts.control_labels(),
                               opts.covariates, opts.min_cells)
        obs_sf = sf_mod.from_obs(obs, columns, column) if kind == "obs" else None
        obs_used = list(obs)
        del obs
        n_comps = len(des.perturbations)
        nnz = stored_nnz(f, src)
        print_ = fingerprint(f, src.key, obs_used, opts.fingerprint())
        if resume and not overwrite and os.path.lexists(out_dir):
            if outdir.results_run(out_dir) != workspace.digest(print_):
                raise InputError(f"output folder '{out_dir}' exists and holds the results of "
                                 "another run (other input or options); pass --overwrite to "
                                 "replace it or choose another --out")
            if not outdir.has_workspace(out_dir):
                warnings.warn(f"'{out_dir}' already holds this run's results; nothing to "
                              "resume", stacklevel=2)
                return output.read_written(out_dir)
        ws = Workspace(outdir.partial_path(out_dir), print_, resume, overwrite)
        try:
            if ws.has("plan.json"):
                plan = memory.Plan(**ws.load_json("plan"))
            else:
                ws.clear()   # anything saved under a lost plan (e.g. trend chunks) is void
                statistics = [name for name, on in (("cooks", opts.outliers == "filter"),
                                                     ("lrt", opts.test == "lrt"),
                                                     ("apeglm", opts.shrink == "apeglm")) if on]
                kernels = memory.kernel_bytes(des.covariates.shape[1] > 0,
                                              *stored_dtypes(f, src), statistics)
                plan = memory.plan(budget, src.n_cells, src.n_genes, nnz, n_comps, kernels)
                ws.save_json("plan", asdict(plan))
            disk["need"] = _disk_need(plan, nnz, n_comps, src.n_genes)
            timings["read_metadata"] = time.perf_counter() - t0
            store = summaries.Store(src.n_genes, None if plan.in_memory else ws.file("store"))
            chunk_cells = opts.chunk_cells or plan.chunk_cells(src.n_cells, nnz)
            totals, logsum = scan.first_pass(
                f, src, des.cell_group, store, plan.chunk_nnz, chunk_cells,
                None if plan.in_memory else ws, kind in ("poscounts", "ratio"), progress)
            if kind == "library":
                sf = sf_mod.library(totals)
            elif kind in ("poscounts", "ratio"):
                sf = scan.median_ratio_pass(f, src, kind, des.cell_group, logsum,
                                            store.gene_nnz, chunk_cells, progress)
            else:
                sf = obs_sf
            timings["read_counts"] = time.perf_counter() - t0 - timings["read_metadata"]
            des, empty, no_counts = _analysed_design(des, sf)
        except InputError:          # a refusal leaves nothing behind
            ws.discard()
            raise
    at = summaries.atoms(des.cell_group, sf, des.covariates, des.categorical_only,
                         des.n_groups)
    n_control_atoms = int(np.diff(at.atom_ptr)[des.control])
    if not des.categorical_only and n_control_atoms > NUMERIC_COVARIATE_WARNING:
        warnings.warn(
            f"a numeric covariate ({', '.join(opts.covariates)}) makes each of the "
            f"{n_control_atoms:,} control cells its own size-factor atom, and every "
            "comparison's joint fit visits them all: this is slow on large screens. Binning "
            "the covariate into categories (e.g. pandas.qcut into 10-20 levels) makes the "
            "control a few hundred atoms.", stacklevel=2)
    cx = context(des, opts, at)
    if ws.has("blocks.json"):
        ranges = [tuple(r) for r in ws.load_json("blocks")["ranges"]]
    else:
        max_slabs = max(1, plan.block_genes(n_comps) // summaries.SLAB_GENES)
        ranges = store.blocks(plan.block_nnz, max_slabs)
        ws.save_json("blocks", {"ranges": ranges})
    steps = steps_mod.for_options(opts)
    runner = Runner(steps, ws, Blocks(store, ranges, des.cell_group, at), cx,
                    plan.comps_chunk, progress)
    runner.run(timings)
    store.close()

    labels = np.array(des.labels, dtype=object)
    every = slice(0, cx.dcomps.size)
    info = {
        "trend_fit": dict(zip([str(x) for x in (["all"] if cx.shared else labels[cx.comps])],
                              [str(k) for k in runner.rows_input("kind", every)],
                              strict=True)),
        "prior_variance": [float(x) for x in runner.rows_input("prior_var", every)],
        "renamed_genes": renamed,
        "n_cells": int(src.n_cells), "n_genes": int(src.n_genes), "matrix": src.key,
        "layout": src.layout, "cells_without_counts": int(empty.sum()),
        "control_labels": opts.control_labels(),
        "cells_without_label": des.dropped_cells, "skipped_groups": des.skipped,
        "skipped_groups_without_counts": no_counts,
        "covariate_columns": des.covariate_names,
        "memory": {"budget_bytes": plan.budget, "counts_in_memory": plan.in_memory,
                   "gene_blocks": len(ranges), "chunk_cells": int(chunk_cells),
                   "resumed": ws.resumed},
        "timings": timings,
    }
    if opts.independent_filtering:
        info["independent_filtering"] = _filter_record(runner, labels[cx.comps])
    step = max(1, min(plan.comps_chunk, output.ROWS_PER_GROUP // max(genes.size, 1)))
    columns = steps_mod.columns(steps)
    chunks = _table_chunks(runner, columns, step, progress)
    disk["folder"] = out_dir
    written = output.write(out_dir, overwrite or resume, [c for c, _ in columns], chunks,
                           des, genes, info, opts, path, t0, workspace.digest(print_))
    ws.discard()
    return written


def _analysed_design(des: design_mod.Design, sf: np.ndarray):
    """The design on the cells the run analyses: the labelled cells with counts (size
    factor > 0), the groups that keep some, and the covariates checked and built on those
    cells (Design.on_analysed_cells). Returns it, the mask of labelled cells left out for
    having no counts and the labels of the groups dropped for the same reason; refuses a
    control, or a screen whose perturbations all lack counts."""
    empty = (des.cell_group >= 0) & ~(sf > 0)
    des.cell_group[empty] = -1
    counted = np.bincount(des.cell_group[des.cell_group >= 0], minlength=des.n_groups)
    if counted[des.control] == 0:
        raise InputError(f"no control cell ('{des.labels[des.control]}') has any counts; "
                         "check the matrix (--layer) and the --control label")
    no_counts = [des.labels[k] for k in np.flatnonzero(counted == 0)]
    des = des.without(np.flatnonzero(counted == 0))
    if des.n_groups == 1:
        raise InputError("no perturbation has a cell with counts; check the matrix (--layer)")
    return des.on_analysed_cells(), empty, no_counts




def _filter_record(runner: Runner, labels: np.ndarray) -> dict:
    """run.json's record of the independent filtering: the filter statistic, alpha, and per
    perturbation the cutoff on it (DESeq2's metadata(res)$filterThreshold), its quantile
    (filterTheta) and the number of p-values left out of BH."""
    cx = runner.cx
    every = slice(0, cx.comps.size)
    threshold, theta, left_out = (runner.rows_input(key, every)
                                  for key in ("filter_threshold", "filter_theta", "filtered"))
    return {
        "filter": "mean normalised count over all cells" if cx.shared else "base_mean",
        "alpha": cx.opts.fdr,
        "perturbations": {str(label): {"threshold": float(threshold[k]),
                                       "theta": float(theta[k]), "filtered": int(left_out[k])}
                          for k, label in enumerate(labels)}}


def _table_chunks(runner: Runner, columns: list[tuple[str, str]], step: int, progress):
    """Yield (comparison labels, {output column: comparisons x genes array}) in label order,
    `step` comparisons at a time."""
    cx = runner.cx
    n_c = cx.comps.size
    labels = np.array(cx.des.labels, dtype=object)
    if progress:
        progress("writing", 0, n_c, "perturbations")
    for c0 in range(0, n_c, step):
        c1 = min(c0 + step, n_c)
        cols = {col: runner.rows_input(key, slice(c0, c1)) for col, key in columns}
        shape = cols["log2fc"].shape
        for col, arr in cols.items():
            if arr.ndim == 1:                 # per gene: the same for every comparison
                cols[col] = np.broadcast_to(arr, shape)
        if cx.shared:      # the gene's one dispersion is not the final one of an untested pair
            cols["dispersion"] = np.where(cols["base_mean"] > 0, cols["dispersion"], np.nan)
        if progress:
            progress("writing", c1, n_c, "perturbations")
        yield labels[cx.comps[c0:c1]], cols
