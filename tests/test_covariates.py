"""Covariates: the fit does not depend on a numeric covariate's units or origin, and is made
from the cells actually analysed (after the cells without counts are dropped)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import perturbglm

PERTURBATIONS = ["non-targeting", "IRF1", "STAT2", "MYC"]   # strong, medium and small arms
COLUMNS = ["base_mean", "log2fc", "lfc_se", "stat", "pvalue", "padj", "dispersion",
           "dispersion_gene", "dispersion_trend", "pct_perturbed", "pct_control"]


@pytest.fixture(scope="module")
def small_screen(screen):
    """The control and three perturbations of the real screen, with log(guide UMIs) as a
    numeric covariate x (full float64 precision, unlike the float32 guide_umi_fraction, on
    whose grid x + 1e8 happens to be exact) and affine changes of it."""
    adata = ad.read_h5ad(screen)
    adata = adata[adata.obs["gene"].isin(PERTURBATIONS)].copy()
    x = np.log(adata.obs["guide_umi"].to_numpy(dtype=np.float64))
    adata.obs["x"] = x
    adata.obs["x_per_100"] = x * 0.01
    adata.obs["x_plus_1e3"] = x + 1e3
    adata.obs["x_plus_1e8"] = x + 1e8
    return adata


def de(adata, covariate):
    return perturbglm.de(adata, groupby="gene", control="non-targeting",
                         covariates=[covariate]).table


@pytest.fixture(scope="module")
def as_given(small_screen):
    return de(small_screen, "x")


@pytest.mark.parametrize("covariate", ["x_per_100", "x_plus_1e3", "x_plus_1e8"])
def test_numeric_covariate_is_invariant_to_affine_changes(small_screen, as_given, covariate):
    """The model is the same for a x + b; standardised over the analysed cells, so is the
    fit, up to rounding. x / 100 and x + 1e3 change the standardised covariate by ~1e-16
    and ~1e-13 (half an ulp of 1e3 over x's sd of 1.3); x + 1e8 loses up to half an ulp of
    1e8 (7.5e-9) of x in float64 itself, so log-means, log2fc and stat move by ~1e-8
    absolute (measured: 4e-9; 1e-14 for the other two), a large relative change only where
    log2fc and stat are ~0, hence atol 1e-7 for those two. Elsewhere rtol 1e-6: the
    dispersion searches end on a step below 1e-4 (quadratic convergence, so to ~1e-8) and
    a perturbation can change that last step; measured at most 6e-9 (x + 1e8) and 6e-12
    (x / 100, x + 1e3). Before standardising, x / 100 moved log2fc by up to 0.33 here,
    x + 1e3 crashed and x + 1e8 was refused as collinear."""
    changed = de(small_screen, covariate)
    assert len(changed) == len(as_given) > 0
    assert (changed["perturbation"].to_numpy() == as_given["perturbation"].to_numpy()).all()
    assert (changed["gene"].to_numpy() == as_given["gene"].to_numpy()).all()
    assert as_given["padj"].lt(0.1).sum() > 10        # the comparison has DE genes to move
    for col in COLUMNS:
        np.testing.assert_allclose(changed[col], as_given[col], rtol=1e-6,
                                   atol=1e-7 if col in ("log2fc", "stat") else 0,
                                   equal_nan=True, err_msg=col)


def test_level_without_analysed_cells_is_left_out():
    """A covariate level all of whose cells have no counts (its control and perturbed
    cells) gives the table of the same data without those cells, bit for bit: the design is
    built on the analysed cells, so that level gets no column (it was an all-zero column of
    an unidentifiable coefficient)."""
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
        pd.testing.assert_frame_equal(full.table, alone.table, check_exact=True)
