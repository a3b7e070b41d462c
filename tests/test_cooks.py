"""Cook's distances (max_cooks) and DESeq2's outlier rule (outliers="filter" | "off").

References: R DESeq2 1.38.3's mcols(dds)$maxCooks after nbinomWaldTest(minmu = 1e-6) at the
"fixed" pipeline's dispersions, and results()' default Cook's rule
(reference/deseq2_fixed_cooks); and a dense evaluation of DESeq2's formulas in numpy that
visits every cell (`dense_cooks`), checked against that reference on the real screen to
3e-4 relative (its own IRLS at R's dispersions; measured 1e-6 median, 5.5e-4 at worst).
"""

import math
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import REFERENCE, TARGETS
from scipy.optimize import minimize
from scipy.stats import f as f_dist

import perturbglm

SCREEN_ARGS = {"groupby": "gene", "control": "non-targeting", "size_factors": "obs:size_factor"}


def _r_trimmed_mean(x, trim):
    """R's mean(x, trim): drop floor(n trim) sorted values at each end."""
    lo = int(math.floor(x.size * trim))
    return np.sort(x)[lo:x.size - lo].mean()


def _trim(n):
    return (1 / 3, 2.04) if n <= 3 else (0.25, 1.86) if n <= 23 else (0.125, 1.51)


def _nb_mle(y, sf, X, alpha, start):
    """The NB maximum-likelihood coefficients at dispersion alpha (L-BFGS-B within DESeq2's
    +-30 bounds, as DESeq2's optim fallback), from `start`. Plain IRLS oscillates on flat
    likelihoods (a count of 1000 among ones at a dispersion of 25)."""
    def nll(b):
        mu = sf * np.exp(X @ b)
        return -np.sum(y * np.log(alpha * mu / (1 + alpha * mu)) - np.log1p(alpha * mu) / alpha)

    return minimize(nll, start, method="L-BFGS-B", bounds=[(-30, 30)] * X.shape[1],
                    options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000}).x


def dense_cooks(y, sf, X, alpha, minmu=1e-6):
    """DESeq2's Cook's distances of every cell (cells x genes) and maxCooks per gene, for
    counts y (cells x genes), size factors sf, model matrix X and dispersions alpha, with
    nothing skipped: an IRLS fit per gene (DESeq2's fitBeta: means floored at minmu in the
    weights, ridge 1e-6, coefficients bounded at 30, L-BFGS-B where it does not converge),
    hat values at the fit, the robust
    dispersion of robustMethodOfMomentsDisp, and the maximum over cells of model-matrix rows
    seen 3 times or more (recordMaxCooks). NaN for genes without counts."""
    n, p = X.shape
    norm = y / sf[:, None]
    _, row = np.unique(X, axis=0, return_inverse=True)
    row = row.ravel()
    big = np.bincount(row) >= 3
    cooks = np.full(y.shape, np.nan)
    for g in range(y.shape[1]):
        yg = y[:, g]
        if yg.sum() == 0:
            continue
        beta = np.linalg.lstsq(X, np.log(norm[:, g] + 0.1), rcond=None)[0]
        for _ in range(300):
            mu = np.maximum(sf * np.exp(X @ beta), minmu)
            w = mu / (1 + alpha[g] * mu)
            z = np.log(mu / sf) + (yg - mu) / mu
            xtwx = X.T @ (X * w[:, None]) + 1e-6 * np.eye(p)
            new = np.clip(np.linalg.solve(xtwx, X.T @ (w * z)), -30, 30)
            done = np.max(np.abs(new - beta)) < 1e-12
            beta = new
            if done:
                break
        if not done:     # DESeq2's fitBeta refits rows its IRLS left unconverged by optim
            beta = _nb_mle(yg, sf, X, alpha[g], beta)
        mu_w = np.maximum(sf * np.exp(X @ beta), minmu)
        w = mu_w / (1 + alpha[g] * mu_w)
        xtwx = X.T @ (X * w[:, None]) + 1e-6 * np.eye(p)
        h = w * np.einsum("ij,jk,ik->i", X, np.linalg.inv(xtwx), X)
        mu = sf * np.exp(X @ beta)
        v = -np.inf
        for r in np.flatnonzero(big):
            x = norm[row == r, g]
            trim, scale = _trim(x.size)
            v = max(v, scale * _r_trimmed_mean((x - _r_trimmed_mean(x, trim)) ** 2, trim))
        m = norm[:, g].mean()
        a_r = max((v - m) / m**2, 0.04)
        cooks[:, g] = (yg - mu) ** 2 / (mu + a_r * mu**2) / p * h / (1 - h) ** 2
    counted = big[row]
    return cooks, np.max(np.where(counted[:, None], cooks, -np.inf), axis=0)


