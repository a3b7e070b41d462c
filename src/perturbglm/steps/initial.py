"""Step `initial` (per gene block): the means DESeq2 holds fixed while it estimates
dispersions, and the control group's tables.

DESeq2 counterpart: the fit inside estimateDispersionsGeneEst (at alphaInit; without
covariates its linear-model mean, the group mean of normalised counts; with covariates its
IRLS with means floored at 0.5 on the comparison's cells), plus what perturbglm shares
between comparisons: the control's Cox-Reid profile over a theta grid (with covariates its
count-only terms) and, without covariates, its MLE over a theta grid (nb/stages.py
`control_tables`). Also the per-pair
descriptive columns: base_mean (DESeq2's baseMean: mean of normalised counts over the
comparison's cells) and the percentages of cells with counts.
"""

from __future__ import annotations

import math

import numpy as np

from ..io.summaries import GeneBlock
from ..nb import stages
from .base import BLOCK, Step
from .context import ALPHA_INIT, Context


def fit_initial(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """The initial fit of each dispersion comparison (nb/stages.py `initial_fit`: b, control_b,
    coef; with covariates each comparison's own joint fit, as DESeq2 fits the comparison's
    cells), the control cells' own coefficients, the control tables and the descriptive
    columns of one gene block; per-pair arrays comparisons x genes."""
    args = block.kernel_args()
    ctrl = cx.des.control
    group_n = cx.atoms.group_n
    norm = stages.normalised_sums(args)
    b, control_b, coef, control_coef = stages.initial_fit(math.log(ALPHA_INIT), ctrl,
                                                          cx.dcomps, group_n, norm, args)
    prof, wald_tab = stages.control_tables(cx.theta_lo, cx.n_prof, cx.n_wald, ctrl, b, args,
                                           float(cx.opts.min_mu))
    n_nz = np.diff(block.nz_ptr).reshape(-1, cx.des.n_groups)
    pct = 100.0 * n_nz / group_n[None, :]
    cells_cmp = group_n[ctrl] + group_n[cx.comps]
    base_mean = (norm[:, [ctrl]] + norm[:, cx.comps]) / cells_cmp[None, :]
    # the mean the dispersion trend is fitted against: the comparison's, or all cells'
    bm = (norm.sum(axis=1) / group_n.sum())[:, None] if cx.shared else base_mean
    return {"b": b, "control_b": control_b, "coef": coef, "control_coef": control_coef,
            "prof": prof, "wald_tab": wald_tab,
            "bm": bm.T, "base_mean": base_mean.T, "pct_perturbed": pct[:, cx.comps].T,
            "pct_control": pct[:, ctrl]}


def step() -> Step:
    return Step("initial", BLOCK, fit_initial,
                writes=("b", "control_b", "coef", "control_coef", "prof", "wald_tab", "bm",
                        "base_mean", "pct_perturbed", "pct_control"),
                per_dispersion=("bm",))
