"""results()' filters: DESeq2's independent filtering (--independent-filtering), and
--min-base-mean / --min-pct.

References (tests/data/README.md, made by make_filtering_references.R with R 4.2 and DESeq2
1.38.3): R's lowess on made-up data (r_lowess/); DESeq2's pvalueAdjustment on made-up
baseMean and p-values (deseq2_pvalue_adjustment/); results(independentFiltering = TRUE) on
the real screen's targets where it removes genes (deseq2_independent_filtering_active/).
Given R's p-values the adjustment is R's computation redone in the same order, so padj must
agree to 1e-12 relative (rounding), and the grid's rejections, the point chosen, its cutoff
and the genes left out exactly.
"""

import json
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import TARGETS

import perturbglm
from perturbglm.cli import main
from perturbglm.nb.lowess import lowess
from perturbglm.steps.pvalues import (
    bh,
    chosen_theta,
    independent_filter,
    r_quantile,
    rejections,
    theta_grid,
)


def _csv(path, **kwargs) -> pd.DataFrame:
    """A reference CSV, its numbers parsed to the nearest double (pandas' default parser
    may miss by a bit, and R's 17 digits name one double exactly)."""
    return pd.read_csv(path, float_precision="round_trip", **kwargs)


HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LOWESS = _csv(os.path.join(HERE, "r_lowess", "lowess.csv"))
ADJUST = os.path.join(HERE, "deseq2_pvalue_adjustment")
CASES = _csv(os.path.join(ADJUST, "cases.csv"))
CHOICE = _csv(os.path.join(ADJUST, "choice.csv")).set_index("case")
GRID = _csv(os.path.join(ADJUST, "grid.csv"))
ACTIVE = os.path.join(HERE, "deseq2_independent_filtering_active")
ACTIVE_CHOICE = _csv(os.path.join(ACTIVE, "filter_threshold.csv")).set_index("name")
INACTIVE = os.path.join(HERE, "deseq2_independent_filtering")
REL = 1e-12      # the same operations in the same order: only rounding may differ


def _active(name: str) -> pd.DataFrame:
    return _csv(os.path.join(ACTIVE, f"deseq2_{name}.csv"), index_col="gene")


def _same(ours, ref, rel=REL):
    """Equal NaN masks and values within `rel` relative where finite."""
    ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.allclose(ours[ok], ref[ok], rtol=rel, atol=0)


# ---------------------------------------------------------------- R's lowess

@pytest.mark.parametrize("case", LOWESS["case"].unique())
def test_lowess_matches_r(case):
    """Every branch of clowess: windows sliding, points within delta interpolated, ties,
    robustness weights (outliers zeroed), the early stop on a zero residual scale (flat), no
    robustness pass (iter = 0), two points, all x tied."""
    d = LOWESS[LOWESS["case"] == case]
    x, fit = lowess(d["x"].to_numpy(), d["y"].to_numpy(), f=d["f"].iloc[0],
                    iterations=int(d["iter"].iloc[0]))
    assert np.array_equal(x, d["x"].to_numpy())
    assert np.allclose(fit, d["fit"], rtol=1e-10, atol=1e-12 * np.abs(d["y"]).max())


def test_lowess_interpolates_between_fitted_points():
    """With delta wider than the spacing only some points are fitted: after each, the last
    point within delta of it; the points between lie on the straight line joining their
    fitted neighbours. Checked on its own terms without robustness passes (whose weights
    depend on every point's fit), as R's default delta never skips a point of DESeq2's
    grid."""
    x = np.linspace(0, 1, 41)                     # spacing 0.025
    y = np.sin(5 * x)
    _, every = lowess(x, y, f=0.3, iterations=0, delta=0.0)
    _, coarse = lowess(x, y, f=0.3, iterations=0, delta=0.09)
    fitted = [*range(0, 40, 3), 40]               # 3 steps (0.075) fit within 0.09
    assert not np.allclose(every, coarse)
    assert np.allclose(coarse[fitted], every[fitted], rtol=1e-14)
    assert np.allclose(coarse, np.interp(x, x[fitted], coarse[fitted]), rtol=1e-12)


# ---------------------------------------------------------------- pvalueAdjustment