def dense_outliers(y, cooks, max_cooks, p, two_groups):
    """results()' Cook's rule: maxCooks > qf(.99, p, m - p), except (one two-level factor)
    where 3 or more counts exceed the count of the cell with the largest distance."""
    out = max_cooks > f_dist.ppf(0.99, p, y.shape[0] - p)
    for g in np.flatnonzero(out):
        if two_groups and np.sum(y[:, g] > y[np.nanargmax(cooks[:, g]), g]) >= 3:
            out[g] = False
    return out


def _screen(seed=3):
    """A small screen with what Cook's distances must handle: a 300-cell control, groups of
    120, 40 and 5 cells (the last with covariate strata under 3 cells), three replicates,
    genes from very sparse to ~20 counts per cell with dispersions 0.05-5, a gene the small
    group never expresses, and planted outlier counts in control and perturbed cells (a
    count above its stratum's total Fisher weight sends the control's maximum to the visit
    of every non-zero cell)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["non-targeting", "P1", "P2", "P3"], [300, 120, 40, 5])
    rng.shuffle(labels)
    n, genes = labels.size, 40
    sf = np.exp(rng.normal(0, 0.5, n))
    rep = rng.choice(["r1", "r2", "r3"], n)
    mean = np.exp(rng.uniform(np.log(0.01), np.log(20), genes))
    alpha = np.exp(rng.uniform(np.log(0.05), np.log(5), genes))
    effect = np.ones((n, genes))
    effect[labels == "P1", :5] = 3.0
    effect[labels == "P2", 5:10] = 0.2
    mu = sf[:, None] * mean[None, :] * effect * np.where(rep == "r2", 1.5, 1.0)[:, None]
    y = rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu))
    y[labels == "P3", 0] = 0
    for g, lab in [(11, "P1"), (12, "non-targeting"), (13, "P2"), (14, "non-targeting")]:
        y[np.flatnonzero(labels == lab)[0], g] = 1000
    obs = pd.DataFrame({"gene": labels, "bio_rep": rep, "size_factor": sf},
                       index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(y.astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))


@pytest.mark.parametrize("covariates", [(), ("bio_rep",)])
def test_max_cooks_visits_no_cell_in_vain(covariates):
    """Every (perturbation, gene)'s max_cooks equals the dense evaluation over every cell at
    perturbglm's final dispersions, to 1e-4 relative: the package's own Wald fit differs
    from the dense IRLS by up to 4e-5 in log2fc here (the control's MLE is interpolated in
    its table, its size factors binned in atoms), which moves Cook's distances by up to
    3e-5 relative (measured); a cell missed by the candidate search would be off by far
    more. And the outlier rule removes exactly the p-values the dense rule flags."""
    adata = _screen()
    res = perturbglm.de(adata, covariates=list(covariates), **SCREEN_ARGS)
    y = adata.X.toarray().astype(float)
    labels = adata.obs["gene"].to_numpy()
    compared = 0
    for target in ("P1", "P2", "P3"):
        keep = np.isin(labels, ["non-targeting", target])
        ours = res.perturbation(target).set_index("gene").loc[adata.var_names]
        pert = (labels[keep] == target).astype(float)
        X = np.column_stack([np.ones(keep.sum()), pert])
        if covariates:
            rep = adata.obs["bio_rep"].to_numpy()[keep]
            X = np.column_stack([X, rep == "r2", rep == "r3"]).astype(float)
        cooks, mx = dense_cooks(y[keep], adata.obs["size_factor"].to_numpy()[keep], X,
                                ours["dispersion"].to_numpy())
        np.testing.assert_allclose(ours["max_cooks"], mx, rtol=1e-4)
        flagged = dense_outliers(y[keep], cooks, mx, X.shape[1], not covariates)
        tested = ours["log2fc"].notna().to_numpy()
        assert np.array_equal(ours["pvalue"].isna().to_numpy() & tested, flagged & tested)
        compared += tested.sum()
    assert compared > 80


def test_planted_outlier_is_filtered():
    """A count of 1000 in one perturbed cell of a gene at ~1 count per cell: its Cook's
    distance is far above the cutoff and 2 or fewer counts are larger, so with the default
    rule the pair's p-value is NaN (and left out of BH); outliers="off" keeps it, every other
    p-value the same, and computes no Cook's distance (no max_cooks column)."""
    adata = _screen()
    filtered = perturbglm.de(adata, **SCREEN_ARGS).perturbation("P1").set_index("gene")
    kept = perturbglm.de(adata, outliers="off", **SCREEN_ARGS).perturbation("P1")
    kept = kept.set_index("gene")
    cutoff = f_dist.ppf(0.99, 2, 420 - 2)
    assert filtered.loc["g11", "max_cooks"] > 10 * cutoff
    assert np.isnan(filtered.loc["g11", "pvalue"]) and np.isnan(filtered.loc["g11", "padj"])
    assert np.isfinite(kept.loc["g11", "pvalue"])
    assert "max_cooks" not in kept.columns
    removed = filtered["pvalue"].isna() & kept["pvalue"].notna()
    np.testing.assert_array_equal(filtered["pvalue"][~removed], kept["pvalue"][~removed])
    assert set(removed[removed].index) == set(filtered.index[filtered["max_cooks"] > cutoff]
                                              ) - set(filtered.index[filtered["log2fc"].isna()])
    # BH over the p-values left: the largest kept p-value's padj uses their number
    p = filtered["pvalue"].dropna()
    assert filtered["padj"].dropna().size == p.size
    assert filtered.loc[p.idxmax(), "padj"] == pytest.approx(min(1.0, p.max()))


