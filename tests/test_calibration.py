"""Calibration on true nulls of the real screen (issue 2): each non-targeting guide against
the other non-targeting cells, and randomly shuffled labels. Across all tests the fraction
of p < 0.05 must lie in [0.03, 0.07] and fewer than 1% of genes may reach FDR < 0.1."""

import pandas as pd

import perturbglm


def _check(table: pd.DataFrame, label: str):
    p = table["pvalue"].dropna()
    q = table["padj"].dropna()
    frac05 = (p < 0.05).mean()
    frac_fdr = (q < 0.1).mean()
    assert len(p) > 1000, label
    assert 0.03 <= frac05 <= 0.07, f"{label}: fraction p<0.05 = {frac05:.4f}"
    assert frac_fdr < 0.01, f"{label}: fraction FDR<0.1 = {frac_fdr:.4f}"


def test_non_targeting_guides_are_null(null_screen):
    path, guides, _ = null_screen
    tables = [perturbglm.de(path, groupby=f"null_{g}", control="rest",
                            size_factors="obs:size_factor").table for g in guides]
    _check(pd.concat(tables), "NT guide vs other NT cells")


def test_shuffled_labels_are_null(null_screen):
    _, _, shuffled = null_screen
    res = perturbglm.de(shuffled, groupby="shuffled", control="non-targeting",
                        size_factors="obs:size_factor")
    _check(res.table, "shuffled labels")
