"""Step `pvalues` (across the genes of a chunk of comparisons): p-values of the test's
statistic and Benjamini-Hochberg adjusted p-values within each comparison.

Which pairs get a p-value: every tested pair, except those the Cook's rule removes
(outliers="filter") and those below `min_base_mean` (their base_mean) or `min_pct` (the
larger of pct_perturbed and pct_control); these keep log2fc, lfc_se and stat, their pvalue
and padj are NaN and they stay out of the correction, as DESeq2's results() treats the pairs
its Cook's rule removes.

The adjustment, per comparison:
- by default BH over the pairs with a p-value: DESeq2's results(independentFiltering =
  FALSE);
- with independent_filtering, results()' default (DESeq2's pvalueAdjustment): genes whose
  filter statistic (DESeq2's baseMean: the comparison's base_mean, or with one dispersion
  for all comparisons the mean over all cells, the model's baseMean) lies below a cutoff
  are left out of BH (padj NaN, pvalue kept), the cutoff chosen from a grid of its
  quantiles for the number of rejections at alpha = fdr (`independent_filter`).
"""

from __future__ import annotations

import math

import numpy as np

from ..nb import bh as bh_counts
from ..nb import lrt, special
from ..nb.lowess import lowess
from ..options import Options
from .base import COMPARISONS, Step
from .context import Context