@pytest.mark.parametrize("case", CHOICE.index)
def test_independent_filter_matches_deseq2(case):
    """filters / filters_alpha_0.05: signal among high means only, a cutoff well inside the
    grid; no_signal: at most 10 rejections, the first point; zeros_and_missing: genes with
    baseMean 0 (the grid starts at their fraction) and p-values missing among counted genes
    (as the Cook's rule leaves them: in the quantiles, out of BH); mostly_zero: 96% zeros,
    the grid runs to 1; tied_means: the cutoff chosen equals a mean shared by many genes."""
    d = CASES[CASES["case"] == case]
    ref = CHOICE.loc[case]
    grid = GRID[GRID["case"] == case]
    p, bm = d["pvalue"].to_numpy(), d["baseMean"].to_numpy()
    theta = theta_grid(bm)
    assert np.array_equal(theta, grid["theta"].to_numpy())
    num_rej = rejections(p, bm, r_quantile(np.sort(bm), theta), ref["alpha"])
    assert np.array_equal(num_rej, grid["numRej"].to_numpy())
    _, fit = lowess(theta, num_rej.astype(float), f=1 / 5)
    assert np.allclose(fit, grid["lowess"], rtol=1e-10, atol=1e-10)
    padj, cutoff, chosen, left_out = independent_filter(p, bm, ref["alpha"])
    assert chosen == ref["filterTheta"]
    assert cutoff == pytest.approx(ref["filterThreshold"], rel=REL)
    assert left_out == ref["n_filtered"]
    _same(padj, d["padj"])


def test_reference_cases_cover_filtering():
    """The cases above include cutoffs that leave genes out (else they test little)."""
    assert (CHOICE["n_filtered"] > 0).sum() >= 3
    assert (ACTIVE_CHOICE["n_filtered"] > 0).all()


@pytest.mark.parametrize("name", ACTIVE_CHOICE.index)
def test_real_screen_given_r_pvalues(name):
    """DESeq2's results() on the real targets where it filters, redone from its own
    baseMean and p-values (Wald, LRT)."""
    ref, choice = _active(name), ACTIVE_CHOICE.loc[name]
    padj, cutoff, theta, left_out = independent_filter(
        ref["pvalue"].to_numpy(), ref["baseMean"].to_numpy(), choice["alpha"])
    assert theta == choice["filterTheta"]
    assert cutoff == pytest.approx(choice["filterThreshold"], rel=REL)
    assert left_out == choice["n_filtered"]
    _same(padj, ref["padj"])


@pytest.mark.parametrize("target", TARGETS)
def test_no_filtering_where_deseq2_chose_none(target):
    """The 8 targets where DESeq2 chose filterTheta = 0: the cutoff is the smallest baseMean
    and padj is plain BH."""
    ref = _csv(os.path.join(INACTIVE, f"deseq2_{target}.csv"))
    choice = _csv(os.path.join(INACTIVE, "filter_threshold.csv")).set_index("target")
    p, bm = ref["pvalue"].to_numpy(), ref["baseMean"].to_numpy()
    padj, cutoff, theta, left_out = independent_filter(p, bm, 0.1)
    assert (theta, left_out) == (0.0, 0)
    assert cutoff == pytest.approx(choice.loc[target, "filterThreshold"], rel=REL)
    _same(padj, ref["padj"])
    _same(padj, bh(p))


def test_r_quantile_is_type_7():
    """R's default quantile: numpy's linear interpolation, up to rounding."""
    rng = np.random.default_rng(3)
    x = np.sort(np.round(rng.exponential(size=37), 2))
    probs = np.linspace(0, 1, 50)
    assert np.allclose(r_quantile(x, probs), np.quantile(x, probs), rtol=1e-14)
    assert r_quantile(np.array([2.0, 2.0, 5.0]), np.array([0.25]))[0] == 2.0


def test_first_point_when_nothing_is_rejected():
    assert chosen_theta(np.linspace(0, 0.95, 50), np.zeros(50, dtype=np.int64)) == 0
    assert chosen_theta(np.linspace(0, 0.95, 50), np.full(50, 10)) == 0


# ---------------------------------------------------------------- end to end

SUBSET_TARGETS = ["BRD4", "CUL3", "SMAD4", "ATF2"]


