"""apeGLM shrinkage (shrink="apeglm"): the compiled posterior against direct sums, its mode
against a dense optimiser, and the end-to-end result against DESeq2's lfcShrink(type="apeglm")
as PyDESeq2 0.5.4 computes it (reference/deseq2_fixed_apeglm, make_reference_apeglm.py).
"""

import math
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import REFERENCE, TARGETS
from scipy.optimize import minimize
from scipy.special import gammaln

import perturbglm
from perturbglm.io import summaries
from perturbglm.nb import shrink
from perturbglm.nb.kernels import group_moments
from perturbglm.steps.shrink import fitted_prior_var

LN2 = math.log(2)
# The prior scale of ATF2 and CD86 is apeglm's floor, 0.001: every fold change is shrunk to
# ~1e-5, where the reference carries its L-BFGS-B's stopping error (gradients up to 0.4 left
# against a curvature of 2e6: ~2e-7 in beta) and its Pearson measures that noise.
MINIMUM_SCALE_TARGETS = ["ATF2", "CD86"]


def _small_block(seed, n, q):
    """Two groups (control 0 and one perturbation) of at most EXACT_UP_TO cells, so that
    every cell is its own atom and the kernels' sums are exact."""
    rng = np.random.default_rng(seed)
    group = np.repeat([0, 1], n // 2)
    genes = 4
    mean = np.exp(rng.normal(0.5, 1.0, genes))
    effect = np.array([0.0, 0.4, -1.5, 2.0])
    sf = np.exp(rng.normal(0, 0.3, n))
    z = rng.integers(0, 2, (n, q)).astype(float)
    mu = sf[:, None] * mean[None, :] * np.exp(np.outer(group, effect) + 0.3 * z.sum(1)[:, None])
    counts = rng.negative_binomial(2, 2 / (2 + mu)).astype(float)
    at = summaries.atoms(group, sf, z, True, 2)
    store = summaries.Store(genes)
    m = sp.csr_matrix(counts)
    assert store.add(m.indptr, m.indices, m.data, 0, True, group >= 0, np.zeros(n), None) is None
    block = summaries.build_block(store, 0, store.n_slabs, group, at)
    assert np.bincount(group).max() <= summaries.EXACT_UP_TO
    return block.kernel_args(), counts, group, sf, z


def _dense_posterior(u, y, group, sf, z, theta, scale):
    """F(u) of nb/shrink.py summed cell by cell, with the NB log-likelihood in full."""
    a = math.exp(theta)
    r = 1 / a
    eta = np.where(group == 0, u[0], u[1]) + np.log(sf) + z @ u[2:]
    mu = np.exp(eta)
    ll = np.sum(gammaln(y + r) - gammaln(r) - gammaln(y + 1) + y * np.log(a * mu)
                - (y + r) * np.log1p(a * mu))
    beta = u[1] - u[0]
    normal = (u[0] ** 2 + np.sum(u[2:] ** 2)) / (2 * shrink.NO_SHRINK_SCALE ** 2)
    return ll - normal - math.log1p((beta / scale) ** 2)


def _dense_information(u, y, group, sf, z, theta, scale):
    """-Hessian of `_dense_posterior`: X' diag((y + r) r mu / (r + mu)^2) X for the design
    X = (control, perturbed, z), plus the priors' curvatures."""
    r = math.exp(-theta)
    X = np.column_stack([group == 0, group == 1, z]).astype(float)
    mu = np.exp(X @ u + np.log(sf))
    H = (X.T * ((y + r) * r * mu / (r + mu) ** 2)) @ X
    H += np.diag([1.0, 0.0] + [1.0] * z.shape[1]) / shrink.NO_SHRINK_SCALE ** 2
    beta = u[1] - u[0]
    cauchy = 2 * (scale ** 2 - beta ** 2) / (scale ** 2 + beta ** 2) ** 2
    H[:2, :2] += cauchy * np.array([[1.0, -1.0], [-1.0, 1.0]])
    return H


def _moms(g, data):
    return (group_moments(g, np.array([0]), data), group_moments(g, np.array([1]), data))


@pytest.mark.parametrize("q", [0, 2])
def test_posterior_value_gradient_and_hessian(q):
    """The compiled F against the direct sum (differences between points, as F drops
    constants; without covariates the zero-count sums come from the groups' tables, whose
    quintic Hermite interpolation is good to ~1e-10 relative of sums of ~1e1-1e2: 1e-8
    absolute; measured 2.3e-9), its gradient against central
    differences of F and M (= -Hessian) against central differences of the gradient (step
    1e-5: truncation O(1e-10) times third derivatives ~1e2, so 1e-6 relative / absolute),
    on both sides of |beta| = S (the Cauchy prior concave, then convex)."""
    data, y, group, sf, z = _small_block(3, 60, q)
    rng = np.random.default_rng(1)
    scale = 0.3
    groups = np.array([0, 1])
    for g in range(y.shape[1]):
        moms = _moms(g, data)
        for theta in (-2.0, 0.0, 1.5):
            ref = np.concatenate([[0.2, 0.2], np.zeros(q)])
            for beta in (0.05, -0.2, 0.9, -2.5):
                u = np.concatenate([[0.3 + rng.normal(0, 0.2)], [0.0], rng.normal(0, 0.2, q)])
                u[1] = u[0] + beta
                post = shrink.posterior(u, theta, groups, moms, scale, data)
                base = shrink.posterior(ref, theta, groups, moms, scale, data).value
                direct = (_dense_posterior(u, y[:, g], group, sf, z, theta, scale)
                          - _dense_posterior(ref, y[:, g], group, sf, z, theta, scale))
                assert post.value - base == pytest.approx(direct, rel=0, abs=1e-8)
                eps = 1e-5
                for i in range(u.size):
                    d = np.zeros(u.size)
                    d[i] = eps
                    hi = shrink.posterior(u + d, theta, groups, moms, scale, data)
                    lo = shrink.posterior(u - d, theta, groups, moms, scale, data)
                    assert post.grad[i] == pytest.approx((hi.value - lo.value) / (2 * eps),
                                                         rel=1e-6, abs=1e-6)
                    np.testing.assert_allclose(post.info[i], -(hi.grad - lo.grad) / (2 * eps),
                                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("q", [0, 2])
def test_shrink_pair_is_the_map(q):
    """shrink_pair's beta is the global maximum of the direct posterior: BFGS (gtol 1e-10)
    from beta = 0, the MLE and a grid of starts, the best kept, agrees to 1e-6 (the
    optimiser's own precision on a posterior curvature of ~1e2); its SD is the inverse
    Hessian's, from the direct (cell by cell) Hessian, to 1e-6 relative (the climb's last
    step, below 1e-8, is taken without re-evaluating the Hessian: O(1e-8) relative). Scales
    from strong shrinkage (0.01) to weak (1); without covariates, gene 2 (MLE -1.13) has two
    modes at S = 0.01 and 0.05, the one towards the MLE the higher."""
    data, y, group, sf, z = _small_block(5, 60, q)
    groups = np.array([0, 1])
    two_modes = 0
    for g in range(y.shape[1]):
        theta = math.log(0.5)
        mle_fit = minimize(lambda u, g=g, theta=theta: -_dense_posterior(u, y[:, g], group, sf,
                                                                         z, theta, 1e12),
                           np.zeros(2 + q), method="BFGS", options={"gtol": 1e-10})
        lfc = mle_fit.x[1] - mle_fit.x[0]
        for scale in (0.01, 0.05, 0.3, 1.0):
            def neg(u, g=g, scale=scale, theta=theta):
                return -_dense_posterior(u, y[:, g], group, sf, z, theta, scale)

            fits = [minimize(neg, np.concatenate([[mle_fit.x[0], mle_fit.x[0] + beta],
                                                  mle_fit.x[2:]]),
                             method="BFGS", options={"gtol": 1e-10})
                    for beta in np.linspace(min(0, lfc), max(0, lfc), 7)]
            best = min(fits, key=lambda f: f.fun).x
            two_modes += max(f.fun for f in fits) - min(f.fun for f in fits) > 0.1
            start = np.concatenate([[mle_fit.x[0] + 0.1, 0.0], np.zeros(q)])
            beta, sd = shrink.shrink_pair(theta, groups, _moms(g, data), start, lfc, 0.3,
                                          scale, data)
            assert beta == pytest.approx(best[1] - best[0], abs=1e-6)
            H = _dense_information(best, y[:, g], group, sf, z, theta, scale)
            v = np.zeros(best.size)
            v[:2] = [-1, 1]
            assert sd == pytest.approx(math.sqrt(v @ np.linalg.solve(H, v)), rel=1e-6)
    assert two_modes == (2 if q == 0 else 0)


def test_prior_variance_solves_its_equation():
    """fitted_prior_var is the root of apeglm's priorVar equation (to 1e-12), floored at
    0.001^2 when the fold changes are no larger than their SEs."""
    rng = np.random.default_rng(0)
    se = rng.uniform(0.05, 1.0, 500)
    lfc = rng.normal(0, np.sqrt(0.04 + se ** 2))
    var = fitted_prior_var(lfc, se)
    w = 1 / (2 * (var + se ** 2) ** 2)
    assert np.sum((lfc ** 2 - se ** 2) * w) / np.sum(w) == pytest.approx(var, rel=1e-12)
    assert 0.02 < var < 0.08
    assert fitted_prior_var(rng.normal(0, se * 0.5), se) == 1e-6
    assert fitted_prior_var(np.append(lfc, np.nan), np.append(se, 1.0)) == var


@pytest.fixture(scope="module")
def plain(screen):
    return perturbglm.de(screen, groupby="gene", control="non-targeting",
                         size_factors="obs:size_factor", shrink="apeglm")


@pytest.fixture(scope="module")
def rep(screen):
    return perturbglm.de(screen, groupby="gene", control="non-targeting",
                         size_factors="obs:size_factor", covariates=["bio_rep"],
                         shrink="apeglm")


def _joined(result, design, target):
    ref = pd.read_csv(os.path.join(REFERENCE, "deseq2_fixed_apeglm", design,
                                   f"apeglm_{target}.csv"), index_col="gene")
    ours = result.perturbation(target).set_index("gene").loc[ref.index]
    return ours, ref


def _pearson(ours, ref):
    """Over genes where both are finite: ours is NaN where our MLE is, i.e. where the
    perturbation has no counts (DESeq2's MLE there is finite but meaningless, ~ -15 with an
    SE of ~100, shrunk to ~0)."""
    ok = np.isfinite(ours["log2fc_shrunk"]) & np.isfinite(ref["log2FoldChange"])
    assert (np.isfinite(ours["log2fc_shrunk"]) == np.isfinite(ours["log2fc"])).all()
    return np.corrcoef(ours["log2fc_shrunk"][ok], ref["log2FoldChange"][ok])[0, 1]


@pytest.mark.parametrize("design", ["plain", "rep"])
@pytest.mark.parametrize("target", [t for t in TARGETS if t not in MINIMUM_SCALE_TARGETS])
def test_shrunken_lfc_matches_reference(plain, rep, design, target):
    """The issue's target: Pearson >= 0.999 with the reference's shrunken log2 fold change.
    Measured (plain / rep): IFNGR1 0.9999993 / 0.9999997, IRF1 0.9999991 / 0.9999410, MYC
    0.9999997 / 0.9999785, NFKBIA 0.9999997 / 0.9999983, SPI1 0.9999208 / 0.9996932, STAT2
    0.9999998 / 0.9999975."""
    ours, ref = _joined(plain if design == "plain" else rep, design, target)
    assert _pearson(ours, ref) >= 0.999


@pytest.mark.parametrize("design", ["plain", "rep"])
@pytest.mark.parametrize("target", MINIMUM_SCALE_TARGETS)
def test_minimum_scale_targets(plain, rep, design, target):
    """ATF2 and CD86: the prior scale sits at apeglm's floor 0.001, in ours as in the
    reference, so every fold change is ~1e-5 and the Pearson of the issue's target measures
    the reference's optimiser error (measured: ATF2 0.9906 / 0.9945, CD86 0.28 / 0.29;
    re-running PyDESeq2's nbinomGLM on the reference's own inputs reproduces its values to
    1e-10, and Newton's method on the same objective moves them by up to 2e-6). So the
    assertion is absolute: within 5e-5 (log2) of the reference (measured at most 3.1e-5),
    but for CD86's SDSL, where the reference reports -0.106, a local mode of the posterior
    5.1 log units below the mode at ~0 that we report (its L-BFGS-B starts at beta = -0.1)."""
    ours, ref = _joined(plain if design == "plain" else rep, design, target)
    diff = (ours["log2fc_shrunk"] - ref["log2FoldChange"]).abs()
    if target == "CD86":
        assert ref.loc["SDSL", "log2FoldChange"] < -0.09
        assert abs(ours.loc["SDSL", "log2fc_shrunk"]) < 1e-3
        diff = diff.drop("SDSL")
    assert diff.max() < 5e-5


def test_two_modes_the_higher_is_kept(plain):
    """IRF1's FCRL1 (1 count in 24 perturbed cells' worth of expectation; MLE -3.4, SE 1.5)
    has two posterior modes at IRF1's prior scale, near -0.21 and -1.98 (log2): the second
    is higher, and the reference's. A search from 0 alone stops at the first."""
    ours, ref = _joined(plain, "plain", "IRF1")
    assert ours.loc["FCRL1", "log2fc_shrunk"] == pytest.approx(
        ref.loc["FCRL1", "log2FoldChange"], abs=0.01)


def test_posterior_sd_against_reference(plain, rep):
    """lfc_se_shrunk is sqrt of the inverse Hessian at the mode (apeglm's). The reference's
    lfcSE is not: PyDESeq2 0.5.4's nbinomGLM adds its diagonal prior curvatures to every row
    of their column (np.diag of a matrix is its diagonal), which the reference reproduces to
    a median 1e-5 relative, and which inflates the SD most where the prior dominates (ATF2,
    CD86: median 17% apart). Where the data dominate (SPI1, IFNGR1, MYC: prior scale >= 0.09
    and large effects) the two agree: median relative difference measured 0.4-3.2%, asserted
    below 5%."""
    for result, design in ((plain, "plain"), (rep, "rep")):
        for target in ("SPI1", "IFNGR1", "MYC"):
            ours, ref = _joined(result, design, target)
            ok = np.isfinite(ours["lfc_se_shrunk"]) & np.isfinite(ref["lfcSE"])
            rel = np.median(np.abs(ours["lfc_se_shrunk"][ok] / ref["lfcSE"][ok] - 1))
            assert rel < 0.05, (design, target, rel)


def test_shrink_none_adds_nothing_and_changes_nothing(screen):
    """shrink="none" (the default) writes exactly the columns it wrote before; "apeglm" adds
    log2fc_shrunk and lfc_se_shrunk and leaves every other column bit-identical."""
    import anndata as ad

    adata = ad.read_h5ad(screen)
    adata = adata[adata.obs["gene"].isin(["non-targeting", "IRF1", "MYC"])].copy()
    kw = dict(groupby="gene", control="non-targeting", size_factors="obs:size_factor")
    none = perturbglm.de(adata, **kw).table
    ape = perturbglm.de(adata, shrink="apeglm", **kw).table
    base = list(none.columns)
    assert base[:3] == ["perturbation", "gene", "base_mean"] and "log2fc_shrunk" not in base
    assert list(ape.columns) == base + ["log2fc_shrunk", "lfc_se_shrunk"]
    pd.testing.assert_frame_equal(none, ape[base], check_exact=True)
    assert np.array_equal(np.isnan(ape["log2fc_shrunk"]), np.isnan(ape["log2fc"]))
    # The Cauchy prior pulls towards 0, within [0, MLE]; the intercept's N(0, 15^2) prior
    # moves b_c, and so beta, by ~|b_c| / (225 I_c) beyond it (measured at most 8e-5 log2
    # over the whole screen with dispersion="global"; 0 here): 1e-3 allowed.
    finite = np.isfinite(ape["log2fc"])
    assert (ape["log2fc_shrunk"][finite].abs() <= ape["log2fc"][finite].abs() + 1e-3).all()
