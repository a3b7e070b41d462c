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
dispersion per gene estimated from all cells. A contrast A:B is the same comparison with B
in the control's place: the step list runs again for each distinct reference B (a Context
whose control is B and whose comparisons are its A's), on the same gene blocks, and its
rows follow the control comparisons' in the table. Every finished step is saved in the
workspace, so --resume continues an interrupted run.
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
                               opts.covariates, opts.min_cells, opts.contrast_pairs())
        obs_sf = sf_mod.from_obs(obs, columns, column) if kind == "obs" else None
        obs_used = list(obs)
        del obs
        n_comps = len(des.perturbations)
        n_contrasts = len(des.contrasts)
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
                # a reference's runner holds at most every contrast's rows at once
                plan = memory.plan(budget, src.n_cells, src.n_genes, nnz,
                                   max(n_comps, n_contrasts), kernels)
                ws.save_json("plan", asdict(plan))
            disk["need"] = _disk_need(plan, nnz, n_comps + n_contrasts, src.n_genes)
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
    blocks = Blocks(store, ranges, des.cell_group, at)
    runner = Runner(steps, ws, blocks, cx, plan.comps_chunk, progress)
    runner.run(timings)
    references = _reference_runners(des, opts, at, steps, ws, blocks, plan.comps_chunk,
                                    progress)
    if references:
        t1 = time.perf_counter()
        timings["contrasts"] = {}
        done, total = 0, sum(r.count() for r in references.values())
        for r in references.values():
            r.run(timings["contrasts"], done, total)
            done += r.count()
        timings["contrasts"]["total"] = time.perf_counter() - t1
    store.close()

    labels = np.array(des.labels, dtype=object)
    every = slice(0, cx.dcomps.size)
    trend_fit = dict(zip([str(x) for x in (["all"] if cx.shared else labels[cx.comps])],
                         [str(k) for k in runner.rows_input("kind", every)], strict=True))
    prior_variance = [float(x) for x in runner.rows_input("prior_var", every)]
    if not cx.shared:   # with one dispersion for all, a reference's trend is the same fit
        for a, b in des.contrasts:
            row = _contrast_row(references, des, a, b)
            trend_fit[design_mod.contrast_name(a, b)] = str(
                references[b].rows_input("kind", row)[0])
            prior_variance.append(float(references[b].rows_input("prior_var", row)[0]))
    info = {
        "trend_fit": trend_fit,
        "prior_variance": prior_variance,
        "contrasts": [{"name": design_mod.contrast_name(a, b), "perturbation": a,
                       "reference": b} for a, b in des.contrasts],
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
        record = _filter_record(runner, labels[cx.comps])
        for a, b in des.contrasts:
            name = design_mod.contrast_name(a, b)
            record["perturbations"] |= _filter_record(
                references[b], [name], _contrast_row(references, des, a, b))["perturbations"]
        info["independent_filtering"] = record
    step = max(1, min(plan.comps_chunk, output.ROWS_PER_GROUP // max(genes.size, 1)))
    columns = steps_mod.columns(steps)
    chunks = _table_chunks(runner, references, columns, step, progress)
    disk["folder"] = out_dir
    written = output.write(out_dir, overwrite or resume, [c for c, _ in columns], chunks,
                           genes, info, opts, path, t0, workspace.digest(print_))
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




def _filter_record(runner: Runner, labels, rows: slice | None = None) -> dict:
    """run.json's record of the independent filtering of runner's comparisons `rows` (all by
    default), named `labels`: the filter statistic, alpha, and per perturbation the cutoff
    on it (DESeq2's metadata(res)$filterThreshold), its quantile (filterTheta) and the
    number of p-values left out of BH."""
    cx = runner.cx
    every = slice(0, cx.comps.size) if rows is None else rows
    threshold, theta, left_out = (runner.rows_input(key, every)
                                  for key in ("filter_threshold", "filter_theta", "filtered"))
    return {
        "filter": "mean normalised count over all cells" if cx.shared else "base_mean",
        "alpha": cx.opts.fdr,
        "perturbations": {str(label): {"threshold": float(threshold[k]),
                                       "theta": float(theta[k]), "filtered": int(left_out[k])}
                          for k, label in enumerate(labels)}}


def _reference_runners(des, opts, at, steps, ws, blocks, chunk, progress) -> dict:
    """One Runner per distinct contrast reference B (in the order the contrasts first name
    it): the step list with B in the control's place and B's A's, in the order given, as
    its comparisons; workspace entries contrastNN-STEP... . B's summaries (its tables, its
    Cook's strata) are made once, as the control's are, whatever the number of its A's."""
    by_reference: dict[str, list[int]] = {}
    for a, b in des.contrasts:
        by_reference.setdefault(b, []).append(des.code(a))
    return {b: Runner(steps, ws, blocks, context(des.with_reference(b), opts, at, comps),
                      chunk, progress, prefix=f"contrast{i:02d}-", stage="contrasts")
            for i, (b, comps) in enumerate(by_reference.items(), start=1)}


def _contrast_row(references: dict, des, a: str, b: str) -> slice:
    """The row of contrast (a, b) in its reference's runner."""
    i = int(np.flatnonzero(references[b].cx.comps == des.code(a))[0])
    return slice(i, i + 1)


def _columns(runner: Runner, columns: list[tuple[str, str]], rows: slice) -> dict:
    """{output column: comparisons x genes array} of runner's comparisons `rows`."""
    cols = {col: runner.rows_input(key, rows) for col, key in columns}
    shape = cols["log2fc"].shape
    for col, arr in cols.items():
        if arr.ndim == 1:                 # per gene: the same for every comparison
            cols[col] = np.broadcast_to(arr, shape)
    if runner.cx.shared:   # the gene's one dispersion is not the final one of an untested pair
        cols["dispersion"] = np.where(cols["base_mean"] > 0, cols["dispersion"], np.nan)
    return cols


def _table_chunks(runner: Runner, references: dict, columns: list[tuple[str, str]],
                  step: int, progress):
    """Yield output.Rows: the control comparisons in label order, `step` at a time, then
    each contrast (its reference's runner) in the order given."""
    cx = runner.cx
    des = cx.des
    n_c = cx.comps.size
    n_total = n_c + len(des.contrasts)
    labels = np.array(des.labels, dtype=object)
    cells = cx.atoms.group_n.astype(np.int64)
    if progress:
        progress("writing", 0, n_total, "perturbations")
    for c0 in range(0, n_c, step):
        c1 = min(c0 + step, n_c)
        comps = cx.comps[c0:c1]
        rows = output.Rows(labels[comps], labels[comps], cells[comps],
                           np.full(comps.size, cells[des.control]),
                           _columns(runner, columns, slice(c0, c1)))
        if progress:
            progress("writing", c1, n_total, "perturbations")
        yield rows
    for n, (a, b) in enumerate(des.contrasts, start=n_c + 1):
        rows = output.Rows([design_mod.contrast_name(a, b)], [a], [cells[des.code(a)]],
                           [cells[des.code(b)]],
                           _columns(references[b], columns,
                                    _contrast_row(references, des, a, b)))
        if progress:
            progress("writing", n, n_total, "perturbations")
        yield rows
