"""The analysis from file to table, in bounded memory.

1. Metadata: obs columns used, the design, a memory plan (memory.py).
2. One pass over the counts (scan.py), filing non-zeros by gene slab, in memory or spilled
   to OUT.partial; a second pass only for poscounts and ratio size factors.
3. Stage A, per gene block: initial means, control tables, gene-wise dispersions.
4. Trend and prior per comparison, across all genes (needs every block's stage A).
5. Stage B, per gene block: MAP dispersions and Wald tests.
6. The table, assembled a chunk of comparisons at a time and streamed to parquet (output.py).

Each perturbation is compared with the control cells as DESeq2 would compare the two groups
alone (its own trend and prior), or, with dispersion="global", every comparison shares one
dispersion per gene estimated from all cells. Every finished step is saved in the workspace,
so --resume continues an interrupted run.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import numba
import numpy as np

from . import design as design_mod
from . import size_factors as sf_mod
from .errors import DiskFull, InputError
from .io import memory, outdir, output, scan, summaries, workspace
from .io.reader import (
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
from .io.workspace import Workspace, fingerprint
from .nb import special, stages, trend
from .steps import shrink as shrink_step

ALPHA_INIT = 0.5     # dispersion at which the initial means are fitted (DESeq2's alphaInit)
MIN_DISP = trend.MIN_DISP
NUMERIC_COVARIATE_WARNING = 5_000   # control atoms above which a run warns (see run)


@dataclass
class Options:
    groupby: str
    control: str | list[str] | tuple[str, ...]   # as given; see control_labels
    covariates: list[str] = field(default_factory=list)
    layer: str | None = None
    size_factors: str = "library"
    min_cells: int = 3
    min_mu: float = 1e-6
    dispersion: str = "per-comparison"
    max_memory: str | int | None = None
    chunk_cells: int | None = None
    threads: int | None = None
    fdr: float = 0.1
    shrink: str = "none"        # "apeglm": DESeq2's lfcShrink(type="apeglm") (steps/shrink.py)

    def check(self):
        """Refuse option values the analysis cannot use, naming the option as both the
        command line (--min-cells) and Python (min_cells=) spell it; whole numbers given as
        floats (3.0) become ints."""
        self.control_labels()
        if self.dispersion not in ("per-comparison", "global"):
            raise InputError(f"--dispersion '{self.dispersion}': use per-comparison or global")
        if self.shrink not in ("none", "apeglm"):
            raise InputError(f"--shrink / shrink={self.shrink!r}: use none or apeglm")
        if not (_is_real(self.min_mu) and math.isfinite(self.min_mu) and self.min_mu > 0):
            raise InputError(f"--min-mu / min_mu={self.min_mu!r}: give a positive finite "
                             "number (1e-6 by default, 0.5 for classic DESeq2)")
        self.min_cells = _whole("min_cells", self.min_cells)
        if self.chunk_cells is not None:
            self.chunk_cells = _whole("chunk_cells", self.chunk_cells)
        if self.threads is not None:
            self.threads = _whole("threads", self.threads)
        if not (_is_real(self.fdr) and 0 < self.fdr < 1):
            raise InputError(f"--fdr / fdr={self.fdr!r}: give a number between 0 and 1")
        sf_mod.parse(self.size_factors)
        memory.parse(self.max_memory)

    def control_labels(self) -> list[str]:
        """The labels pooled as the control (design.control_labels)."""
        return design_mod.control_labels(self.control)

    def fingerprint(self) -> dict:
        """The options that change the numbers (not memory, chunking or threads). The
        control as its labels, so that "A,B", ["A", "B"] and ("A", "B") resume each other's
        run; one label stays the string it was."""
        skip = ("max_memory", "chunk_cells", "threads")
        labels = self.control_labels()
        return {k: v for k, v in asdict(self).items() if k not in skip} | {
            "control": labels[0] if len(labels) == 1 else labels}


def _is_real(value) -> bool:
    """A number (int, float or numpy scalar), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _whole(name: str, value) -> int:
    """`value` of option `name` as an int, refused unless it is a whole number >= 1."""
    if not (_is_real(value) and math.isfinite(value) and value == int(value) and value >= 1):
        raise InputError(f"--{name.replace('_', '-')} / {name}={value!r}: give a whole number "
                         "of at least 1")
    return int(value)


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg over the finite p-values of one comparison; NaN stays NaN."""
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1.0)
    return out


@dataclass
class Context:
    """What every stage of every block shares."""

    des: design_mod.Design
    opts: Options
    atoms: summaries.Atoms
    comps: np.ndarray        # tested groups, in label order
    dcomps: np.ndarray       # dispersion comparisons: comps, or [-1] (all groups) if global
    m_cells: np.ndarray      # cells behind each dispersion comparison
    n_coef: int
    lo: float
    theta_lo: float
    n_prof: int
    n_wald: int

    @property
    def max_disp(self) -> np.ndarray:
        """DESeq2's upper bound on a comparison's dispersion: max(10, its cells)."""
        return np.maximum(10.0, self.m_cells)

    @property
    def hi(self) -> np.ndarray:
        return np.log(self.max_disp)

    def with_covariates(self, table: np.ndarray) -> np.ndarray | None:
        """A table the kernels take only with covariates (the control's Schur table); None
        without, so that numba compiles the covariate terms away."""
        return table if self.des.covariates.shape[1] else None

    def without_covariates(self, table: np.ndarray) -> np.ndarray | None:
        """A table the kernels take only without covariates (the control's MLE table); None
        with them, which selects the joint Wald fit."""
        return None if self.des.covariates.shape[1] else table


def _context(des, opts, at) -> Context:
    comps = np.array(des.perturbations, dtype=np.int64)
    n_total = at.group_n.sum()
    cells_cmp = at.group_n[des.control] + at.group_n[comps]
    lo = math.log(MIN_DISP / 10)
    theta_lo = lo - 0.5
    theta_hi = math.log(max(10.0, n_total)) + 0.5
    q = des.covariates.shape[1]
    glob = opts.dispersion == "global"
    return Context(
        des=des, opts=opts, atoms=at, comps=comps,
        dcomps=np.array([-1], dtype=np.int64) if glob else comps,
        m_cells=np.array([n_total]) if glob else cells_cmp,
        n_coef=(des.n_groups + q) if glob else (2 + q), lo=lo, theta_lo=theta_lo,
        n_prof=int(math.ceil((theta_hi - theta_lo) / stages.PROFILE_STEP)) + 1,
        n_wald=int(math.ceil((theta_hi - theta_lo) / stages.WALD_STEP)) + 1)


def stage_a(block: summaries.GeneBlock, cx: Context) -> dict:
    """Initial means, control tables and gene-wise dispersions of one gene block.
    Per-comparison arrays are saved comparisons x genes."""
    args = block.kernel_args()
    ctrl = cx.des.control
    minmu = float(cx.opts.min_mu)
    group_n = cx.atoms.group_n
    norm = stages.normalised_sums(args)
    b, coef = stages.initial_fit(math.log(ALPHA_INIT), ctrl, group_n, norm, args)
    prof, schur, wald_tab = stages.control_tables(cx.theta_lo, cx.n_prof, cx.n_wald, ctrl, b,
                                                  coef, args, minmu)
    n_nz = np.diff(block.nz_ptr).reshape(-1, cx.des.n_groups)
    pct = 100.0 * n_nz / group_n[None, :]
    cells_cmp = group_n[ctrl] + group_n[cx.comps]
    base_mean = (norm[:, [ctrl]] + norm[:, cx.comps]) / cells_cmp[None, :]
    bm = (norm.sum(axis=1) / group_n.sum())[:, None] if cx.dcomps[0] < 0 else base_mean
    if cx.dcomps[0] < 0:
        start = np.full(bm.shape, math.log(ALPHA_INIT))
    else:
        optimum = stages.control_optimum(prof, cx.with_covariates(schur), math.log(ALPHA_INIT),
                                         cx.lo, float(cx.hi.max()), cx.theta_lo, args)
        start = np.repeat(optimum[:, None], bm.shape[1], axis=1)
    start[~(bm > 0)] = np.nan
    th_gene, curv = stages.dispersions(cx.dcomps, start, cx.lo, cx.hi, b, coef, prof,
                                       cx.with_covariates(schur), cx.theta_lo, args, minmu)
    disp_gene = np.clip(np.exp(th_gene), MIN_DISP, cx.max_disp[None, :])
    curv[disp_gene != np.exp(th_gene)] = np.nan      # clipped: not the search's optimum
    return {"b": b, "coef": coef, "prof": prof, "schur": schur,
            "wald_tab": wald_tab, "curv_gene": curv.T,
            "disp_gene": disp_gene.T, "bm": bm.T, "base_mean": base_mean.T,
            "pct_perturbed": pct[:, cx.comps].T, "pct_control": pct[:, ctrl]}


def trend_chunk(disp_gene: np.ndarray, bm: np.ndarray, cx: Context, c0: int) -> dict:
    """Trend and prior variance of dispersion comparisons c0.. (rows of the arrays)."""
    n = disp_gene.shape[0]
    disp_trend = np.full_like(disp_gene, np.nan)
    prior_var = np.zeros(n)
    var_log = np.zeros(n)
    kinds = []
    for j in range(n):
        disp_trend[j], kind = trend.fit(bm[j], disp_gene[j])
        kinds.append(kind)
        prior_var[j], var_log[j] = trend.prior_variance(disp_gene[j], disp_trend[j],
                                                         cx.m_cells[c0 + j], cx.n_coef)
    return {"disp_trend": disp_trend, "prior_var": prior_var, "var_log": var_log,
            "kind": np.array(kinds)}


def stage_b(block: summaries.GeneBlock, a: dict, disp_trend: np.ndarray, prior_var,
            var_log, cx: Context) -> dict:
    """MAP dispersions (DESeq2's rules for the start and for outliers) and Wald tests."""
    args = block.kernel_args()
    minmu = float(cx.opts.min_mu)
    log_gene = np.log(a["disp_gene"].T)
    log_trend = np.log(disp_trend.T)
    # DESeq2 starts the MAP search at the gene-wise value unless it lies 10x below the trend.
    # There the profile's slope is 0 and its curvature known from stage A, so the search's
    # first Newton step (towards the prior) is taken without evaluating the start.
    # With d = theta - trend, the MAP objective's slope there is -d / v and its curvature
    # curv - 1 / v (v: the prior variance): the step is -d / (1 - curv v).
    at_gene = log_gene > log_trend + math.log(0.1)
    curv = a["curv_gene"].T
    v = np.broadcast_to(prior_var[None, :], curv.shape)
    newton = at_gene & (v > 0) & (curv < 0)
    map_start = np.where(at_gene, log_gene, log_trend)
    map_start[newton] -= (log_gene - log_trend)[newton] / (1.0 - curv[newton] * v[newton])
    map_start[~(a["bm"].T > 0)] = np.nan
    outlier = log_gene > log_trend + 2 * np.sqrt(var_log)[None, :]
    theta, lfc, se = stages.final_and_wald(
        cx.dcomps, cx.comps, cx.des.control, map_start, log_trend, prior_var, log_gene,
        outlier, cx.lo, cx.hi, math.log(MIN_DISP), a["base_mean"].T > 0, a["b"], a["coef"],
        a["prof"], cx.with_covariates(a["schur"]), cx.without_covariates(a["wald_tab"]),
        cx.theta_lo, args, minmu)
    disp = np.exp(theta)
    return {"disp": disp.T, "lfc": lfc.T / math.log(2), "se": se.T / math.log(2)}


class Blocks:
    """Gene blocks of the store, loaded (and ordered) on demand; the last one is kept so
    that a screen held in one block is not rebuilt for stage B."""

    def __init__(self, store, ranges, cell_group, at):
        self.store, self.ranges, self.cell_group, self.at = store, ranges, cell_group, at
        self._last = (None, None)

    def genes(self, i: int) -> tuple[int, int]:
        s0, s1 = self.ranges[i]
        return int(self.store.bounds[s0]), int(self.store.bounds[s1])

    def get(self, i: int) -> summaries.GeneBlock:
        if self._last[0] != i:
            self._last = (None, None)
            self._last = (i, summaries.build_block(self.store, *self.ranges[i],
                                                   self.cell_group, self.at))
        return self._last[1]


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
                kernels = memory.kernel_bytes(des.covariates.shape[1] > 0,
                                              *stored_dtypes(f, src))
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
    cx = _context(des, opts, at)
    if ws.has("blocks.json"):
        ranges = [tuple(r) for r in ws.load_json("blocks")["ranges"]]
    else:
        max_slabs = max(1, plan.block_genes(n_comps) // summaries.SLAB_GENES)
        ranges = store.blocks(plan.block_nnz, max_slabs)
        ws.save_json("blocks", {"ranges": ranges})
    blocks = Blocks(store, ranges, des.cell_group, at)

    t1 = time.perf_counter()
    n_steps = 2 * len(ranges)
    if progress:
        progress("fitting", 0, n_steps, "steps")
    for i in range(len(ranges)):
        if not ws.has(f"a{i:05d}"):
            ws.save_arrays(f"a{i:05d}", **stage_a(blocks.get(i), cx))
        if progress:
            progress("fitting", i + 1, n_steps, "steps")
    timings["stage_a"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    trend_names, prior_var, var_log, kinds = _trends(ws, cx, len(ranges), plan.comps_chunk)
    timings["trend"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    for i in range(len(ranges)):
        if not ws.has(f"b{i:05d}"):
            g0, g1 = blocks.genes(i)
            a = {k: ws.load(f"a{i:05d}", k) for k in
                 ("b", "coef", "prof", "schur", "wald_tab", "disp_gene", "curv_gene", "bm",
                  "base_mean")}
            dt = np.concatenate([ws.load(n, "disp_trend", cols=slice(g0, g1))
                                 for _, _, n in trend_names], axis=0)
            ws.save_arrays(f"b{i:05d}", **stage_b(blocks.get(i), a, dt, prior_var, var_log,
                                                  cx))
        if progress:
            progress("fitting", len(ranges) + i + 1, n_steps, "steps")
    timings["stage_b"] = time.perf_counter() - t1
    if opts.shrink == "apeglm":
        t1 = time.perf_counter()
        _shrink(ws, cx, blocks, len(ranges), plan.comps_chunk)
        timings["shrink"] = time.perf_counter() - t1
    store.close()

    labels = np.array(des.labels, dtype=object)
    info = {
        "trend_fit": dict(zip([str(x) for x in (labels[cx.comps] if cx.dcomps[0] >= 0
                                                else ["all"])],
                              [str(k) for k in kinds], strict=True)),
        "prior_variance": [float(x) for x in prior_var],
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
    step = max(1, min(plan.comps_chunk, output.ROWS_PER_GROUP // max(genes.size, 1)))
    chunks = _table_chunks(ws, cx, ranges, trend_names, step, progress)
    disk["folder"] = out_dir
    written = output.write(out_dir, overwrite or resume, chunks, des, genes, info, opts,
                           path, t0, workspace.digest(print_))
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


def _trends(ws, cx: Context, n_blocks: int, chunk: int):
    """Trend and prior of every dispersion comparison, a chunk of comparisons at a time
    (gathered across the gene blocks' stage A). Returns the chunks' (first, end, name) and
    the prior variances, squared MADs and fit kinds of all comparisons."""
    n_d = cx.dcomps.size
    names = []
    for c0 in range(0, n_d, chunk):
        c1 = min(c0 + chunk, n_d)
        names.append((c0, c1, f"t{c0:07d}"))
        if ws.has(names[-1][2]):
            continue
        dg, bm = (np.concatenate([ws.load(f"a{i:05d}", key, slice(c0, c1))
                                  for i in range(n_blocks)], axis=1)
                  for key in ("disp_gene", "bm"))
        ws.save_arrays(names[-1][2], **trend_chunk(dg, bm, cx, c0))
    prior_var, var_log, kinds = (np.concatenate([ws.load(n, key) for _, _, n in names])
                                 for key in ("prior_var", "var_log", "kind"))
    return names, prior_var, var_log, kinds


def _shrink(ws, cx: Context, blocks: Blocks, n_blocks: int, chunk: int) -> None:
    """apeGLM shrinkage (steps/shrink.py): the prior scale of every comparison (a chunk of
    comparisons at a time, across the blocks' Wald fits), then each block's shrunken fold
    changes, saved as s<block>."""
    if not ws.has("shrink_scale"):
        scale = [shrink_step.prior_scale(
                     {key: np.concatenate([ws.load(f"b{i:05d}", key, slice(c0, c0 + chunk))
                                           for i in range(n_blocks)], axis=1)
                      for key in ("lfc", "se")}, cx)["shrink_scale"]
                 for c0 in range(0, cx.comps.size, chunk)]
        ws.save_arrays("shrink_scale", shrink_scale=np.concatenate(scale))
    scale = ws.load("shrink_scale", "shrink_scale")
    for i in range(n_blocks):
        if not ws.has(f"s{i:05d}"):
            inputs = {key: ws.load(f"b{i:05d}", key) for key in ("disp", "lfc", "se")}
            inputs.update(b=ws.load(f"a{i:05d}", "b"), coef=ws.load(f"a{i:05d}", "coef"),
                          shrink_scale=scale)
            ws.save_arrays(f"s{i:05d}", **shrink_step.shrink(blocks.get(i), inputs, cx))


def _table_chunks(ws, cx: Context, ranges, trend_names, step, progress):
    """Yield (comparison labels, dict of comparisons x genes arrays) in label order."""
    n_c = cx.comps.size
    glob = cx.dcomps[0] < 0
    labels = np.array(cx.des.labels, dtype=object)
    blocks = range(len(ranges))

    def gather(prefix, key, rows):
        return np.concatenate([ws.load(f"{prefix}{i:05d}", key, rows) for i in blocks],
                              axis=1)

    global_trend = ws.load(trend_names[0][2], "disp_trend") if glob else None
    pct_control = np.concatenate([ws.load(f"a{i:05d}", "pct_control") for i in blocks])
    if progress:
        progress("writing", 0, n_c, "perturbations")
    for c0 in range(0, n_c, step):
        c1 = min(c0 + step, n_c)
        rows = slice(c0, c1)
        cols = {
            "base_mean": gather("a", "base_mean", rows),
            "lfc": gather("b", "lfc", rows),
            "se": gather("b", "se", rows),
            "pct_perturbed": gather("a", "pct_perturbed", rows),
        }
        if glob:
            n = c1 - c0
            cols["disp"] = np.repeat(gather("b", "disp", slice(0, 1)), n, axis=0)
            cols["disp"][~(cols["base_mean"] > 0)] = np.nan
            cols["disp_gene"] = np.repeat(gather("a", "disp_gene", slice(0, 1)), n, axis=0)
            cols["disp_trend"] = np.repeat(global_trend, n, axis=0)
        else:
            cols["disp"] = gather("b", "disp", rows)
            cols["disp_gene"] = gather("a", "disp_gene", rows)
            cols["disp_trend"] = np.concatenate(
                [ws.load(n, "disp_trend", slice(max(c0, t0) - t0, min(c1, t1) - t0))
                 for t0, t1, n in trend_names if t0 < c1 and t1 > c0], axis=0)
        stat = cols["lfc"] / cols["se"]
        pval = special.two_sided_p(stat)
        padj = np.vstack([bh(p) for p in pval])
        cols.update(stat=stat, pvalue=pval, padj=padj,
                    pct_control=np.broadcast_to(pct_control, stat.shape))
        if cx.opts.shrink == "apeglm":
            cols.update(lfc_shrunk=gather("s", "lfc_shrunk", rows),
                        se_shrunk=gather("s", "se_shrunk", rows))
        if progress:
            progress("writing", c1, n_c, "perturbations")
        yield labels[cx.comps[c0:c1]], cols

