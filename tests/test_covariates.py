"""Covariates: the design is made from the cells actually analysed (after the cells without
counts are dropped)."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import perturbglm

COLUMNS = ["base_mean", "log2fc", "lfc_se", "stat", "pvalue", "padj", "dispersion",
           "dispersion_gene", "dispersion_trend", "pct_perturbed", "pct_control"]


def test_level_without_analysed_cells_is_left_out():
    """A covariate level all of whose cells have no counts (its control and perturbed
    cells) gives the table of the same data without those cells: the design is built on the
    analysed cells, so that level gets no column (it was an all-zero column of an
    unidentifiable coefficient)."""
    rng = np.random.default_rng(7)
    labels = np.array(["NT"] * 60 + ["A"] * 40 + ["B"] * 40)
    site = np.array(["s1", "s2"] * 70, dtype=object)
    site[[0, 2, 60, 100]] = "s3"                 # two control, one A, one B cell
    x = rng.poisson(4.0, (labels.size, 8)).astype(np.float32)
    x[labels == "A", 0] *= 3
    x[site == "s3"] = 0
    depth = rng.uniform(0.5, 2.0, labels.size)
    adata = ad.AnnData(X=sp.csr_matrix(x),
                       obs=pd.DataFrame({"p": pd.Categorical(labels),
                                         "site": pd.Categorical(site), "depth": depth},
                                        index=[f"c{i}" for i in range(labels.size)]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(8)]))
    kept = adata[site != "s3"].copy()
    for covariates in (["site"], ["site", "depth"]):
        full = perturbglm.de(adata, groupby="p", control="NT", covariates=covariates)
        assert full.run_info["cells_without_counts"] == 4
        assert full.run_info["covariate_columns"] == ["site[s2]", *covariates[1:]]
        alone = perturbglm.de(kept, groupby="p", control="NT", covariates=covariates)
        assert full.run_info["covariate_columns"] == alone.run_info["covariate_columns"]
        for col in COLUMNS:
            np.testing.assert_allclose(full.table[col], alone.table[col], rtol=1e-12,
                                       atol=0, equal_nan=True, err_msg=col)
