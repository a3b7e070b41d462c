"""Step `pvalues` (across the genes of a chunk of comparisons): p-values of the test's
statistic and Benjamini-Hochberg adjusted p-values within each comparison, as DESeq2's
results() with independentFiltering=FALSE: pairs without a p-value (untested, or removed
by the Cook's rule) are NaN and left out of the correction."""

from __future__ import annotations

import numpy as np

from ..nb import lrt, special
from .base import COMPARISONS, Step
from .context import Context


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


P_VALUE = {   # the p-value of each test's statistic
    "wald": special.two_sided_p,          # z = log2fc / SE, two-sided normal tail
    "lrt": lrt.chi_square_1_p,            # LR statistic, chi-square (1 df) upper tail
}


def pvalues(inputs: dict, cx: Context, rows: slice) -> dict:
    """pvalue and padj of comparisons `rows`; with outliers="filter", NaN p-values where the
    Cook's rule removed the pair."""
    pval = P_VALUE[cx.opts.test](inputs["stat"])
    if "cooks_outlier" in inputs:
        pval[inputs["cooks_outlier"]] = np.nan
    return {"pvalue": pval, "padj": np.vstack([bh(p) for p in pval])}


def step(reads_outliers: bool = False) -> Step:
    """The step, reading the Cook's outlier mask when the rule removes p-values."""
    return Step("pvalues", COMPARISONS, pvalues,
                reads=("stat", "cooks_outlier") if reads_outliers else ("stat",),
                writes=("pvalue", "padj"))