@pytest.fixture(scope="module")
def subset(screen, tmp_path_factory):
    """The real screen's non-targeting cells and four targets' (each comparison is the
    same as in the whole screen: its own cells, fixed size factors)."""
    a = ad.read_h5ad(screen)
    a = a[a.obs["gene"].isin(["non-targeting", *SUBSET_TARGETS])].copy()
    path = tmp_path_factory.mktemp("filters") / "subset.h5ad"
    a.write_h5ad(path)
    return str(path)


def _de(path, tmp_path_factory, **options):
    out = tmp_path_factory.mktemp("run") / "out"
    res = perturbglm.de(path, groupby="gene", control="non-targeting",
                        size_factors="obs:size_factor", out=str(out), **options)
    with open(out / "run.json") as fh:
        record = json.load(fh)
    return res.table.set_index(["perturbation", "gene"]), res.summary.set_index(
        "perturbation"), record


@pytest.fixture(scope="module")
def plain(subset, tmp_path_factory):
    return _de(subset, tmp_path_factory, outliers="off")


@pytest.fixture(scope="module")
def filtered(subset, tmp_path_factory):
    return _de(subset, tmp_path_factory, outliers="off", independent_filtering=True)


@pytest.mark.parametrize("target", ["BRD4", "CUL3", "ATF2"])
def test_pipeline_threshold_matches_deseq2(filtered, target):
    """The whole run: the cutoff (in run.json), theta and the genes kept by it are
    DESeq2's, and padj is BH over the kept genes' p-values, NaN below the cutoff. padj is
    not compared with R's: DESeq2 tests genes without counts in one arm (fold change -18 +/-
    225, p ~ 0.9) that perturbglm leaves untested, so its BH counts more genes."""
    table, _, record = filtered
    rec = record["independent_filtering"]
    assert rec["filter"] == "base_mean" and rec["alpha"] == 0.1
    ours = rec["perturbations"][target]
    if target == "ATF2":
        ref = _csv(os.path.join(INACTIVE, "filter_threshold.csv")).set_index("target")
        ref_theta, ref_cut = 0.0, ref.loc[target, "filterThreshold"]
        ref_bm = _csv(os.path.join(INACTIVE, f"deseq2_{target}.csv"),
                             index_col="gene")["baseMean"]
    else:
        ref_theta = ACTIVE_CHOICE.loc[target, "filterTheta"]
        ref_cut = ACTIVE_CHOICE.loc[target, "filterThreshold"]
        ref_bm = _active(target)["baseMean"]
    assert ours["theta"] == pytest.approx(ref_theta, rel=1e-15)
    assert ours["threshold"] == pytest.approx(ref_cut, rel=1e-9)
    rows = table.loc[target]
    kept = rows["base_mean"] >= ours["threshold"]
    assert kept.equals((ref_bm >= ref_cut).reindex(rows.index))
    expected = bh(np.where(kept, rows["pvalue"], np.nan))
    _same(rows["padj"], expected, rel=0)
    assert ours["filtered"] == int((~kept & rows["pvalue"].notna()).sum())
    if target != "ATF2":
        assert ours["filtered"] > 0


def test_pipeline_changes_only_padj(plain, filtered):
    """Independent filtering touches padj alone; targets it does not filter keep plain BH
    (bit for bit), and DE counts can only grow where it filters (BH over fewer genes)."""
    table0, summary0, record0 = plain
    table1, summary1, record1 = filtered
    assert "independent_filtering" not in record0
    for col in table0.columns.drop("padj"):
        assert table1[col].equals(table0[col]), col
    for target, rec in record1["independent_filtering"]["perturbations"].items():
        if rec["filtered"] == 0:
            assert table1.loc[target, "padj"].equals(table0.loc[target, "padj"])
        assert summary1.loc[target, "de_genes"] >= summary0.loc[target, "de_genes"]


