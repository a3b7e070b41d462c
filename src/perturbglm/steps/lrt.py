"""The likelihood-ratio test step (--test lrt): DESeq2's nbinomLRT of each comparison against
its design without the perturbation indicator, at the pair's final dispersion, and the
p-value of either test kind.

Per gene block, after the final dispersions (stage B); the kernels and what they follow of
DESeq2 are in nb/lrt.py. log2fc and lfc_se stay the full model's MLE, the Wald fit's, as in
DESeq2's LRT results.
"""

from __future__ import annotations

import numpy as np

from ..io.summaries import GeneBlock
from ..nb import lrt, special

TESTS = ("wald", "lrt")
INPUTS = ("b", "coef", "wald_tab", "base_mean", "disp")  # stage A's, and stage B's disp


def lr_test(block: GeneBlock, inputs: dict, cx) -> dict:
    """The LR statistic of every comparison of the block's genes, comparisons x genes (NaN
    where the pair is untested). inputs: stage A's initial fit (b, coef: genes x groups,
    genes x q), control MLE table (wald_tab) and base means (comparisons x genes), and
    stage B's final dispersions (disp: comparisons x genes, or 1 x genes when every
    comparison shares the gene's dispersion). cx: the pipeline.Context."""
    base_mean = inputs["base_mean"]
    theta = np.log(np.broadcast_to(inputs["disp"], base_mean.shape))
    pairs = lrt.Pairs(cx.comps, cx.des.control, np.ascontiguousarray(theta.T),
                      np.ascontiguousarray(base_mean.T), inputs["b"], inputs["coef"],
                      float(cx.opts.min_mu))
    table = cx.without_covariates(inputs["wald_tab"])
    control_mle = None if table is None else lrt.ControlMLE(table, cx.theta_lo)
    return {"lrt_stat": lrt.lr_statistics(pairs, control_mle, block.kernel_args()).T}


def pvalues(test: str, stat: np.ndarray) -> np.ndarray:
    """p-values of statistics of a test kind: "wald", two-sided normal on lfc / se;
    "lrt", upper tail of chi-square with 1 degree of freedom (one coefficient dropped).
    NaN stays NaN."""
    if test == "wald":
        return special.two_sided_p(stat)
    if test == "lrt":
        return lrt.chi_square_1_p(stat)
    raise ValueError(f"unknown test {test!r}: use one of {TESTS}")