GRID_POINTS = 50          # DESeq2's theta grid: seq(lowerQuantile, upperQuantile, length=50)
FEW_REJECTIONS = 10       # at most this many rejections anywhere on the grid: no filtering


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg over the finite p-values of one comparison (R's p.adjust "BH");
    NaN stays NaN."""
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1.0)
    return out


def r_quantile(sorted_x: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """R's quantile(x, probs) (type 7, its default) of `sorted_x` (ascending), with R's
    arithmetic: at index t = 1 + (n - 1) p (1-based), x[floor(t)], or where t is not whole
    and x[ceiling(t)] differs, (1 - h) x[floor(t)] + h x[ceiling(t)] with h = t - floor(t).
    numpy's "linear" method interpolates in another order, which can differ in the last
    bit, and a cutoff is compared with the data (filter >= cutoff)."""
    index = 1.0 + max(sorted_x.size - 1, 0) * probs
    lo = np.floor(index)
    hi = np.ceil(index)
    lo_val = sorted_x[lo.astype(np.int64) - 1]
    hi_val = sorted_x[hi.astype(np.int64) - 1]
    h = index - lo
    mix = (index > lo) & (hi_val != lo_val)
    return np.where(mix, (1.0 - h) * lo_val + h * hi_val, lo_val)


def theta_grid(filter_stat: np.ndarray) -> np.ndarray:
    """DESeq2's grid of filter quantiles: 50 points from the fraction of genes whose filter
    statistic is 0 to 0.95 (to 1 when that fraction is 0.95 or more), as R's seq(from, to,
    length.out = 50) computes them (from + k (to - from) / 49, the last exactly `to`)."""
    lower = np.count_nonzero(filter_stat == 0) / filter_stat.size
    upper = 0.95 if lower < 0.95 else 1.0
    if lower == upper:
        return np.full(GRID_POINTS, lower)
    n1 = GRID_POINTS - 1
    inner = lower + np.arange(1, n1) * ((upper - lower) / n1)
    return np.concatenate([[lower], inner, [upper]])


def rejections(p: np.ndarray, filter_stat: np.ndarray, cutoffs: np.ndarray,
               alpha: float) -> np.ndarray:
    """For each cutoff, the number of genes with filter >= cutoff whose BH-adjusted p-value
    (over the finite p-values of those genes) is below alpha: DESeq2's
    colSums(filtered_p(...) < alpha), from one sort of the p-values (nb/bh.py)."""
    ok = np.isfinite(p)
    order = np.argsort(p[ok], kind="stable")
    return bh_counts.rejection_counts(p[ok][order], filter_stat[ok][order],
                                      np.ascontiguousarray(cutoffs, dtype=np.float64),
                                      float(alpha))


def chosen_theta(theta: np.ndarray, num_rej: np.ndarray) -> int:
    """The grid point DESeq2's pvalueAdjustment picks: the first (no filtering beyond
    genes whose statistic is 0) when no point has more than 10 rejections; else the first
    whose rejections exceed max(fit) - rmse, with fit = R's lowess(numRej ~ theta, f = 1/5)
    and rmse the root mean square of numRej - fit over the points with numRej > 0 (the
    first point if none does)."""
    if num_rej.max() <= FEW_REJECTIONS:
        return 0
    _, fit = lowess(theta, num_rej.astype(np.float64), f=1 / 5)
    counted = num_rej > 0
    residual = num_rej[counted] - fit[counted]
    rmse = math.sqrt(math.fsum(residual * residual) / residual.size)
    above = np.flatnonzero(num_rej > fit.max() - rmse)
    return int(above[0]) if above.size else 0


def independent_filter(p: np.ndarray, filter_stat: np.ndarray, alpha: float):
    """DESeq2's results() adjustment with independent filtering (pvalueAdjustment with its
    default theta grid) of one comparison's p-values: the theta grid (theta_grid), the
    cutoffs quantile(filter, theta), the rejections at alpha of BH over the genes at or
    above each cutoff, the grid point chosen (chosen_theta), and BH over the genes at or
    above its cutoff, NaN below. Returns (padj, cutoff, theta, number of genes with a
    p-value left out by the cutoff)."""
    theta = theta_grid(filter_stat)
    cutoffs = r_quantile(np.sort(filter_stat), theta)
    j = chosen_theta(theta, rejections(p, filter_stat, cutoffs, alpha))
    kept = filter_stat >= cutoffs[j]
    left_out = int(np.count_nonzero(np.isfinite(p) & ~kept))
    return bh(np.where(kept, p, np.nan)), float(cutoffs[j]), float(theta[j]), left_out


P_VALUE = {   # the p-value of each test's statistic
    "wald": special.two_sided_p,          # z = log2fc / SE, two-sided normal tail
    "lrt": lrt.chi_square_1_p,            # LR statistic, chi-square (1 df) upper tail
}

FILTER_RECORD = ("filter_threshold", "filter_theta", "filtered")   # per comparison


def pvalues(inputs: dict, cx: Context, rows: slice) -> dict:
    """pvalue and padj of comparisons `rows` (see the module's docstring for which pairs get
    a p-value); with independent filtering also, per comparison, the cutoff on the filter
    statistic, its quantile theta and the number of p-values it left out of BH."""
    opts = cx.opts
    pval = P_VALUE[opts.test](inputs["stat"])
    if "cooks_outlier" in inputs:
        pval[inputs["cooks_outlier"]] = np.nan
    if opts.min_base_mean > 0:
        pval[inputs["base_mean"] < opts.min_base_mean] = np.nan
    if opts.min_pct > 0:
        pval[np.maximum(inputs["pct_perturbed"], inputs["pct_control"]) < opts.min_pct] = np.nan
    if not opts.independent_filtering:
        return {"pvalue": pval, "padj": np.vstack([bh(p) for p in pval])}
    done = [independent_filter(p, f, opts.fdr) for p, f in zip(pval, inputs["bm"], strict=True)]
    padj, threshold, theta, left_out = zip(*done, strict=True)
    return {"pvalue": pval, "padj": np.vstack(padj),
            "filter_threshold": np.array(threshold), "filter_theta": np.array(theta),
            "filtered": np.array(left_out, dtype=np.int64)}


def step(opts: Options) -> Step:
    """The step, reading what the options' filters need: the Cook's outlier mask, base_mean,
    the percentages, the filter statistic (bm: DESeq2's baseMean of the fitted model)."""
    reads = ["stat"]
    if opts.outliers == "filter":
        reads.append("cooks_outlier")
    if opts.min_base_mean > 0:
        reads.append("base_mean")
    if opts.min_pct > 0:
        reads += ["pct_perturbed", "pct_control"]
    if opts.independent_filtering:
        reads.append("bm")
    return Step("pvalues", COMPARISONS, pvalues, reads=tuple(reads),
                writes=("pvalue", "padj") + (FILTER_RECORD if opts.independent_filtering
                                             else ()))
