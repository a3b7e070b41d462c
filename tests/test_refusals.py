"""Refusals of `perturbglm de`: every bad input ends in one `perturbglm: error:` line, exit
code 2, no traceback, no --out folder and no other file written; plus the runs that must
succeed next to them (--overwrite, skipped perturbations, CSC/dense storage)."""

from __future__ import annotations

import hashlib
import json
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import SCREEN

import perturbglm
from perturbglm.cli import main
from perturbglm.errors import InputError
from perturbglm.pipeline import Options, run

N_GENES = 8
LABELS = ["NT"] * 30 + ["A"] * 20 + ["B"] * 10      # 60 cells; B is the smallest group
N_CELLS = len(LABELS)
BASE = ["--groupby", "perturbation", "--control", "NT"]


# ---------------------------------------------------------------- screen builders

def counts(seed: int = 0) -> np.ndarray:
    """Integer counts (float32) with a few genes shifted in A and B."""
    rng = np.random.default_rng(seed)
    mu = np.tile(rng.uniform(2.0, 20.0, size=N_GENES), (N_CELLS, 1))
    lab = np.array(LABELS)
    mu[lab == "A", 0] *= 3.0
    mu[lab == "B", 1] *= 0.3
    return rng.negative_binomial(5, 5.0 / (5.0 + mu)).astype(np.float32)


