"""Odd but valid input (issue 4): the run succeeds and says what it did.

Documented outcomes (README, "Untested pairs"):
- a gene with no counts in either arm: NaN statistics, left out of the BH correction;
- a gene with counts in one arm only: NaN log2fc, SE, p and padj (the other arm's MLE is
  -inf, so the Wald statistic is undefined; DESeq2 would report a fold change stuck at its
  coefficient bound with a meaningless p-value), while base_mean, pct and the dispersion are
  reported.
"""

import json
from importlib.metadata import version

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import SCREEN

import perturbglm
from perturbglm.cli import main

RNG = np.random.default_rng(42)


def screen(labels, x=None, genes=None, n_genes=6):
    labels = np.asarray(labels, dtype=object)
    if x is None:
        x = RNG.poisson(3.0, (labels.size, n_genes))
    genes = genes or [f"g{i}" for i in range(x.shape[1])]
    return ad.AnnData(X=sp.csr_matrix(np.asarray(x, dtype=np.float32)),
                      obs=pd.DataFrame({"p": pd.Categorical(labels)},
                                       index=[f"c{i}" for i in range(labels.size)]),
                      var=pd.DataFrame(index=genes))


def de(adata, **kw):
    return perturbglm.de(adata, groupby="p", control="NT", **kw)


def check_statistics(table):
    """p in [0, 1]; padj >= p and monotone in p within each perturbation; defined tests
    have finite log2fc, SE and dispersion."""
    p, q = table["pvalue"], table["padj"]
    ok = p.notna()
    assert p[ok].between(0, 1).all() and (q[ok] >= p[ok] - 1e-15).all()
    assert np.isfinite(table.loc[ok, ["log2fc", "lfc_se", "stat", "dispersion"]]).all().all()
    for _, sub in table[ok].groupby("perturbation"):
        s = sub.sort_values("pvalue", kind="stable")
        assert (np.diff(s["padj"].to_numpy()) >= -1e-15).all()


LABELS = ["NT"] * 120 + ["A"] * 60 + ["B"] * 60


def test_all_zero_gene_gives_nan_rows():
    x = RNG.poisson(3.0, (240, 6))
    x[:, 2] = 0
    res = de(screen(LABELS, x))
    zero = res.table[res.table["gene"] == "g2"]
    assert zero[["log2fc", "lfc_se", "pvalue", "padj", "dispersion"]].isna().all().all()
    assert (zero["base_mean"] == 0).all()
    assert (res.summary["genes_tested"] == 5).all()
    check_statistics(res.table)


def test_gene_in_one_arm_only_is_nan_with_its_mean_reported():
    x = RNG.poisson(3.0, (240, 6))
    lab = np.array(LABELS)
    x[lab == "NT", 1] = 0            # only the perturbed arms express g1
    x[lab == "A", 3] = 0             # A lacks g3, B has it
    res = de(screen(LABELS, x))
    t = res.table.set_index(["perturbation", "gene"])
    for key in [("A", "g1"), ("B", "g1"), ("A", "g3")]:
        assert np.isnan(t.loc[key, ["log2fc", "lfc_se", "pvalue", "padj"]].astype(float)).all()
        assert t.loc[key, "base_mean"] > 0
        assert np.isfinite(t.loc[key, "dispersion"])
    assert np.isfinite(t.loc[("B", "g3"), "pvalue"])
    check_statistics(res.table)


def test_huge_counts():
    x = RNG.poisson(3.0, (240, 6)).astype(np.float64)
    x[:, 0] = RNG.poisson(1e6, 240)
    res = de(screen(LABELS, x))
    assert res.table["pvalue"].notna().all()
    check_statistics(res.table)


def test_one_gene():
    res = de(screen(LABELS, n_genes=1))
    assert len(res.table) == 2 and res.table["pvalue"].notna().all()
    check_statistics(res.table)


def test_thousands_of_tiny_perturbations():
    """2,000 perturbations of 1-5 cells: those under --min-cells are skipped and listed, the
    rest are tested."""
    sizes = RNG.integers(1, 6, 2_000)
    labels = ["NT"] * 300 + [f"P{i:04d}" for i, n in enumerate(sizes) for _ in range(n)]
    res = de(screen(labels, n_genes=10))
    skipped = res.run_info["skipped_groups"]
    assert set(skipped) == {f"P{i:04d}" for i in np.flatnonzero(sizes < 3)}
    assert len(res.summary) == int((sizes >= 3).sum())
    check_statistics(res.table)
    res1 = de(screen(labels, n_genes=10), min_cells=1)
    assert len(res1.summary) == 2_000 and not res1.run_info["skipped_groups"]
    check_statistics(res1.table)


