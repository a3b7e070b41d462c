"""Agreement of one perturbation's results with an R DESeq2 or glmGamPoi results table.

The metrics users check when they compare with DESeq2: Pearson of log2 fold changes over
estimable genes (reference lfcSE <= 10), Spearman of -log10 p, overlap of the 50 smallest
p-values, and the median relative difference of dispersions.
"""

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr


def metrics(ours: pd.DataFrame, ref: pd.DataFrame) -> dict:
    """ours: one perturbation's rows indexed by gene; ref: the R CSV indexed by gene."""
    ours = ours.loc[ref.index]
    est = (ref["lfcSE"] <= 10) & np.isfinite(ours["log2fc"]) if "lfcSE" in ref else (
        np.isfinite(ref["log2FoldChange"]) & (ref["log2FoldChange"].abs() < 1e6)
        & np.isfinite(ours["log2fc"]))
    both_p = ref["pvalue"].notna() & ours["pvalue"].notna()
    out = {
        "lfc_pearson": pearsonr(ref["log2FoldChange"][est], ours["log2fc"][est])[0],
        "logp_spearman": spearmanr(-np.log10(ref["pvalue"][both_p]),
                                   -np.log10(ours["pvalue"][both_p]))[0],
        "top50_overlap": len(set(ref["pvalue"].nsmallest(50).index)
                             & set(ours["pvalue"].nsmallest(50).index)) / 50,
        "n_estimable": int(est.sum()),
    }
    disp_col = "dispersion" if "dispersion" in ref else "overdispersion"
    ok = ref[disp_col].notna() & ours["dispersion"].notna() & (ref[disp_col] > 0)
    out["disp_median_rel"] = float(np.median(np.abs(ours["dispersion"][ok] / ref[disp_col][ok]
                                                    - 1)))
    return out