def base_obs(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame(
        {
            "perturbation": pd.Categorical(LABELS, categories=["NT", "A", "B"]),
            "batch": pd.Categorical(["b1", "b2"] * (N_CELLS // 2)),
            "depth": rng.uniform(0.5, 2.0, size=N_CELLS),
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )


def write_screen(path, x=None, layout: str = "csr", layers=None, **columns) -> str:
    """Write a tiny screen; `columns` are extra obs columns, `layers` a dict of matrices."""
    x = counts() if x is None else np.asarray(x, dtype=np.float32)
    mat = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[layout](x)
    obs = base_obs()
    for name, values in columns.items():
        obs[name] = values
    adata = ad.AnnData(
        X=mat, obs=obs,
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]),
        layers={k: sp.csr_matrix(np.asarray(v, dtype=np.float32))
                for k, v in (layers or {}).items()},
    )
    adata.write_h5ad(path)
    return str(path)


@pytest.fixture
def screen(tmp_path) -> str:
    return write_screen(tmp_path / "screen.h5ad")


def snapshot(root) -> dict:
    """Every file and folder under root with its content hash and mtime."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            state[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            state[os.path.relpath(p, root)] = (digest, os.stat(p).st_mtime_ns)
    return state


def refuse(tmp_path, capsys, screen_path, args, *needles, out_name: str = "out") -> str:
    """Run `perturbglm de` and check it is a clean one-line refusal that wrote nothing."""
    out = tmp_path / out_name
    existed = out.exists()
    before = snapshot(tmp_path)
    rc = main(["de", str(screen_path), *args, "--out", str(out)])
    cap = capsys.readouterr()
    err = cap.err
    assert rc == 2, err
    assert err.startswith("perturbglm: error:"), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert cap.out == ""
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert out.exists() == existed
    assert snapshot(tmp_path) == before, "files appeared, vanished or changed"
    return err


def succeed(tmp_path, capsys, screen_path, args, out_name: str = "out"):
    out = tmp_path / out_name
    rc = main(["de", str(screen_path), *args, "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    for name in ("results.parquet", "summary.csv", "run.json"):
        assert (out / name).is_file()
    stray = [p for p in os.listdir(tmp_path) if "perturbglm" in p or p.endswith(".partial")]
    assert stray == []
    return cap, out


# ---------------------------------------------------------------- count values

def test_non_integer_values(tmp_path, capsys):
    x = np.log1p(counts())
    path = write_screen(tmp_path / "norm.h5ad", x=x)
    err = refuse(tmp_path, capsys, path, BASE, "non-integer", "raw counts")
    assert "'X'" in err


def test_negative_values(tmp_path, capsys):
    x = counts()
    x[5, 2] = -3.0
    path = write_screen(tmp_path / "neg.h5ad", x=x)
    refuse(tmp_path, capsys, path, BASE, "negative", "raw counts")


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_inf_values(tmp_path, capsys, bad):
    x = counts()
    x[7, 3] = bad
    path = write_screen(tmp_path / "bad.h5ad", x=x)
    refuse(tmp_path, capsys, path, BASE, "NaN or infinite", "raw")


# ---------------------------------------------------------------- groupby / control

def test_unknown_groupby(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, ["--groupby", "pert", "--control", "NT"],
           "'pert'", "obs columns", "perturbation", "batch", "depth")


def test_unknown_control_suggests(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, ["--groupby", "perturbation", "--control", "NTT"],
           "'NTT'", "did you mean 'NT'")


def test_groupby_single_label(tmp_path, capsys):
    path = write_screen(tmp_path / "s.h5ad", lane=pd.Categorical(["L1"] * N_CELLS))
    refuse(tmp_path, capsys, path, ["--groupby", "lane", "--control", "L1"],
           "'lane'", "one label only")


def test_unknown_label_among_several_controls(tmp_path, capsys, screen):
    err = refuse(tmp_path, capsys, screen, ["--groupby", "perturbation", "--control", "NT,NTT"],
                 "--control 'NTT' is not a label", "did you mean 'NT'")
    assert "'NT' is not" not in err


def test_every_label_a_control(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, ["--groupby", "perturbation", "--control", "NT,A,B"],
           "'perturbation'", "control labels only", "'NT+A+B'", "at least one perturbation")


def test_no_control_label(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, ["--groupby", "perturbation", "--control", ","],
           "--control", "at least one label")


def test_control_of_wrong_type_from_python(tmp_path, screen):
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="control=3: give a label"):
        perturbglm.de(screen, groupby="perturbation", control=3, out=str(tmp_path / "out"))
    assert snapshot(tmp_path) == before


def guides() -> list[str]:
    """Per-guide labels: the NT cells split into N1 (2 cells), N2 (2 cells) and NT."""
    return ["N1"] * 2 + ["N2"] * 2 + LABELS[4:]


def test_min_cells_applies_to_the_pooled_control(tmp_path, capsys):
    """N1 and N2 have 2 cells each: either alone is below --min-cells 3, pooled they are 4."""
    path = write_screen(tmp_path / "s.h5ad", guide=pd.Categorical(guides()))
    refuse(tmp_path, capsys, path, ["--groupby", "guide", "--control", "N1", "--min-cells", "3"],
           "control 'N1' has 2 cells", "--min-cells 3")
    cap, out = succeed(tmp_path, capsys, path,
                       ["--groupby", "guide", "--control", "N1,N2", "--min-cells", "3"])
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["perturbation"]) == ["A", "B", "NT"]
    assert (summary["control_cells"] == 4).all()
    assert "control: 2 labels pooled (N1, N2), 4 cells" in cap.out


def test_control_given_as_list_string_or_twice(tmp_path, capsys):
    """A Python list, a tuple and the command line's comma-separated string pool the same
    cells and give the same table and fingerprint; a label given twice counts once."""
    path = write_screen(tmp_path / "s.h5ad", guide=pd.Categorical(guides()))
    _, out = succeed(tmp_path, capsys, path, ["--groupby", "guide", "--control", "N1,N2,N1"])
    cli = pd.read_parquet(out / "results.parquet")
    record = json.load(open(out / "run.json"))
    assert record["parameters"]["control"] == "N1,N2,N1"
    assert record["control_labels"] == ["N1", "N2"]
    for control in (["N1", "N2"], ("N1", "N2"), "N1,N2"):
        res = perturbglm.de(path, groupby="guide", control=control)
        pd.testing.assert_frame_equal(res.table, cli, check_exact=True)
        assert res.run_info["control_labels"] == ["N1", "N2"]
    prints = {json.dumps(Options("guide", c).fingerprint())
              for c in (["N1", "N2"], ("N1", "N2"), "N1,N2", "N1,N2,N1")}
    assert len(prints) == 1
    assert Options("guide", "N1").fingerprint()["control"] == "N1"


# ---------------------------------------------------------------- covariates

def test_unknown_covariate(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, [*BASE, "--covariates", "batch,plate"],
           "'plate'", "obs columns", "batch")


def test_covariate_is_groupby(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, [*BASE, "--covariates", "perturbation"],
           "'perturbation'", "--groupby column", "confounded")


def test_collinear_covariates(tmp_path, capsys):
    batch2 = pd.Categorical(["x1", "x2"] * (N_CELLS // 2))      # same split as batch
    path = write_screen(tmp_path / "s.h5ad", batch2=batch2)
    refuse(tmp_path, capsys, path, [*BASE, "--covariates", "batch,batch2"],
           "batch2", "collinear")


def test_covariate_level_without_control(tmp_path, capsys):
    site = pd.Categorical(["s1" if lab == "NT" else ("s2" if i % 2 else "s1")
                           for i, lab in enumerate(LABELS)])
    path = write_screen(tmp_path / "s.h5ad", site=site)
    refuse(tmp_path, capsys, path, [*BASE, "--covariates", "site"],
           "'site'", "'s2'", "no control cells")


@pytest.mark.parametrize("value", [pd.Categorical(["b1"] * N_CELLS), np.full(N_CELLS, 1e8)],
                         ids=["categorical", "numeric"])
def test_covariate_with_one_value(tmp_path, capsys, value):
    path = write_screen(tmp_path / "s.h5ad", plate=value)
    refuse(tmp_path, capsys, path, [*BASE, "--covariates", "plate"],
           "'plate'", "one value only")


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_numeric_covariate_not_finite(tmp_path, capsys, bad):
    depth = base_obs()["depth"].to_numpy()
    depth[4] = bad
    path = write_screen(tmp_path / "s.h5ad", depth=depth)
    refuse(tmp_path, capsys, path, [*BASE, "--covariates", "depth"],
           "'depth'", "missing or infinite")


def test_covariate_level_whose_control_cells_have_no_counts(tmp_path, capsys):
    """The checks run on the cells analysed: s2's control cells have no counts, so s2 has
    no analysed control cells, as in the same data without those cells. (The refusal comes
    after the read pass, so --quiet keeps its progress lines off stderr.)"""
    site = np.array(["s1" if (lab == "NT" and i < 20) or (lab != "NT" and i % 2) else "s2"
                     for i, lab in enumerate(LABELS)])
    empty = (np.array(LABELS) == "NT") & (site == "s2")
    x = counts()
    x[empty] = 0
    path = write_screen(tmp_path / "s.h5ad", x=x, site=pd.Categorical(site))
    refuse(tmp_path, capsys, path, [*BASE, "--covariates", "site", "--quiet"],
           "'site'", "'s2'", "no control cells")
    without = tmp_path / "without.h5ad"
    ad.read_h5ad(path)[~empty].copy().write_h5ad(without)
    refuse(tmp_path, capsys, without, [*BASE, "--covariates", "site"],
           "'site'", "'s2'", "no control cells")


# ---------------------------------------------------------------- --out

def test_existing_out_needs_overwrite(tmp_path, capsys, screen):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results\n")
    refuse(tmp_path, capsys, screen, BASE, "'" + str(out) + "'", "exists", "--overwrite")
    # --overwrite replaces only a results folder (tests/test_outputs_safety.py), or an empty one
    refuse(tmp_path, capsys, screen, [*BASE, "--overwrite"], "keep.txt", "not a perturbglm")
    assert (out / "keep.txt").read_text() == "earlier results\n"
    assert os.listdir(out) == ["keep.txt"]

    os.unlink(out / "keep.txt")
    succeed(tmp_path, capsys, screen, [*BASE, "--overwrite"])
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


# ---------------------------------------------------------------- unreadable files

def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.h5ad"
    path.write_bytes(b"")
    refuse(tmp_path, capsys, path, BASE, "empty.h5ad", "empty")


def test_text_file(tmp_path, capsys):
    path = tmp_path / "text.h5ad"
    path.write_text("cell,gene,count\nc1,g1,3\n")
    refuse(tmp_path, capsys, path, BASE, "text.h5ad", "not a readable HDF5")


def test_truncated_file(tmp_path, capsys, screen):
    data = open(screen, "rb").read()
    path = tmp_path / "truncated.h5ad"
    path.write_bytes(data[: len(data) // 2])
    os.remove(screen)
    refuse(tmp_path, capsys, path, BASE, "truncated.h5ad", "truncated")


def test_missing_file(tmp_path, capsys):
    refuse(tmp_path, capsys, tmp_path / "nope.h5ad", BASE, "nope.h5ad", "no such file")


# ---------------------------------------------------------------- --layer

def test_unknown_layer(tmp_path, capsys):
    path = write_screen(tmp_path / "s.h5ad", layers={"counts": counts(), "spliced": counts(1)})
    refuse(tmp_path, capsys, path, [*BASE, "--layer", "raw_counts"],
           "layers/raw_counts", "layers in this file", "'counts'", "'spliced'")


def test_unknown_layer_no_layers(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, [*BASE, "--layer", "counts"],
           "layers/counts", "layers in this file: none")


# ---------------------------------------------------------------- --size-factors

def test_bad_size_factor_spec(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, [*BASE, "--size-factors", "median"],
           "'median'", "library, poscounts, ratio or obs:COLUMN")


def test_size_factor_column_missing(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, [*BASE, "--size-factors", "obs:sf"],
           "obs:sf", "'sf'", "obs columns", "depth")


@pytest.mark.parametrize("bad", [0.0, -1.0], ids=["zero", "negative"])
def test_size_factor_column_not_positive(tmp_path, capsys, bad):
    sf = np.ones(N_CELLS)
    sf[11] = bad
    path = write_screen(tmp_path / "s.h5ad", sf=sf)
    refuse(tmp_path, capsys, path, [*BASE, "--size-factors", "obs:sf"], "obs:sf", "positive")


# ---------------------------------------------------------------- --min-cells

def test_min_cells_above_every_perturbation(tmp_path, capsys, screen):
    refuse(tmp_path, capsys, screen, [*BASE, "--min-cells", "25"],
           "every perturbation", "--min-cells 25")


def test_min_cells_skips_one_perturbation(tmp_path, capsys, screen):
    cap, out = succeed(tmp_path, capsys, screen, [*BASE, "--min-cells", "15"])
    assert "skipped 1 perturbation(s)" in cap.out
    assert "B (10 cells)" in cap.out
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["perturbation"]) == {"A"}


# ---------------------------------------------------------------- option values

@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_min_mu_not_positive_finite(tmp_path, capsys, screen, value):
    refuse(tmp_path, capsys, screen, [*BASE, "--min-mu", value], "--min-mu", "positive finite")


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--min-base-mean", "-1", "non-negative finite"), ("--min-base-mean", "inf", "finite"),
    ("--min-base-mean", "nan", "finite"), ("--min-pct", "101", "between 0 and 100"),
    ("--min-pct", "-0.5", "between 0 and 100"), ("--min-pct", "nan", "between 0 and 100"),
])
def test_gene_filters_out_of_range(tmp_path, capsys, screen, option, value, says):
    refuse(tmp_path, capsys, screen, [*BASE, option, value], option, says)


@pytest.mark.parametrize("option", [
    {"min_mu": np.inf}, {"min_mu": np.nan}, {"min_mu": "0.5"}, {"threads": 1.5},
    {"threads": 0}, {"chunk_cells": 2.5}, {"min_cells": "3"}, {"min_cells": True},
    {"fdr": "0.1"}, {"test": "score"}, {"min_base_mean": "1"}, {"min_base_mean": -0.1},
    {"min_pct": 100.5}, {"min_pct": True}, {"independent_filtering": "yes"},
    {"independent_filtering": 1},
], ids=repr)
def test_option_values_from_python(tmp_path, screen, option):
    """Option values the command line's types would stop are refused from Python too, in one
    line naming the argument, before anything is read or written."""
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as refused:
        perturbglm.de(screen, groupby="perturbation", control="NT", out=str(tmp_path / "out"),
                      **option)
    message = str(refused.value)
    assert "\n" not in message
    (name, value), = option.items()
    assert f"{name}={value!r}" in message
    assert snapshot(tmp_path) == before


def test_whole_option_values_given_as_floats_are_taken(screen):
    res = perturbglm.de(screen, groupby="perturbation", control="NT", min_cells=15.0,
                        threads=1.0, chunk_cells=np.int64(7))
    assert set(res.table["perturbation"]) == {"A"}


# ---------------------------------------------------------------- input untouched

@pytest.mark.parametrize("size_factors", [
    "library",
    "obs:depth",
    "poscounts",
])
def test_input_not_modified(tmp_path, capsys, screen, size_factors):
    st = os.stat(screen)
    data = open(screen, "rb").read()
    succeed(tmp_path, capsys, screen,
            [*BASE, "--covariates", "batch,depth", "--size-factors", size_factors])
    assert open(screen, "rb").read() == data
    after = os.stat(screen)
    assert (after.st_mtime_ns, after.st_size) == (st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------- storage layouts

@pytest.mark.parametrize("layout", ["csc", "dense"])
def test_layouts_agree(tmp_path, capsys, layout):
    ref_path = write_screen(tmp_path / "csr.h5ad")
    alt_path = write_screen(tmp_path / f"{layout}.h5ad", layout=layout)
    _, ref_out = succeed(tmp_path, capsys, ref_path, [*BASE, "--covariates", "batch"], "o_csr")
    _, alt_out = succeed(tmp_path, capsys, alt_path, [*BASE, "--covariates", "batch"], "o_alt")
    ref = pd.read_parquet(ref_out / "results.parquet")
    alt = pd.read_parquet(alt_out / "results.parquet")
    assert len(ref) == 2 * N_GENES
    assert list(ref.columns) == list(alt.columns)
    num = ref.select_dtypes("number").columns
    other = [c for c in ref.columns if c not in num]
    pd.testing.assert_frame_equal(ref[other], alt[other])
    pd.testing.assert_frame_equal(ref[num], alt[num], check_exact=False, rtol=1e-10, atol=0)


@pytest.mark.parametrize("shape", [(5, 40), (40, 5)], ids=["wide", "tall"])
def test_poscounts_matches_deseq2(shape):
    from perturbglm import size_factors as sfm

    x = np.random.default_rng(3).poisson(3.0, size=shape).astype(np.float64)
    pos = x > 0
    logs = np.log(np.where(pos, x, 1.0))                  # zeros count as ones
    log_geo = logs.sum(axis=0) / x.shape[0]
    log_geo[~pos.any(axis=0)] = -np.inf
    expected = np.array([np.exp(np.median((logs[i] - log_geo)[pos[i] & np.isfinite(log_geo)]))
                         for i in range(x.shape[0])])
    expected /= np.exp(np.mean(np.log(expected)))
    log_geo = sfm.log_geometric_means("poscounts", logs.sum(axis=0), pos.sum(axis=0),
                                      x.shape[0])
    got = sfm.normalise(sfm.median_ratios(sp.csr_matrix(x), log_geo))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def ratio_factors(x: np.ndarray) -> np.ndarray:
    """DESeq2's estimateSizeFactorsForMatrix(type="ratio") on a dense cells x genes matrix:
    loggeomeans = mean over cells of log y (-Inf for a gene with a zero), each cell's
    exp(median of log y - loggeomeans over the finite genes), not rescaled."""
    with np.errstate(divide="ignore"):
        logs = np.log(x)
    log_geo = logs.mean(axis=0)
    finite = np.isfinite(log_geo)
    return np.exp(np.median(logs[:, finite] - log_geo[finite], axis=1))


@pytest.mark.parametrize("shape", [(5, 40), (40, 5)], ids=["wide", "tall"])
def test_ratio_matches_deseq2(shape):
    from perturbglm import size_factors as sfm

    x = np.random.default_rng(4).poisson(8.0, size=shape).astype(np.float64)
    x[0, 0] = 0.0                                          # gene 0 is left out
    pos = x > 0
    logs = np.log(np.where(pos, x, 1.0))
    log_geo = sfm.log_geometric_means("ratio", logs.sum(axis=0), pos.sum(axis=0), x.shape[0])
    assert np.isneginf(log_geo[0])
    np.testing.assert_allclose(sfm.median_ratios(sp.csr_matrix(x), log_geo), ratio_factors(x),
                               rtol=1e-12)


def bulk_screen(path) -> tuple[str, np.ndarray]:
    """40 analysed cells (NT, A, B) x 50 genes, no zero except gene 0 in one NT cell, plus 2
    cells of a group C too small to analyse (min_cells=3) with zeros in genes 1-9, which
    must not leave those genes out. Returns the path and DESeq2's ratio factors of the
    analysed cells (1 for C's cells, which the analysis does not use)."""
    rng = np.random.default_rng(7)
    labels = ["NT"] * 16 + ["A"] * 12 + ["B"] * 12 + ["C"] * 2
    depth = rng.uniform(0.3, 3.0, size=len(labels))
    mu = np.outer(depth, rng.uniform(20.0, 200.0, size=50))
    mu[np.array(labels) == "A", :5] *= 2.5
    x = rng.negative_binomial(20, 20.0 / (20.0 + mu)).astype(np.float64) + 1.0
    x[3, 0] = 0.0
    x[-2:, 1:10] = 0.0
    analysed = np.array(labels) != "C"
    sf = np.ones(len(labels))
    sf[analysed] = ratio_factors(x[analysed])
    adata = ad.AnnData(
        X=sp.csr_matrix(x.astype(np.float32)),
        obs=pd.DataFrame({"perturbation": pd.Categorical(labels), "sf": sf},
                         index=[f"cell{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(50)]))
    adata.write_h5ad(path)
    return str(path), sf


def test_ratio_size_factors_end_to_end(tmp_path):
    """--size-factors ratio runs, and its table is the one given DESeq2's ratio factors of
    the analysed cells as an obs column: equal to 1e-12, not bit for bit, as the pipeline
    sums the log counts in another order than numpy's mean."""
    path, _ = bulk_screen(tmp_path / "bulk.h5ad")

    def table(spec):
        opts = Options(groupby="perturbation", control="NT", size_factors=spec)
        run(path, opts, str(tmp_path / spec.replace(":", "_")))
        return pd.read_parquet(tmp_path / spec.replace(":", "_") / "results.parquet")

    ratio, given, library = table("ratio"), table("obs:sf"), table("library")
    assert set(ratio["perturbation"]) == {"A", "B"} and len(ratio) == 100
    num = ratio.select_dtypes("number").columns
    pd.testing.assert_frame_equal(ratio, given, check_exact=False, rtol=1e-12, atol=1e-14)
    assert not np.allclose(ratio[num].to_numpy(), library[num].to_numpy(), rtol=1e-6,
                           equal_nan=True)


def test_ratio_refused_when_every_gene_has_a_zero(tmp_path, capsys):
    if not os.path.exists(SCREEN):
        pytest.skip(f"real screen not found at {SCREEN}")
    refuse(tmp_path, capsys, SCREEN, ["--groupby", "gene", "--control", "non-targeting",
                                      "--size-factors", "ratio", "--quiet"],
           "--size-factors ratio", "every gene has a zero", "--size-factors poscounts")


@pytest.mark.parametrize("kind", ["poscounts", "ratio"])
def test_median_ratio_size_factors_refuse_csc(tmp_path, capsys, kind):
    path = write_screen(tmp_path / "csc.h5ad", x=counts() + 1, layout="csc")
    refuse(tmp_path, capsys, path, [*BASE, "--size-factors", kind, "--quiet"],
           f"--size-factors {kind}", "CSC", "tocsr()")