def test_one_cell_groups_are_skipped_and_listed(tmp_path, capsys):
    adata = screen(LABELS + ["C", "D"])
    path = str(tmp_path / "s.h5ad")
    adata.write_h5ad(path)
    assert main(["de", path, "--groupby", "p", "--control", "NT", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 perturbation(s) below --min-cells: C (1 cells), D (1 cells)" in out
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["skipped_groups"] == {"C": 1, "D": 1}
    for lib in ("numpy", "numba", "h5py", "pyarrow"):    # what every run loads
        assert info["versions"][lib] == version(lib)


def test_non_ascii_and_repeated_gene_names(tmp_path, capsys):
    genes = ["ÉGR1", "g0", "g0", "ß-actin", "g0-1", "g0"]
    labels = [x if x != "A" else "κ-ko" for x in LABELS]
    path = str(tmp_path / "s.h5ad")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # anndata warns about the repeated names
        screen(labels, genes=genes).write_h5ad(path)
    assert main(["de", path, "--groupby", "p", "--control", "NT", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "made 2 repeated gene name(s) unique: g0 -> g0-2, g0 -> g0-3" in out
    table = pd.read_parquet(tmp_path / "o" / "results.parquet")
    assert list(table["gene"][:6]) == ["ÉGR1", "g0", "g0-2", "ß-actin", "g0-1", "g0-3"]
    assert set(table["perturbation"]) == {"B", "κ-ko"}
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["renamed_genes"] == {"g0-2": "g0", "g0-3": "g0"}


def test_no_cells_with_counts_is_refused(tmp_path, capsys):
    path = str(tmp_path / "s.h5ad")
    screen(LABELS, np.zeros((240, 4))).write_h5ad(path)
    assert main(["de", path, "--groupby", "p", "--control", "NT", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no control cell ('NT') has any counts" in err[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_perturbation_without_counts_is_skipped_and_listed(tmp_path, capsys):
    x = RNG.poisson(3.0, (240, 6))
    x[np.array(LABELS) == "B"] = 0
    path = str(tmp_path / "s.h5ad")
    screen(LABELS, x).write_h5ad(path)
    assert main(["de", path, "--groupby", "p", "--control", "NT", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0
    assert "skipped 1 perturbation(s) whose cells have no counts: B" in capsys.readouterr().out
    table = pd.read_parquet(tmp_path / "o" / "results.parquet")
    assert set(table["perturbation"]) == {"A"}
    check_statistics(table)


@pytest.mark.parametrize("threads", [1, 2])
def test_rerun_is_identical(threads):
    adata = screen(LABELS)
    a = de(adata, threads=threads).table
    b = de(adata, threads=threads).table
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_genes_with_one_common_mean():
    """Found by the long fuzz run: when every gene has the same mean the parametric trend's
    design is singular; the run falls back (as DESeq2 does) instead of failing."""
    from perturbglm.nb import trend

    means = np.full(6, 2.0)
    disps = np.array([0.1, 0.2, 0.15, 0.3, 0.12, 0.25])
    fitted, kind = trend.fit(means, disps)
    assert kind in ("local", "mean") and np.isfinite(fitted).all()


def test_obs_columns_read_as_anndata_reads_them(tmp_path):
    """obs columns are read with h5py in their common encodings (anndata's reader for the
    rest): every encoding anndata writes comes back as anndata reads it, and the command
    line on the real screen imports neither anndata nor pandas (0.45 s together)."""
    import subprocess
    import sys

    import h5py
    from anndata.io import read_elem

    from perturbglm.io.reader import Categorical, read_obs

    n = 6
    obs = pd.DataFrame({
        "cat": pd.Categorical(list("abcabc")),
        "ordered": pd.Categorical(list("xyzxyz"), ordered=True),
        "numbers_as_categories": pd.Categorical([1, 2, 1, 2, 1, 2]),
        "text": ["α", "b", "c", "d", "e", "f"],
        "int": np.arange(n), "float": np.linspace(0, 1, n), "bool": [True, False] * 3,
        "nullable": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
    }, index=[f"c{i}" for i in range(n)])
    path = tmp_path / "obs.h5ad"
    ad.AnnData(np.zeros((n, 2)), obs=obs).write_h5ad(path)
    with h5py.File(path, "r") as f:
        ours = read_obs(f, list(obs.columns))
        for c in obs.columns:
            theirs = read_elem(f["obs"][c])
            if isinstance(ours[c], Categorical):
                mine = pd.Series(pd.Categorical.from_codes(ours[c].codes, ours[c].categories,
                                                           ordered=ours[c].ordered))
                assert mine.equals(pd.Series(theirs)), c
            elif c == "nullable":                # anndata's reader, as floats with NaN
                assert np.array_equal(ours[c], np.array([1, np.nan, 3, 4, 5, 6]),
                                      equal_nan=True)
            else:
                assert pd.Series(ours[c]).equals(pd.Series(theirs)), c
    code = ("import sys; from perturbglm import cli; cli.main(['de', sys.argv[1], "
            "'--groupby', 'gene', '--control', 'non-targeting', '--covariates', 'bio_rep', "
            "'--out', sys.argv[2], '--quiet']); "
            "print('anndata' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, SCREEN, str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_numeric_covariate_on_many_control_cells_warns(monkeypatch):
    """A numeric covariate makes every control cell an atom of every comparison's joint fit:
    the run warns, with the fix, once the control has more atoms than the threshold (lowered
    here); a categorical covariate keeps the control a few atoms and does not warn."""
    import warnings

    from perturbglm import pipeline

    monkeypatch.setattr(pipeline, "NUMERIC_COVARIATE_WARNING", 50)
    adata = screen(["NT"] * 120 + ["A"] * 40)
    adata.obs["mito"] = RNG.uniform(0, 0.1, adata.n_obs)
    adata.obs["batch"] = pd.Categorical(RNG.choice(["b1", "b2"], adata.n_obs))
    with pytest.warns(UserWarning, match="pandas.qcut"):
        de(adata, covariates=["mito"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        de(adata, covariates=["batch"], progress=False)
