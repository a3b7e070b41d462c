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
        S = kernels.schur_terms(theta, state, args, 1e-6)[0]
        return np.log(D).sum() + _log_det_terms(S)[0]

    for theta in (-2.0, 0.0, 1.5):
        w = mu / (1 + math.exp(theta) * mu)
        assert cr(theta) == pytest.approx(np.linalg.slogdet(X.T @ (X * w[:, None]))[1],
                                          rel=1e-10)
        _, L1, L2 = _log_det_terms(kernels.schur_terms(theta, state, args, 1e-6)[0])
        eps = 1e-4
        lp = _log_det_terms(kernels.schur_terms(theta + eps, state, args, 1e-6)[0])[0]
        lm = _log_det_terms(kernels.schur_terms(theta - eps, state, args, 1e-6)[0])[0]
        l0 = _log_det_terms(kernels.schur_terms(theta, state, args, 1e-6)[0])[0]
        assert L1 == pytest.approx((lp - lm) / (2 * eps), rel=1e-6, abs=1e-8)
        assert L2 == pytest.approx((lp - 2 * l0 + lm) / eps**2, rel=1e-4, abs=1e-6)


def test_comparison_state_from_control_atoms():
    """A comparison's state built from the control's per-atom count moments
    (`with_control`) plus the control's log-gamma terms (tabulated per gene by
    stages.control_tables) is the full state of both groups: same profile and Schur
    complement to rounding (1e-12), so a comparison never visits the control's cells. A few
    counts above special.SMALL_COUNT exercise the large-count terms."""
    _, y, group, sf, z = _small_block(seed=3, n=400, q=1)
    rng = np.random.default_rng(3)
    y[rng.choice(400, 6, replace=False), 0] = [70, 80, 150, 300, 1000, 65]
    block = _small_block_from(y, group, sf, z)
    assert block.atoms.atom_stats[:, 1].max() > 1     # binned atoms: moments matter
    args = block.kernel_args()
    b = np.array([-0.6, 0.3])
    c = np.array([0.4])
    full = kernels.fixed_mu(np.array([0, 1]), b, c, 0, args)
    assert full[5][1] > 0                                 # the control has large counts
    group_only = kernels.fixed_mu(np.array([1]), b[1:], c, 0, args)
    pair = kernels.with_control(group_only, 0, b[0], kernels.atom_moments(0, 0, args), args)
    tail, big = full[7][0], full[6][full[5][0]:full[5][1]]
    for theta in (-3.0, -0.5, 1.0, 4.0):
        r = math.exp(-theta)
        lg, d1, d2 = kernels.log_gamma_terms(r, tail, big)
        table = np.array([lg, -r * d1, r * d1 + r * r * d2])
        np.testing.assert_allclose(np.array(kernels.profile(theta, pair, args, 1e-6)) + table,
                                   kernels.profile(theta, full, args, 1e-6), rtol=1e-12)
        np.testing.assert_allclose(kernels.schur_terms(theta, pair, args, 1e-6)[0],
                                   kernels.schur_terms(theta, full, args, 1e-6)[0], rtol=1e-12,
                                   atol=1e-12)
        zero = kernels.schur_terms(theta, full, args, 1e-6)[1]     # profile's, in one pass
        assert kernels.profile(theta, full, args, 1e-6, zero) == kernels.profile(
            theta, full, args, 1e-6)


def _small_block_from(y, group, sf, z):
    at = summaries.atoms(group, sf, z, True, int(group.max()) + 1)
    counts = sp.csr_matrix(y.astype(float))
    store = summaries.Store(y.shape[1])
    assert store.add(counts.indptr, counts.indices, counts.data, 0, True, group >= 0,
                     np.zeros(y.shape[0]), None) is None
    return summaries.build_block(store, 0, store.n_slabs, group, at)


def test_initial_fits_are_each_comparisons_own():
    """DESeq2 fits a covariate design on the cells of the run: each comparison's initial
    fit is the fixed point of the joint model of the control, that group and the shared
    coefficients on their cells alone (the score vanishes, to 1e-8 of the counts), and the
    global fit that of every group at once; the coefficients differ between comparisons
    (the groups' covariate effects were made to differ)."""
    from perturbglm.nb import joint_initial

    rng = np.random.default_rng(5)
    n = 600
    group = rng.integers(0, 3, n)
    z = rng.integers(0, 2, (n, 1)).astype(float)
    sf = np.exp(rng.normal(0, 0.3, n))
    effect = np.array([0.0, 0.8, -0.6])[group] * z[:, 0]      # group-specific rep effect
    y = rng.negative_binomial(2, 2 / (2 + sf * np.exp(0.5 + effect)))[:, None]
    args = _small_block_from(y, group, sf, z).kernel_args()
    theta0 = math.log(0.5)
    minmu = joint_initial.INITIAL_MINMU
    b, control_b, coef, _ = joint_initial.gene_fits(theta0, 0, 0, np.array([1, 2]), args)
    for j, k in enumerate((1, 2)):
        ks = np.array([0, k])
        _, _, _, sb, sc = kernels.joint_terms(theta0, ks, kernels.group_moments(0, ks, args),
                                              np.array([control_b[j], b[k]]), coef[j], args,
                                              minmu)
        assert np.abs(np.append(sb, sc)).max() < 1e-8 * y.sum()
    assert abs(coef[0, 0] - coef[1, 0]) > 0.5
    b, control_b, coef, _ = joint_initial.gene_fits(theta0, 0, 0, np.array([-1]), args)
    ks = np.arange(3)
    _, _, _, sb, sc = kernels.joint_terms(theta0, ks, kernels.group_moments(0, ks, args), b,
                                          coef[0], args, minmu)
    assert control_b[0] == b[0]
    assert np.abs(np.append(sb, sc)).max() < 1e-8 * y.sum()


def test_contrast_variances_of_many_groups():
    """Every group against group 0 from one joint fit of four groups and two covariates:
    the variance of b_k - b_0 equals the inverse information of the one-hot design
    (e_k - e_0)' I^-1 (e_k - e_0), to 1e-10 relative (exact atoms: the arithmetic is the
    only difference)."""
    block, y, group, sf, z = _small_block(seed=4, n=160, groups=4, q=2)
    assert block.atoms.atom_stats[:, 1].max() == 1
    args = block.kernel_args()
    ks = np.arange(4)
    theta = math.log(0.4)
    mom = kernels.group_moments(0, ks, args)
    b, c, _ = kernels.joint_fit(theta, ks, mom, np.zeros(4), np.zeros(2), args, 1e-6)
    D, B, C, _, _ = kernels.joint_terms(theta, ks, mom, b, c, args, 1e-6)
    X = np.column_stack([group == k for k in ks] + [z]).astype(float)
    mu = np.maximum(sf * np.exp(X @ np.append(b, c)), 1e-6)
    inverse = np.linalg.inv(X.T @ (X * (mu / (1 + 0.4 * mu))[:, None]))
    var = kernels.contrast_variances(D[0], B[0], C[0], 0)
    for k in range(1, 4):
        e = np.zeros(6)
        e[k], e[0] = 1.0, -1.0
        assert var[k] == pytest.approx(e @ inverse @ e, rel=1e-10)
