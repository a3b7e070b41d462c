"""apeGLM log fold-change shrinkage (`shrink="apeglm"`, DESeq2's
`lfcShrink(type="apeglm")` with apeAdapt = TRUE), in two steps:

1. `prior_scale`, across the genes of each comparison: the scale S of the Cauchy prior on the
   fold change, from the comparison's MLE fold changes and standard errors (natural log).
2. `shrink`, per gene block: the posterior mode of every (gene, comparison) fold change and
   its posterior SD at the comparison's final dispersion (nb/shrink.py), in log2 units.
"""

from __future__ import annotations

import math

import numpy as np

from ..io.summaries import GeneBlock
from ..nb import shrink as kernels
from .base import BLOCK, COMPARISONS, Step
from .context import Context

MIN_PRIOR_VAR = 1e-6     # apeglm's priorVar bounds (min.var = 0.001^2, max.var = 20^2), which
MAX_PRIOR_VAR = 400.0    # PyDESeq2's DeseqStats._fit_prior_var shares
MAX_PRIOR_SCALE = 1.0    # DESeq2: prior scale = min(sqrt(prior variance), 1)


def fitted_prior_var(lfc: np.ndarray, se: np.ndarray) -> float:
    """apeglm's `priorVar` (Efron & Morris 1975): the variance A of a normal prior on the
    fold changes, from MLEs x_i with sampling variances D_i = se_i^2, the root of

        A = sum_i (x_i^2 - D_i) w_i / sum_i w_i,   w_i = 1 / (2 (A + D_i)^2),

    in [MIN_PRIOR_VAR, MAX_PRIOR_VAR], or MIN_PRIOR_VAR when the right side is below it
    there. Genes with a NaN fold change are left out (apeglm's too; DESeq2's MLE is finite,
    if huge, where the perturbation has no counts, ours NaN: its weight, ~1/se^4, is nil)."""
    from scipy.optimize import brentq

    ok = np.isfinite(lfc) & np.isfinite(se)
    s2, d = lfc[ok] ** 2, se[ok] ** 2
    if s2.size == 0:
        return math.nan

    def excess(var):
        w = 1.0 / (2.0 * (var + d) ** 2)
        return np.sum((s2 - d) * w) / np.sum(w) - var

    if excess(MIN_PRIOR_VAR) < 0:
        return MIN_PRIOR_VAR
    if excess(MAX_PRIOR_VAR) > 0:
        return MAX_PRIOR_VAR
    return brentq(excess, MIN_PRIOR_VAR, MAX_PRIOR_VAR, xtol=1e-14, rtol=1e-14)


def prior_scale(inputs: dict, cx: Context, rows: slice) -> dict:
    """Comparison scope. inputs: "lfc", "se" (comparisons x all genes, log2, the MLE and its
    SE). Returns {"shrink_scale": per comparison S = min(sqrt(prior variance), 1)}, natural
    log units as apeglm fits it (DESeq2 passes it log(2) * its log2 results)."""
    ln2 = math.log(2)
    scale = np.array([min(math.sqrt(fitted_prior_var(lfc * ln2, se * ln2)), MAX_PRIOR_SCALE)
                      for lfc, se in zip(inputs["lfc"], inputs["se"], strict=True)])
    return {"shrink_scale": scale}


def shrink(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """Gene-block scope. inputs: "theta" (log final dispersions, comparisons x genes), "lfc"
    and "se" (MLE and its SE, log2, comparisons x genes), "control_b" and "coef" (the
    initial fit, stages.Fit: starting values) and "shrink_scale" (`prior_scale`). Returns
    "lfc_shrunk" and "se_shrunk" (the posterior SD), log2, comparisons x genes, NaN where
    the MLE is."""
    ln2 = math.log(2)
    args = kernels.ShrinkInputs(
        comps=cx.comps, control=int(cx.des.control),
        theta=np.ascontiguousarray(inputs["theta"].T),
        lfc=np.ascontiguousarray(inputs["lfc"].T * ln2),
        se=np.ascontiguousarray(inputs["se"].T * ln2), control_b=inputs["control_b"],
        coef=inputs["coef"], scale=np.asarray(inputs["shrink_scale"], dtype=np.float64))
    lfc, sd = kernels.shrink_block(args, block.kernel_args())
    return {"lfc_shrunk": lfc.T / ln2, "se_shrunk": sd.T / ln2}


def scale_step() -> Step:
    return Step("shrink_scale", COMPARISONS, prior_scale, reads=("lfc", "se"),
                writes=("shrink_scale",))


def step() -> Step:
    return Step("shrink", BLOCK, shrink,
                reads=("theta", "lfc", "se", "control_b", "coef", "shrink_scale"),
                writes=("lfc_shrunk", "se_shrunk"))
