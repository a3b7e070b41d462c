"""Benjamini-Hochberg rejection counts over nested gene sets, compiled: the inner loop of
DESeq2's choice of the independent-filtering cutoff (steps/pvalues.py), which counts the
rejections of BH over the genes at or above each of 50 cutoffs. One pass per cutoff over
the p-values sorted once, instead of 50 BH corrections (numpy's version of this loop took
32 ms per comparison of 20,000 genes, this one 3 ms)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def rejection_counts(p_sorted, filter_sorted, cutoffs, alpha):
    """For each cutoff, the number of BH rejections (adjusted p < alpha) among the p-values
    `p_sorted` (ascending, finite) whose filter statistic is >= the cutoff: with m of them,
    the largest rank k among them with (m / k) p_(k) < alpha, the product in R's p.adjust
    order (BH's running minimum afterwards changes no count)."""
    out = np.zeros(cutoffs.size, dtype=np.int64)
    for t in range(cutoffs.size):
        m = 0
        for k in range(p_sorted.size):
            if filter_sorted[k] >= cutoffs[t]:
                m += 1
        rank = 0
        for k in range(p_sorted.size):
            if filter_sorted[k] >= cutoffs[t]:
                rank += 1
                if m / rank * p_sorted[k] < alpha:
                    out[t] = rank
    return out
