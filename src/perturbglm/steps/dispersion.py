"""The three dispersion steps of DESeq2 (estimateDispersionsGeneEst, estimateDispersionsFit,
estimateDispersionsMAP), per dispersion comparison: each perturbation with the control
(its own trend and prior, as DESeq2 run on those cells alone), or one for all comparisons.

- `gene_dispersions` (per gene block): the Cox-Reid adjusted maximum-likelihood dispersion
  of each (gene, comparison), with the means of step `initial` held fixed.
- `trend` (across the genes of a chunk of comparisons): the mean-dispersion trend and the
  prior variance of log dispersions around it (nb/trend.py).
- `final_dispersions` (per gene block): the MAP dispersion under that prior, with DESeq2's
  rules for the search's start and for genes far above the trend.
"""

from __future__ import annotations

import math

import numpy as np

from ..io.summaries import GeneBlock
from ..nb import stages
from ..nb import trend as trend_mod
from .base import BLOCK, COMPARISONS, DISPERSIONS, Step
from .context import ALPHA_INIT, MIN_DISP, Context

FIT = ("b", "control_b", "coef", "prof")     # the arrays of a stages.Fit, from step initial


def _fit(inputs: dict) -> stages.Fit:
    return stages.Fit(*(inputs[k] for k in FIT))


def gene_dispersions(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """Gene-wise dispersions (DESeq2's dispGeneEst), clipped to [MIN_DISP, max_disp], and
    the profile's curvature at each (NaN where clipped), dispersion comparisons x genes.
    Every search starts at the control's own optimum (the control's cells dominate a
    comparison's profile), or at ALPHA_INIT with one dispersion for all groups."""
    args = block.kernel_args()
    fit = _fit(inputs)
    bm = inputs["bm"].T
    if cx.shared:
        start = np.full(bm.shape, math.log(ALPHA_INIT))
    else:
        optimum = stages.control_optimum(math.log(ALPHA_INIT), fit, inputs["control_coef"],
                                         cx.search, args)
        start = np.repeat(optimum[:, None], bm.shape[1], axis=1)
    start[~(bm > 0)] = np.nan
    th_gene, curv = stages.dispersions(cx.dcomps, start, fit, cx.search, args)
    disp_gene = np.clip(np.exp(th_gene), MIN_DISP, cx.max_disp[None, :])
    curv[disp_gene != np.exp(th_gene)] = np.nan      # clipped: not the search's optimum
    return {"disp_gene": disp_gene.T, "curv_gene": curv.T}


def trend(inputs: dict, cx: Context, rows: slice) -> dict:
    """Trend (DESeq2's dispFit) and prior variance of dispersion comparisons `rows`: the
    parametric fit, or DESeq2's local fallback, and the prior variance with the squared MAD
    of log residuals (for the outlier rule of the final step)."""
    disp_gene, bm = inputs["disp_gene"], inputs["bm"]
    n = disp_gene.shape[0]
    disp_trend = np.full_like(disp_gene, np.nan)
    prior_var = np.zeros(n)
    var_log = np.zeros(n)
    kinds = []
    for j in range(n):
        disp_trend[j], kind = trend_mod.fit(bm[j], disp_gene[j])
        kinds.append(kind)
        prior_var[j], var_log[j] = trend_mod.prior_variance(
            disp_gene[j], disp_trend[j], cx.m_cells[rows.start + j], cx.n_coef)
    return {"disp_trend": disp_trend, "prior_var": prior_var, "var_log": var_log,
            "kind": np.array(kinds)}


def final_dispersions(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """Final dispersions (DESeq2's dispMAP rules), and their natural logs theta (what the
    tests take, so that they see the search's own numbers): the MAP search starts at the gene-wise
    value unless it lies 10x below the trend (then at the trend); a gene-wise value more
    than 2 MADs of log residuals above the trend is kept as final."""
    args = block.kernel_args()
    log_gene = np.log(inputs["disp_gene"].T)
    log_trend = np.log(inputs["disp_trend"].T)
    prior_var, var_log = inputs["prior_var"], inputs["var_log"]
    # At the gene-wise value the profile's slope is 0 and its curvature known from step
    # gene_dispersions, so the search's first Newton step (towards the prior) is taken
    # without evaluating the start. With d = theta - trend, the MAP objective's slope there
    # is -d / v and its curvature curv - 1 / v (v: the prior variance): the step is
    # -d / (1 - curv v).
    at_gene = log_gene > log_trend + math.log(0.1)
    curv = inputs["curv_gene"].T
    v = np.broadcast_to(prior_var[None, :], curv.shape)
    newton = at_gene & (v > 0) & (curv < 0)
    start = np.where(at_gene, log_gene, log_trend)
    start[newton] -= (log_gene - log_trend)[newton] / (1.0 - curv[newton] * v[newton])
    start[~(inputs["bm"].T > 0)] = np.nan
    outlier = log_gene > log_trend + 2 * np.sqrt(var_log)[None, :]
    prior = stages.Prior(log_trend, prior_var, log_gene, outlier, math.log(MIN_DISP))
    theta = stages.final_dispersions(cx.dcomps, start, prior, _fit(inputs), cx.search, args)
    return {"theta": theta.T, "disp": np.exp(theta).T}


def gene_step() -> Step:
    return Step("gene_dispersions", BLOCK, gene_dispersions,
                reads=(*FIT, "control_coef", "bm"), writes=("disp_gene", "curv_gene"),
                rows=DISPERSIONS, per_dispersion=("disp_gene", "curv_gene"))


def trend_step() -> Step:
    return Step("trend", COMPARISONS, trend, reads=("disp_gene", "bm"),
                writes=("disp_trend", "prior_var", "var_log", "kind"), rows=DISPERSIONS,
                per_dispersion=("disp_trend", "prior_var", "var_log", "kind"))


def final_step() -> Step:
    return Step("final_dispersions", BLOCK, final_dispersions,
                reads=(*FIT, "bm", "disp_gene", "curv_gene", "disp_trend", "prior_var",
                       "var_log"),
                writes=("theta", "disp"), rows=DISPERSIONS, per_dispersion=("theta", "disp"))