def test_min_filters(plain, subset, tmp_path_factory):
    """--min-base-mean and --min-pct set pvalue and padj NaN below their limits (min-pct on
    the larger of the two arms' percentages), keep every other column, and BH runs over the
    p-values left; summary's genes_tested counts them."""
    table0, summary0, _ = plain
    table, summary, record = _de(subset, tmp_path_factory, outliers="off",
                                 min_base_mean=0.05, min_pct=3)
    assert record["parameters"]["min_base_mean"] == 0.05
    dropped = ((table0["base_mean"] < 0.05)
               | (np.maximum(table0["pct_perturbed"], table0["pct_control"]) < 3))
    assert dropped.sum() > 100 and (~dropped & table0["pvalue"].notna()).sum() > 100
    assert table["pvalue"][dropped].isna().all()
    assert table["pvalue"][~dropped].equals(table0["pvalue"][~dropped])
    for col in table0.columns.drop(["pvalue", "padj"]):
        assert table[col].equals(table0[col]), col
    for target in SUBSET_TARGETS:
        _same(table.loc[target, "padj"], bh(table.loc[target, "pvalue"].to_numpy()), rel=0)
        assert summary.loc[target, "genes_tested"] == table.loc[target, "pvalue"].notna().sum()
    assert (summary["genes_tested"] < summary0["genes_tested"]).all()


@pytest.mark.parametrize("options", [{"min_base_mean": 0.05}, {"test": "lrt", "outliers": "off"}],
                         ids=["min_base_mean_and_cooks", "lrt"])
def test_pipeline_filters_its_own_pvalues(plain, subset, tmp_path_factory, options):
    """The run's padj and record are independent_filter's on its own p-values and base_mean
    (checked against DESeq2 above). With --min-base-mean and the Cook's rule (on by
    default) the p-values they remove stay in the filter statistic's quantiles and out of
    BH, as DESeq2's results() keeps the genes its Cook's rule removes. With the LRT,
    whose p-values differ from DESeq2's by up to 1% on sparse genes here (their dispersions),
    the rejections on BRD4's grid differ at one point (39 for DESeq2's 45 at theta = 0.039)
    and the point chosen with them (deseq2_BRD4_lrt.csv redone from DESeq2's own p-values
    matches above)."""
    table, _, record = _de(subset, tmp_path_factory, independent_filtering=True, **options)
    if "min_base_mean" in options:
        assert (table["pvalue"].isna() & plain[0]["pvalue"].notna()).sum() > 100
    for target in SUBSET_TARGETS:
        rows = table.loc[target]
        padj, cut, theta, left_out = independent_filter(
            rows["pvalue"].to_numpy(), rows["base_mean"].to_numpy(), 0.1)
        rec = record["independent_filtering"]["perturbations"][target]
        assert (rec["threshold"], rec["theta"], rec["filtered"]) == (cut, theta, left_out)
        _same(rows["padj"], padj, rel=0)
    assert record["independent_filtering"]["perturbations"]["BRD4"]["filtered"] > 0


def test_global_dispersion_filters_on_the_mean_over_all_cells(subset, tmp_path_factory):
    """With one dispersion for all comparisons DESeq2's baseMean is the mean normalised
    count over all cells, and results() filters on it."""
    table, _, record = _de(subset, tmp_path_factory, outliers="off", dispersion="global",
                           independent_filtering=True)
    rec = record["independent_filtering"]
    assert rec["filter"] == "mean normalised count over all cells"
    a = ad.read_h5ad(subset)
    x = a.X.toarray() / a.obs["size_factor"].to_numpy()[:, None]
    mean_all = x.mean(axis=0)
    for target in SUBSET_TARGETS:
        rows = table.loc[target]
        padj, cut, theta, _ = independent_filter(rows["pvalue"].to_numpy(), mean_all, 0.1)
        assert rec["perturbations"][target]["threshold"] == pytest.approx(cut, rel=1e-12)
        assert rec["perturbations"][target]["theta"] == theta
        _same(rows["padj"], padj, rel=1e-12)


def test_command_line(subset, tmp_path, capsys, filtered):
    """The flags reach the run (the same record as from Python), and the report says how
    many p-values the filtering left out."""
    out = tmp_path / "out"
    rc = main(["de", subset, "--groupby", "gene", "--control", "non-targeting",
               "--size-factors", "obs:size_factor", "--outliers", "off",
               "--independent-filtering", "--min-base-mean", "0", "--min-pct", "0",
               "--out", str(out), "--quiet"])
    assert rc == 0
    with open(out / "run.json") as fh:
        record = json.load(fh)
    assert record["parameters"]["independent_filtering"] is True
    assert record["independent_filtering"] == filtered[2]["independent_filtering"]
    per = record["independent_filtering"]["perturbations"].values()
    n = sum(r["filtered"] for r in per)
    assert f"independent filtering left {n:,} p-values of 3 perturbation(s)" in \
        capsys.readouterr().out