@pytest.fixture(scope="module", params=["plain", "rep"])
def real(request, screen):
    covariates = ["bio_rep"] if request.param == "rep" else []
    return request.param, perturbglm.de(screen, covariates=covariates, **SCREEN_ARGS)


@pytest.mark.parametrize("target", TARGETS)
def test_max_cooks_matches_deseq2(real, target):
    """maxCooks within 1% median relative difference (measured: 2e-5 to 3e-4, worst gene
    2.3e-2, where the dispersions differ most), and exactly DESeq2's pairs filtered."""
    design, res = real
    ref = pd.read_csv(os.path.join(REFERENCE, "deseq2_fixed_cooks", design,
                                   f"cooks_{target}.csv"), index_col="gene")
    ours = res.perturbation(target).set_index("gene").loc[ref.index]
    rel = np.abs(ours["max_cooks"] / ref["maxCooks"] - 1)
    assert rel.notna().all()
    assert np.median(rel) <= 0.01
    ours_removed = ours["pvalue"].isna() & ours["log2fc"].notna()
    tested = ours["log2fc"].notna()
    assert list(ref.index[ref["cooksOutlier"] & tested]) == list(ref.index[ours_removed])


@pytest.mark.parametrize("n", [3, 4, 23, 24, 200])
@pytest.mark.parametrize("nonzero", [0.0, 0.1, 0.6, 1.0])
def test_trimmed_cell_variance_sorts_only_non_zeros(n, nonzero):
    """The kernel's trimmed variance, which sorts only the non-zero normalised counts and
    places the zeros as one block, equals R's scale * mean((x - mean(x, trim))^2, trim) on
    the whole vector, for each of trimmedCellVariance's three trims; to 1e-12 relative
    (summation order only)."""
    from collections import namedtuple

    from perturbglm.nb import cooks

    rng = np.random.default_rng(n)
    Data = namedtuple("Data", ["nz", "cell_logs"])
    for _ in range(20):
        r = int(round(nonzero * n))
        cells = rng.choice(n, r, replace=False)
        y = rng.negative_binomial(1, 0.2, r) + 1
        logs = rng.normal(0, 0.5, n)
        data = Data(np.column_stack([cells, y]).astype(np.int32), logs)
        x = np.zeros(n)
        x[cells] = y * np.exp(-logs[cells])
        trim, scale = _trim(n)
        want = scale * _r_trimmed_mean((x - _r_trimmed_mean(x, trim)) ** 2, trim)
        got = cooks.trimmed_cell_variance(np.arange(r, dtype=np.int64), n, data)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300)
