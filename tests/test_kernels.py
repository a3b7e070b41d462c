"""The compiled maths against direct evaluation with scipy."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import digamma as sp_digamma
from scipy.special import gammaln, polygamma
from scipy.stats import false_discovery_control

from perturbglm.io import summaries
from perturbglm.nb import hermite, kernels, special
from perturbglm.steps.pvalues import bh


def test_two_sided_p_against_scipy():
    """p-values from math.erfc equal scipy's 2 * ndtr(-|z|) to 1e-12 relative, down to the
    smallest representable tail, with NaN kept."""
    from scipy.special import ndtr

    z = np.concatenate([np.linspace(-38, 38, 1001), [np.nan, np.inf, 0.0]]).reshape(4, -1)
    p = special.two_sided_p(z)
    q = 2 * ndtr(-np.abs(z))
    assert np.array_equal(np.isnan(p), np.isnan(q))
    ok = q > 0
    assert np.allclose(p[ok], q[ok], rtol=1e-12, atol=0)


def test_polygamma_against_scipy():
    x = np.geomspace(1e-6, 1e8, 200)
    assert np.allclose([special.digamma(v) for v in x], sp_digamma(x), rtol=1e-11, atol=0)
    assert np.allclose([special.trigamma(v) for v in x], polygamma(1, x), rtol=1e-11, atol=0)


@pytest.mark.parametrize("y", [0, 1, 3, 64, 65, 1000, 1e6])
@pytest.mark.parametrize("r", [1e-4, 0.7, 30.0, 1e7])
def test_lgamma_ratio(y, r):
    val, d1, d2 = special.lgamma_ratio(float(y), r)
    assert val == pytest.approx(gammaln(y + r) - gammaln(r), rel=1e-9, abs=1e-6)
    assert d1 == pytest.approx(sp_digamma(y + r) - sp_digamma(r), rel=1e-7, abs=1e-12)
    assert d2 == pytest.approx(polygamma(1, y + r) - polygamma(1, r), rel=1e-6, abs=1e-14)


def _small_block(seed=0, n=300, genes=3, groups=2, q=0):
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.negative_binomial(2, 0.7, (n, genes)).astype(float))
    group = rng.integers(0, groups, n)
    sf = np.exp(rng.normal(0, 0.3, n))
    z = rng.integers(0, 2, (n, q)).astype(float)
    at = summaries.atoms(group, sf, z, True, groups)
    store = summaries.Store(genes)
    assert store.add(counts.indptr, counts.indices, counts.data, 0, True, group >= 0,
                     np.zeros(n), None) is None
    block = summaries.build_block(store, 0, store.n_slabs, group, at)
    return block, counts.toarray(), group, sf, z


def _profile(theta, b, c, g, k, data, minmu):
    """The package's profile of one group at intercept b."""
    state = kernels.fixed_mu(np.full(1, k), np.full(1, b), c, g, data)
    return kernels.profile(theta, state, data, minmu)


def _direct_profile(theta, b, c, y, sf, z, minmu):
    a = math.exp(theta)
    mu = np.maximum(np.exp(b + np.log(sf) + z @ c), minmu)
    r = 1 / a
    ll = np.sum(gammaln(y + r) - gammaln(r) - y * np.log(mu + r) - r * np.log1p(a * mu))
    return ll - 0.5 * np.log(np.sum(mu / (1 + a * mu)))


def test_profile_matches_direct_sum():
    """Exact atoms (groups under EXACT_UP_TO cells): agreement to rounding; derivatives
    checked by central differences (step 1e-4, error O(1e-8))."""
    block, y, group, sf, z = _small_block(n=50)
    assert np.bincount(group).max() <= summaries.EXACT_UP_TO
    args = block.kernel_args()
    c = np.zeros(0)
    for g in range(y.shape[1]):
        for k in range(2):
            cells = group == k
            b = math.log(y[cells, g].mean() + 0.01)
            for theta in (-6.0, -1.0, 0.5, 3.0):
                h, h1, h2 = _profile(theta, b, c, g, k, args, 1e-6)
                direct = _direct_profile(theta, b, c, y[cells, g], sf[cells], z[cells], 1e-6)
                assert h == pytest.approx(direct, rel=1e-10)
                eps = 1e-4
                hp = _profile(theta + eps, b, c, g, k, args, 1e-6)[0]
                hm = _profile(theta - eps, b, c, g, k, args, 1e-6)[0]
                assert h1 == pytest.approx((hp - hm) / (2 * eps), rel=1e-6, abs=1e-6)
                assert h2 == pytest.approx((hp - 2 * h + hm) / eps**2, rel=1e-4, abs=1e-4)


