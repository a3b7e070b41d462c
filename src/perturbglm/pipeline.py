"""The analysis from file to table: one pass over the counts, then the DESeq2 stages.

Each perturbation is compared with the control cells as DESeq2 would compare the two groups
alone (its own trend and prior), or, with dispersion="global", every comparison shares one
dispersion per gene estimated from all cells.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd
from scipy.special import ndtr

from . import design as design_mod
from . import size_factors as sf_mod
from . import stages, summaries, trend
from .errors import InputError
from .reader import locate_counts, obs_columns, open_h5ad, read_obs, read_var_names

ALPHA_INIT = 0.5     # dispersion at which the initial means are fitted (DESeq2's alphaInit)
MIN_DISP = trend.MIN_DISP


@dataclass
class Options:
    groupby: str
    control: str
    covariates: list[str] = field(default_factory=list)
    layer: str | None = None
    size_factors: str = "library"
    min_cells: int = 3
    min_mu: float = 1e-6
    dispersion: str = "per-comparison"
    chunk_cells: int = 10_000
    threads: int | None = None
    fdr: float = 0.1

    def check(self):
        if self.dispersion not in ("per-comparison", "global"):
            raise InputError(f"--dispersion '{self.dispersion}': use per-comparison or global")
        if not self.min_mu > 0:
            raise InputError("--min-mu must be positive (1e-6 by default, 0.5 for classic "
                             "DESeq2)")
        if self.min_cells < 1:
            raise InputError("--min-cells must be at least 1")
        if self.chunk_cells < 1:
            raise InputError("--chunk-cells must be at least 1")
        sf_mod.parse(self.size_factors)


def _bh(p: np.ndarray) -> np.ndarray:
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


def run(path: str, opts: Options, progress=None) -> dict:
    """Run the analysis on an .h5ad path; returns the pieces `result.Result` is built from."""
    opts.check()
    timings = {}
    t0 = time.perf_counter()
    if opts.threads:
        numba.set_num_threads(min(opts.threads, numba.config.NUMBA_NUM_THREADS))
    with open_h5ad(path) as f:
        src = locate_counts(f, opts.layer)
        genes = read_var_names(f, src)
        kind, column = sf_mod.parse(opts.size_factors)
        columns = obs_columns(f)
        obs = read_obs(f, [opts.groupby, *opts.covariates] + ([column] if column else []))
        if opts.groupby in obs and len(obs) != src.n_cells:
            raise InputError(f"obs has {len(obs)} cells but the matrix has {src.n_cells}")
        if src.n_cells == 0 or src.n_genes == 0:
            raise InputError(f"the matrix is empty ({src.n_cells} cells x {src.n_genes} genes)")
        des = design_mod.build(obs, columns, opts.groupby, opts.control, opts.covariates,
                               opts.min_cells)
        obs_sf = sf_mod.from_obs(obs, columns, column) if kind == "obs" else None
        timings["read_metadata"] = time.perf_counter() - t0
        data = summaries.stream(f, src, des.cell_group, opts.chunk_cells, progress)
    timings["read_counts"] = time.perf_counter() - t0 - timings["read_metadata"]
    if kind == "library":
        sf = sf_mod.library(data.totals)
    elif kind == "poscounts":
        sf = sf_mod.poscounts(data.counts)
    else:
        sf = obs_sf
    empty = (des.cell_group >= 0) & ~(sf > 0)
    des.cell_group[empty] = -1
    counted = np.bincount(des.cell_group[des.cell_group >= 0], minlength=des.n_groups)
    for k in np.flatnonzero(counted == 0):
        raise InputError(f"group '{des.labels[k]}' has no cells with counts left")
    block = summaries.build_block(data.counts, des.cell_group, sf, des.covariates,
                                  des.categorical_only, des.n_groups)
    t1 = time.perf_counter()
    table, info = _fit(block, des, genes, opts)
    timings["fit"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    info.update(n_cells=int(src.n_cells), n_genes=int(src.n_genes), matrix=src.key,
                layout=src.layout, cells_without_counts=int(empty.sum()),
                cells_without_label=des.dropped_cells, skipped_groups=des.skipped,
                covariate_columns=des.covariate_names, timings=timings)
    return {"table": table, "info": info, "design": des, "genes": genes}


def _fit(block: summaries.GeneBlock, des, genes, opts: Options):
    G = des.n_groups
    ctrl = des.control
    args = block.kernel_args()
    n_genes = genes.shape[0]
    q = des.covariates.shape[1]
    minmu = float(opts.min_mu)
    b, coef, refit = stages.initial_fit(math.log(ALPHA_INIT), ctrl, block.group_n, *args, minmu)
    n_total = block.group_n.sum()
    lo = math.log(MIN_DISP / 10)
    theta_lo = lo - 0.5
    theta_hi = math.log(max(10.0, n_total)) + 0.5
    n_prof = int(math.ceil((theta_hi - theta_lo) / stages.PROFILE_STEP)) + 1
    n_wald = int(math.ceil((theta_hi - theta_lo) / stages.WALD_STEP)) + 1
    prof, wald_tab = stages.control_tables(theta_lo, n_prof, n_wald, ctrl, b, coef, *args,
                                           minmu)

    perts = np.array(des.perturbations, dtype=np.int64)
    n_nz = np.diff(block.nz_ptr).reshape(n_genes, G)
    norm = block.group_sums(block.nz_y * np.exp(-block.cell_logs[block.nz_cell]))
    pct = 100.0 * n_nz / block.group_n[None, :]
    cells_cmp = block.group_n[ctrl] + block.group_n[perts]
    base_mean = (norm[:, [ctrl]] + norm[:, perts]) / cells_cmp[None, :]

    if opts.dispersion == "global":
        comps = np.array([-1], dtype=np.int64)
        m_cells = np.array([n_total])
        n_coef = G + q
        bm = (norm.sum(axis=1) / n_total)[:, None]
    else:
        comps = perts
        m_cells = cells_cmp
        n_coef = 2 + q
        bm = base_mean
    max_disp = np.maximum(10.0, m_cells)
    hi = np.log(max_disp)
    no_counts = ~(bm > 0)
    start = np.where(no_counts, np.nan, math.log(ALPHA_INIT))
    no_prior = np.zeros(comps.shape[0])
    th_gene = stages.dispersions(comps, start, start, no_prior, lo, hi, b, coef, prof,
                                 theta_lo, *args, minmu)
    disp_gene = np.clip(np.exp(th_gene), MIN_DISP, max_disp[None, :])
    disp_trend = np.full_like(disp_gene, np.nan)
    prior_var = np.zeros(comps.shape[0])
    var_log = np.zeros(comps.shape[0])
    fit_kind = []
    for j in range(comps.shape[0]):
        disp_trend[:, j], kind = trend.fit(bm[:, j], disp_gene[:, j])
        fit_kind.append(kind)
        prior_var[j], var_log[j] = trend.prior_variance(disp_gene[:, j], disp_trend[:, j],
                                                         m_cells[j], n_coef)
    log_gene, log_trend = np.log(disp_gene), np.log(disp_trend)
    # DESeq2 starts the MAP search at the gene-wise value unless it lies 10x below the trend
    map_start = np.where(log_gene > log_trend + math.log(0.1), log_gene, log_trend)
    th_map = stages.dispersions(comps, map_start, log_trend, prior_var, lo, hi, b, coef, prof,
                                theta_lo, *args, minmu)
    disp = np.clip(np.exp(th_map), MIN_DISP, max_disp[None, :])
    outlier = np.log(disp_gene) > np.log(disp_trend) + 2 * np.sqrt(var_log)[None, :]
    disp = np.where(outlier, disp_gene, disp)
    if opts.dispersion == "global":
        disp = np.repeat(disp, perts.size, axis=1)
        disp_gene = np.repeat(disp_gene, perts.size, axis=1)
        disp_trend = np.repeat(disp_trend, perts.size, axis=1)
        disp[~(base_mean > 0)] = np.nan
    lfc, se = stages.wald(perts, ctrl, np.log(disp), coef, wald_tab, theta_lo, *args, minmu)
    lfc /= math.log(2)
    se /= math.log(2)
    stat = lfc / se
    pval = 2 * ndtr(-np.abs(stat))
    padj = np.column_stack([_bh(pval[:, j]) for j in range(perts.size)]) if perts.size else pval

    labels = np.array(des.labels, dtype=object)
    table = pd.DataFrame({
        "perturbation": np.repeat(labels[perts], n_genes),
        "gene": np.tile(genes, perts.size),
        "base_mean": base_mean.T.ravel(),
        "log2fc": lfc.T.ravel(),
        "lfc_se": se.T.ravel(),
        "stat": stat.T.ravel(),
        "pvalue": pval.T.ravel(),
        "padj": padj.T.ravel(),
        "dispersion": disp.T.ravel(),
        "dispersion_gene": disp_gene.T.ravel(),
        "dispersion_trend": disp_trend.T.ravel(),
        "pct_perturbed": pct[:, perts].T.ravel(),
        "pct_control": np.repeat(pct[:, [ctrl]], perts.size, axis=1).T.ravel(),
    })
    order = np.argsort(labels[perts].astype(str), kind="stable")
    table = table.iloc[(order[:, None] * n_genes + np.arange(n_genes)).ravel()]
    table = table.reset_index(drop=True)
    info = {"trend_fit": dict(zip(
        [str(x) for x in (labels[perts] if opts.dispersion != "global" else ["all"])],
        fit_kind, strict=True)),
        "prior_variance": [float(x) for x in prior_var],
        "genes_with_covariates_from_all_cells": [str(x) for x in genes[refit]]}
    return table, info
