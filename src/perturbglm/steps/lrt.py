"""Step `lrt` (per gene block; --test lrt): DESeq2's nbinomLRT of each comparison against its
design without the perturbation indicator, at the pair's final dispersion. stat is the LR
statistic, 2 (logLik_full - logLik_reduced); its p-value, the chi-square (1 df) upper tail
(pvalues.py). log2fc and lfc_se stay the full model's MLE (lfc.py), as in DESeq2's LRT
results. The kernels, and what they follow of DESeq2, are in nb/lrt.py."""

from __future__ import annotations

from ..io.summaries import GeneBlock
from ..nb import lrt, stages
from .base import BLOCK, DISPERSIONS, Step
from .context import Context
from .dispersion import FIT


def lr_test(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    """The LR statistic of every comparison of the block's genes, comparisons x genes (NaN
    where the pair is untested). theta as stored: one row for every comparison when they
    share it, each pair then tested on its own cells at that dispersion."""
    stat = lrt.lr_statistics(cx.comps, inputs["theta"].T, inputs["base_mean"].T,
                             stages.Fit(*(inputs[k] for k in FIT)),
                             inputs["wald_fit"].transpose(1, 0, 2),
                             cx.without_covariates(inputs["wald_tab"]), cx.search,
                             block.kernel_args())
    return {"stat": stat.T}


def step() -> Step:
    return Step("lrt", BLOCK, lr_test,
                reads=(*FIT, "wald_fit", "wald_tab", "theta", "base_mean"),
                writes=("stat",), rows=DISPERSIONS)
