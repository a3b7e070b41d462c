"""Calibration on true nulls: every non-targeting guide of the real screen against the other
non-targeting cells (9 guides x 299 genes = 2,691 tests), for both tests with and without
the Cook's filter; prints how many p-values fall below 0.05 and 0.01 (untested pairs count
as not significant, as in DESeq2's figures in ../shared/data/README.md).

usage: python benchmarks/null_calibration.py [SCREEN.h5ad]
"""

import os
import sys
import tempfile

import anndata as ad
import numpy as np
import pandas as pd

import perturbglm

SCREEN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                      "papalexi_eccite_lowmoi.h5ad")


def main() -> None:
    screen = sys.argv[1] if len(sys.argv) > 1 else SCREEN
    a = ad.read_h5ad(screen)
    nt = a[a.obs["gene"] == "non-targeting"].copy()
    guides = sorted(nt.obs["guide"].unique())
    for g in guides:
        nt.obs[f"null_{g}"] = np.where(nt.obs["guide"] == g, g, "rest")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nt.h5ad")
        nt.write_h5ad(path)
        for test in ("wald", "lrt"):
            for outliers in ("filter", "off"):
                p = pd.concat([perturbglm.de(path, groupby=f"null_{g}", control="rest",
                                             size_factors="obs:size_factor", test=test,
                                             outliers=outliers).table["pvalue"]
                               for g in guides])
                print(f"--test {test} --outliers {outliers}: {len(p)} tests, "
                      f"{p.notna().sum()} with a p-value; p < 0.05: {(p < 0.05).sum()} "
                      f"({(p < 0.05).mean():.2%}), p < 0.01: {(p < 0.01).sum()} "
                      f"({(p < 0.01).mean():.2%})", flush=True)


if __name__ == "__main__":
    main()
