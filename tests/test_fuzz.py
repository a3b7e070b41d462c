"""Fuzzing (issue 4): hypothesis draws small screens (sparsity, group sizes incl. empty and
single-cell groups, storage dtype, CSR/CSC/dense, covariates, size factors, options, chunk
sizes, in-memory or spilled counts) and
checks that every run either succeeds with a well-formed table or refuses cleanly: an
InputError of one line, and nothing written.

CI runs FUZZ_EXAMPLES (200) examples; set PERTURBGLM_FUZZ_EXAMPLES for a longer run.
"""

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import perturbglm
from perturbglm.errors import InputError
from perturbglm.io import memory

FUZZ_EXAMPLES = int(os.environ.get("PERTURBGLM_FUZZ_EXAMPLES", "200"))


@st.composite
def screens(draw):
    n_genes = draw(st.integers(1, 8))
    n_perts = draw(st.integers(1, 4))
    sizes = [draw(st.integers(0, 40))] + [draw(st.integers(0, 25)) for _ in range(n_perts)]
    labels = np.repeat(["NT"] + [f"P{i}" for i in range(n_perts)], sizes)
    if labels.size == 0:
        labels = np.array(["NT"])
    n = labels.size
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = labels[rng.permutation(n)]
    density = draw(st.sampled_from([0.0, 0.02, 0.05, 0.3, 0.6, 1.0]))
    scale = draw(st.sampled_from([0.5, 5.0, 1e4]))
    x = rng.poisson(scale, (n, n_genes)) * (rng.random((n, n_genes)) < density)
    if draw(st.booleans()):
        x[rng.integers(0, n), rng.integers(0, n_genes)] = 1_000_000
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    layout = draw(st.sampled_from(["csr", "csc", "dense"]))
    X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[layout](
        x.astype(dtype))
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels),
                        "batch": pd.Categorical(rng.choice(["b1", "b2", "b3"][:draw(
                            st.integers(1, 3))], n)),
                        "depth": rng.uniform(0.2, 5.0, n)},
                       index=[f"c{i}" for i in range(n)])
    options = {
        "covariates": draw(st.sampled_from([[], ["batch"], ["depth"], ["batch", "depth"]])),
        "size_factors": draw(st.sampled_from(["library", "poscounts", "obs:depth"])),
        "min_cells": draw(st.integers(1, 4)),
        "dispersion": draw(st.sampled_from(["per-comparison", "global"])),
        "chunk_cells": draw(st.sampled_from([None, 1, 7])),
    }
    spill = draw(st.booleans())
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    return adata, options, spill


def check_table(table: pd.DataFrame, summary: pd.DataFrame, n_genes: int):
    n_perts = len(summary)
    assert len(table) == n_perts * n_genes
    assert list(summary["perturbation"]) == sorted(summary["perturbation"])
    assert (table.groupby("perturbation")["gene"].nunique() == n_genes).all()
    p, q = table["pvalue"], table["padj"]
    ok = p.notna()
    assert (q.notna() == ok).all()
    assert p[ok].between(0, 1).all() and q[ok].between(0, 1).all()
    assert (q[ok] >= p[ok] * (1 - 1e-12)).all()
    stats = table.loc[ok, ["log2fc", "lfc_se", "stat", "dispersion"]].to_numpy()
    assert np.isfinite(stats).all()
    assert (table.loc[ok, "lfc_se"] > 0).all() and (table.loc[ok, "dispersion"] > 0).all()
    assert np.isfinite(table["base_mean"]).all() and (table["base_mean"] >= 0).all()
    for col in ("pct_perturbed", "pct_control"):
        assert table[col].between(0, 100).all()
    for label, sub in table[ok].groupby("perturbation"):
        s = sub.sort_values("pvalue", kind="stable")["padj"].to_numpy()
        assert (np.diff(s) >= -1e-15).all(), label
    tested = table.groupby("perturbation")["pvalue"].count()
    assert (summary.set_index("perturbation")["genes_tested"] == tested).all()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(screens())
def test_run_succeeds_well_formed_or_refuses_cleanly(tmp_path_factory, case):
    adata, options, spill = case
    out = str(tmp_path_factory.mktemp("fuzz") / "out")
    saved = (memory.RECORD_BYTES, memory.BLOCK_BYTES, memory.MIN_CHUNK_NNZ,
             memory.MIN_CHUNK_PER_GENE)
    # chunks of exactly chunk_cells cells (the reader otherwise coalesces small ones)
    memory.MIN_CHUNK_NNZ, memory.MIN_CHUNK_PER_GENE = 1, 0
    if spill:       # the spilled plan, one 64-gene slab per block, as a large screen runs
        memory.RECORD_BYTES, memory.BLOCK_BYTES = 10**9, 10**6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # anndata's own warnings on odd inputs
        try:
            res = perturbglm.de(adata, groupby="perturbation", control="NT", out=out,
                                threads=1, **options)
        except InputError as exc:
            message = str(exc)
            assert message and "\n" not in message
            assert not os.path.exists(out) and not os.path.exists(out + ".partial")
            return
        finally:
            (memory.RECORD_BYTES, memory.BLOCK_BYTES, memory.MIN_CHUNK_NNZ,
             memory.MIN_CHUNK_PER_GENE) = saved
    check_table(res.table, res.summary, adata.n_vars)
