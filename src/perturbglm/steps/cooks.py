"""Cook's distances and DESeq2's outlier rule, a step per gene block (nb/cooks.py has the
maths).

`max_cooks(block, inputs, cx)` gives, per (comparison, gene), DESeq2's maxCooks for the
comparison run alone and whether results()' default Cook's rule removes its p-value:
maxCooks above qf(0.99, p, m - p) (p coefficients, m the comparison's cells), except, for a
design of one two-level factor (no covariates), where 3 or more of the comparison's counts
are larger than the count of the cell with the largest Cook's distance.
"""

from __future__ import annotations

import numpy as np

from ..io.summaries import GeneBlock
from ..nb import cooks as kernels
from ..nb import stages
from .base import BLOCK, Step
from .context import Context
from .dispersion import FIT


def cutoffs(cx: Context) -> np.ndarray:
    """results()' default Cook's cutoff qf(0.99, p, m - p) of each comparison (p
    coefficients, m = its control and perturbed cells)."""
    from scipy.special import fdtri

    p = 2 + cx.des.covariates.shape[1]
    cells = cx.atoms.group_n[cx.des.control] + cx.atoms.group_n[cx.comps]
    return fdtri(p, cells - p, 0.99)


def max_cooks(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """maxCooks and the outlier mask (comparisons x genes) of one gene block. inputs: theta
    (final log dispersions), base_mean, wald_fit (the Wald fit's coefficients, step lfc),
    the initial fit (stages.Fit's arrays, for pairs the Wald test did not fit: a group
    without counts) and wald_tab (the control's MLE table)."""
    args = block.kernel_args()
    lay = cx.strata
    ctrl = cx.des.control
    q = cx.des.covariates.shape[1]
    var, zero_log, y_max, mark = kernels.control_summaries(ctrl, lay, args)
    cand = np.flatnonzero(mark)
    first = block.nz_ptr[ctrl::cx.des.n_groups][:block.n_genes]
    last = block.nz_ptr[ctrl + 1::cx.des.n_groups][:block.n_genes]
    summary = kernels.ControlSummary(var, zero_log, y_max, np.searchsorted(cand, first),
                                     np.searchsorted(cand, last), cand)
    rule = kernels.Rule(float(2 + q), cutoffs(cx), q == 0)
    out, outlier = kernels.max_cooks(
        cx.comps, np.ascontiguousarray(inputs["theta"].T),
        np.ascontiguousarray(inputs["base_mean"].T),
        np.ascontiguousarray(inputs["wald_fit"].transpose(1, 0, 2)),
        stages.Fit(*(inputs[k] for k in FIT)), cx.without_covariates(inputs["wald_tab"]),
        cx.search, rule, summary, lay, args)
    return {"max_cooks": out.T, "cooks_outlier": outlier.T}


def step() -> Step:
    return Step("cooks", BLOCK, max_cooks,
                reads=("theta", "base_mean", "wald_fit", *FIT, "wald_tab"),
                writes=("max_cooks", "cooks_outlier"))
