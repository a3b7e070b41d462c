"""Agreement with every R reference on the real screen (issue 2), as a table.

For each reference (DESeq2 fixed = the accuracy target, stock DESeq2, stock with minmu 1e-6,
glmGamPoi) and design (plain, ~bio_rep), the median over the 8 targets of: Pearson of
log2fc (estimable genes), Spearman of -log10 p, top-50 overlap, median relative dispersion
difference; plus the worst target's value in brackets.

usage: python benchmarks/agreement.py
"""

import os

import numpy as np
import pandas as pd

import perturbglm
from perturbglm.compare import metrics

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
TARGETS = ["ATF2", "CD86", "IFNGR1", "IRF1", "MYC", "NFKBIA", "SPI1", "STAT2"]


def _cell(df, col, worst):
    """Median over targets, and the worst target in brackets."""
    return f"{np.median(df[col]):.4f} ({worst(df[col]):.4f})"


def main():
    screen = os.path.join(DATA, "papalexi_eccite_lowmoi.h5ad")
    runs = {
        "plain": perturbglm.de(screen, groupby="gene", control="non-targeting",
                               size_factors="obs:size_factor"),
        "rep": perturbglm.de(screen, groupby="gene", control="non-targeting",
                             size_factors="obs:size_factor", covariates=["bio_rep"]),
    }
    print(f"{'reference':24s} {'design':6s} {'lfc pearson':>18s} {'-log10p spearman':>18s} "
          f"{'top50':>12s} {'disp med rel':>14s}")
    for kind in ["deseq2_fixed", "deseq2_stock", "deseq2_stock_minmu1e-6", "glmgampoi"]:
        for design, res in runs.items():
            prefix = "glmgampoi" if kind == "glmgampoi" else "deseq2"
            ms = [metrics(res.perturbation(t).set_index("gene"),
                          pd.read_csv(os.path.join(DATA, "reference", kind, design,
                                                   f"{prefix}_{t}.csv"), index_col="gene"))
                  for t in TARGETS]
            df = pd.DataFrame(ms)
            print(f"{kind:24s} {design:6s} {_cell(df, 'lfc_pearson', np.min):>18s} "
                  f"{_cell(df, 'logp_spearman', np.min):>18s} "
                  f"{_cell(df, 'top50_overlap', np.min):>12s} "
                  f"{_cell(df, 'disp_median_rel', np.max):>14s}")


if __name__ == "__main__":
    main()