def test_binned_atoms_are_accurate():
    """A group above EXACT_UP_TO cells uses ATOM_BINS size-factor bins with second-order
    expansions about each bin's mean (kernels.py): the neglected terms are third order in
    the bin half-width (~0.035 here), so the profile agrees to ~1e-7 relative (tolerance
    2e-7), its derivatives match central differences, and the optimal log dispersion moves
    by < 1e-5."""
    from scipy.optimize import minimize_scalar

    block, y, group, sf, z = _small_block(n=4000, groups=1)
    assert block.atoms.atom_ptr[1] <= summaries.ATOM_BINS
    args = block.kernel_args()
    c = np.zeros(0)
    for g in range(y.shape[1]):
        b = math.log(y[:, g].mean())
        for theta in (-3.0, 0.0, 2.0):
            h, h1, h2 = _profile(theta, b, c, g, 0, args, 1e-6)
            assert h == pytest.approx(_direct_profile(theta, b, c, y[:, g], sf, z, 1e-6),
                                      rel=2e-7)
            eps = 1e-4
            hp = _profile(theta + eps, b, c, g, 0, args, 1e-6)[0]
            hm = _profile(theta - eps, b, c, g, 0, args, 1e-6)[0]
            assert h1 == pytest.approx((hp - hm) / (2 * eps), rel=1e-6, abs=1e-6)
            assert h2 == pytest.approx((hp - 2 * h + hm) / eps**2, rel=1e-4, abs=1e-4)
        binned = minimize_scalar(lambda t, b=b, g=g: -_profile(t, b, c, g, 0, args, 1e-6)[0],
                                 bounds=(-6, 4), method="bounded", options={"xatol": 1e-10}).x
        exact = minimize_scalar(lambda t, b=b, g=g: -_direct_profile(t, b, c, y[:, g], sf, z,
                                                                     1e-6),
                                bounds=(-6, 4), method="bounded", options={"xatol": 1e-10}).x
        assert abs(binned - exact) < 1e-5


def test_binned_group_mle_is_accurate():
    """The intercept MLE and Fisher information of a binned group (same expansions, same
    ~1e-7 relative tolerance as the profile)."""
    block, y, group, sf, z = _small_block(n=4000, groups=1, q=0)
    args = block.kernel_args()
    for theta in (-2.0, 0.0, 1.0):
        b, fisher, _, _ = kernels.group_mle(theta, np.zeros(0), 0, 0, args, 1e-6)
        a = math.exp(theta)
        mu = np.exp(b + np.log(sf))
        score = np.sum((y[:, 0] - mu) / (1 + a * mu))
        assert abs(score) < 1e-6 * np.sum(mu / (1 + a * mu))
        assert fisher == pytest.approx(np.sum(mu / (1 + a * mu)), rel=2e-7)


def test_group_mle_solves_the_score_equation():
    """Exact atoms (strata of at most EXACT_UP_TO cells): the score vanishes to rounding."""
    block, y, group, sf, z = _small_block(n=100, q=1)
    assert block.atoms.atom_stats[:, 1].max() == 1
    args = block.kernel_args()
    c = np.array([0.3])
    for theta in (-2.0, 0.0, 1.0):
        b, fisher, _, _ = kernels.group_mle(theta, c, 1, 0, args, 1e-6)
        a = math.exp(theta)
        cells = group == 0
        mu = np.exp(b + np.log(sf[cells]) + z[cells] @ c)
        score = np.sum((y[cells, 1] - mu) / (1 + a * mu))
        assert abs(score) < 1e-8
        assert fisher == pytest.approx(np.sum(mu / (1 + a * mu)), rel=1e-10)


def test_hermite_interpolation():
    x0, h = -3.0, 0.5
    nodes = x0 + h * np.arange(20)
    f, d1, d2 = np.sin(nodes), np.cos(nodes), -np.sin(nodes)
    for x in np.linspace(-2.9, 5.9, 37):
        v, v1, v2 = hermite.quintic_hermite(x, x0, h, np.array([f, d1, d2]), 0, 0, f.size)
        assert v == pytest.approx(math.sin(x), abs=1e-6)
        assert v1 == pytest.approx(math.cos(x), abs=1e-4)
        assert v2 == pytest.approx(-math.sin(x), abs=1e-2)
        assert hermite.cubic_hermite(x, x0, h, f, d1) == pytest.approx(math.sin(x), abs=1e-3)


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(1)
    p = rng.random(500) ** 3
    p[::7] = np.nan
    ours = bh(p)
    ok = np.isfinite(p)
    assert np.allclose(ours[ok], false_discovery_control(p[ok]))
    assert np.all(np.isnan(ours[~ok]))


