"""Step `lfc` (per gene block): the MLE log2 fold change of each perturbation over the
control at the pair's final dispersion and its standard error from the Fisher information
(the fit of DESeq2's nbinomWaldTest; PyDESeq2's fit_LFC), nb/stages.py `wald`. The tests
(wald.py, lrt.py) take it from here."""

from __future__ import annotations

import math

from ..io.summaries import GeneBlock
from ..nb import stages
from .base import BLOCK, DISPERSIONS, Step
from .context import Context
from .dispersion import FIT


def fit_lfc(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """log2 fold changes and their SEs, comparisons x genes, NaN where the comparison has no
    counts or either group has none (the MLE is at the boundary), and the fit's natural-log
    coefficients (comparisons x genes x (control, group, covariates); Cook's step reads
    them). theta as stored: one row for every comparison when they share it (the kernel then
    fits all groups at once with covariates, as DESeq2's ~ group + covariates does)."""
    lfc, se, coefs = stages.wald(cx.comps, inputs["theta"].T, inputs["base_mean"].T > 0,
                          stages.Fit(*(inputs[k] for k in FIT)),
                          cx.without_covariates(inputs["wald_tab"]), cx.search,
                          block.kernel_args())
    return {"lfc": lfc.T / math.log(2), "se": se.T / math.log(2),
            "wald_fit": coefs.transpose(1, 0, 2)}


def step() -> Step:
    return Step("lfc", BLOCK, fit_lfc,
                reads=(*FIT, "wald_tab", "theta", "base_mean"),
                writes=("lfc", "se", "wald_fit"),
                rows=DISPERSIONS)