def _dense_irls(y, X, sf, alpha, minmu, beta):
    """DESeq2's fitBeta IRLS (means floored at minmu in the weights and the working
    response), run to its fixed point."""
    for _ in range(500):
        mu = np.maximum(sf * np.exp(X @ beta), minmu)
        w = mu / (1 + alpha * mu)
        zr = np.log(mu / sf) + (y - mu) / mu
        beta = np.linalg.solve(X.T @ (X * w[:, None]), X.T @ (w * zr))
    return beta


@pytest.mark.parametrize("minmu", [1.0, 1e-6])
def test_joint_fit_reaches_deseq2_irls_fixed_point(minmu):
    """Exact atoms: the joint fit of two groups' intercepts and a shared covariate equals
    DESeq2's IRLS fixed point, with a floor of 1 binding on most cells (mean counts ~0.9)
    or idle at 1e-6, to 1e-8; its contrast variance equals the (1,1) element of the inverse
    information of the one-hot design (b0, b1 - b0, c) to 1e-10 relative."""
    block, y, group, sf, z = _small_block(n=100, q=1)
    assert block.atoms.atom_stats[:, 1].max() == 1
    args = block.kernel_args()
    ks = np.array([0, 1])
    X = np.column_stack([group == 0, group == 1, z]).astype(float)
    theta = math.log(0.7)
    if minmu == 1.0:
        fixed_point = _dense_irls(y[:, 0], X, sf, 0.7, minmu, np.zeros(3))
        assert np.mean(sf * np.exp(X @ fixed_point) < minmu) > 0.5
    for g in range(y.shape[1]):
        b, c, bounded = kernels.joint_fit(theta, ks, kernels.group_moments(g, ks, args),
                                          np.zeros(2), np.zeros(1), args, minmu)
        assert not bounded
        dense = _dense_irls(y[:, g], X, sf, 0.7, minmu, np.zeros(3))
        assert np.allclose(np.append(b, c), dense, atol=1e-8)
        D, B, C, sb, sc = kernels.joint_terms(theta, ks, kernels.group_moments(g, ks, args),
                                              b, c, args, minmu)
        mu = np.maximum(sf * np.exp(X @ dense), minmu)
        contrast = np.column_stack([np.ones(len(y)), group == 1, z]).astype(float)
        info = contrast.T @ (contrast * (mu / (1 + 0.7 * mu))[:, None])
        assert kernels.contrast_variance(D[0], B[0], C[0]) == pytest.approx(
            np.linalg.inv(info)[1, 1], rel=1e-10)


def test_cox_reid_determinant_with_covariates():
    """The Cox-Reid term with covariates, sum_k log D_k (profile) + log det S (schur_terms),
    is log det X'WX of the one-hot design with covariates, to rounding (exact atoms), and
    its theta derivatives match central differences (step 1e-4)."""
    from perturbglm.nb.stages import _log_det_terms

    block, y, group, sf, z = _small_block(n=60, q=2)
    assert block.atoms.atom_stats[:, 1].max() == 1
    args = block.kernel_args()
    ks = np.array([0, 1])
    X = np.column_stack([group == 0, group == 1, z]).astype(float)
    b = np.array([-0.3, 0.2])
    c = np.array([0.4, -0.5])
    mu = np.exp(X @ np.append(b, c) + np.log(sf))
    state = kernels.fixed_mu(ks, b, c, 0, args)

    def cr(theta):
        w = mu / (1 + math.exp(theta) * mu)
        D = [np.sum(w[group == k]) for k in ks]
        return np.log(D).sum() + _log_det_terms(kernels.schur_terms(theta, state, args, 1e-6))[0]

    for theta in (-2.0, 0.0, 1.5):
        w = mu / (1 + math.exp(theta) * mu)
        assert cr(theta) == pytest.approx(np.linalg.slogdet(X.T @ (X * w[:, None]))[1],
                                          rel=1e-10)
        _, L1, L2 = _log_det_terms(kernels.schur_terms(theta, state, args, 1e-6))
        eps = 1e-4
        lp = _log_det_terms(kernels.schur_terms(theta + eps, state, args, 1e-6))[0]
        lm = _log_det_terms(kernels.schur_terms(theta - eps, state, args, 1e-6))[0]
        l0 = _log_det_terms(kernels.schur_terms(theta, state, args, 1e-6))[0]
        assert L1 == pytest.approx((lp - lm) / (2 * eps), rel=1e-6, abs=1e-8)
        assert L2 == pytest.approx((lp - 2 * l0 + lm) / eps**2, rel=1e-4, abs=1e-6)
