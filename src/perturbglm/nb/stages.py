"""The per-gene stages of the DESeq2 pipeline, compiled and parallel over genes.

1. `initial_fit`: the means that DESeq2 holds fixed while it estimates dispersions. With no
   covariates, DESeq2's linear-model mean (the group mean of normalised counts), one fit for
   every comparison; with covariates, as DESeq2, an NB fit of the design at the initial
   dispersion by its IRLS with means floored at INITIAL_MINMU, on each comparison's cells
   (joint_initial.py).
2. `control_tables`: the control group's contribution, tabulated once per gene over a theta
   grid, so that no comparison revisits the control cells (DESIGN.md section 3): its whole
   profile without covariates; with them, where each comparison has its own means, only its
   log-gamma terms (they depend on the counts alone), the rest coming from its atoms.
3. `dispersions`: the Cox-Reid adjusted dispersion MLE of each (gene, comparison).
4. `final_dispersions`: with the trend as prior, the MAP dispersion, DESeq2's final choice.
5. `wald`: the Wald test of each comparison at its final dispersion.

Kernels take the initial fit as a `Fit` and the search's bounds as a `Search`.
"""

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from .hermite import cubic_hermite, quintic_hermite
from .joint_initial import gene_fits
from .kernels import (
    contrast_variance,
    contrast_variances,
    fixed_mu,
    group_moments,
    joint_fit,
    joint_terms,
    log_gamma_terms,
    mle,
    profile,
    schur_terms,
    with_control,
)

PROFILE_STEP = 0.5  # theta spacing of the quintic Hermite table of the control profile
WALD_STEP = 1.0  # theta spacing of the cubic Hermite table of the control MLE
FINAL_STEP = 1e-4  # a Newton step this small ends a dispersion search (see _maximise)

Fit = namedtuple("Fit", ["b", "control_b", "coef", "prof"])
Fit.__doc__ = """The fit dispersions are searched around, one per dispersion comparison j
(see `initial_fit`): initial log means b (genes x groups, each group's intercept in its
comparison's fit; the control's in its own fit, or in the one fit of every group),
control_b (genes x j, the control's intercept in each), covariate
coefficients coef (genes x j x q) and the control's table prof (genes x (value, d1, d2) x
grid, see `control_tables`)."""
Search = namedtuple("Search", ["lo", "hi", "theta_lo", "minmu", "control"])
Search.__doc__ = """Where dispersions are searched: theta in [lo, hi[j]] for dispersion
comparison j; theta_lo, the first point of the control tables' theta grid; minmu, the floor
on means (DESeq2's minmu); control, the control's group."""
Prior = namedtuple("Prior", ["mean", "var", "gene_theta", "outlier", "min_theta"])
Prior.__doc__ = """The MAP search's prior and DESeq2's rules around it: mean (genes x
dispersion comparisons, the trend's theta), var (the prior variance of each comparison),
gene_theta (the gene-wise thetas), outlier (genes kept at their gene-wise value) and
min_theta (the lower clip of the final theta)."""


@njit(cache=True, parallel=True)
def normalised_sums(data):
    """Sum of the normalised counts y / s of every (gene, group): genes x groups."""
    n_genes = (data.nz_ptr.shape[0] - 1) // data.G
    inverse = np.exp(-data.cell_logs)
    out = np.zeros((n_genes, data.G))
    for g in prange(n_genes):
        for k in range(data.G):
            for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
                out[g, k] += data.nz[e, 1] * inverse[data.nz[e, 0]]
    return out


@njit(cache=True, parallel=True)
def initial_fit(theta0, control, dcomps, group_n, norm, data):
    """The initial fit of every gene in each dispersion comparison dcomps[j] (a group and the
    control; -1: every group), at dispersion e^theta0; norm is `normalised_sums`. Returns
    b (genes x groups), control_b (genes x j) and coef (genes x j x q) as `Fit` holds them,
    and the control cells' own coefficients (genes x q; the control column of b is their
    intercept), from which the dispersion searches start (`control_optimum`). Without
    covariates the groups are separable: every comparison shares the groups' means."""
    n_genes = norm.shape[0]
    q = data.atom_z.shape[1]
    b = np.empty((n_genes, data.G))
    control_b = np.empty((n_genes, dcomps.shape[0]))
    coef = np.zeros((n_genes, dcomps.shape[0], q))
    control_coef = np.zeros((n_genes, q))
    for g in prange(n_genes):
        if q > 0:
            b[g], control_b[g], coef[g], control_coef[g] = gene_fits(theta0, g, control,
                                                                     dcomps, data)
        else:
            for k in range(data.G):
                b[g, k] = math.log(norm[g, k] / group_n[k]) if norm[g, k] > 0.0 else -np.inf
            control_b[g] = b[g, control]
    return b, control_b, coef, control_coef


@njit(cache=True, parallel=True)
def control_tables(theta_lo, n_prof, n_wald, control, b, data, minmu):
    """The control's table (genes x (value, d1, d2) x grid, on theta_lo + j*PROFILE_STEP):
    without covariates its Cox-Reid profile at its initial means b[:, control]; with
    covariates, where each comparison has its own means, the part of the profile that
    depends on the counts alone, the log-gamma terms (`kernels.with_control` leaves them
    out). Without covariates also the control's MLE (b, db, fisher, dfisher) on
    theta_lo + j*WALD_STEP, for every gene."""
    n_genes = b.shape[0]
    q = data.atom_z.shape[1]
    prof = np.zeros((n_genes, 3, n_prof))
    wald = np.zeros((n_genes, 4, n_wald if q == 0 else 0))
    ks = np.full(1, control, dtype=np.int64)
    for g in prange(n_genes):
        state = fixed_mu(ks, np.full(1, b[g, control]), np.zeros(q), g, data)
        if q > 0:
            big_ptr, big_y, tail = state[5:]
            for j in range(n_prof):
                r = 1.0 / math.exp(theta_lo + j * PROFILE_STEP)
                lg, d1, d2 = log_gamma_terms(r, tail[0], big_y[big_ptr[0]:big_ptr[1]])
                prof[g, 0, j] = lg
                prof[g, 1, j] = -r * d1
                prof[g, 2, j] = r * d1 + r * r * d2
            continue
        for j in range(n_prof):
            h, h1, h2 = profile(theta_lo + j * PROFILE_STEP, state, data, minmu)
            prof[g, 0, j] = h
            prof[g, 1, j] = h1
            prof[g, 2, j] = h2
        bj = np.nan
        for j in range(n_wald):
            bj, fj, dbj, dfj = mle(theta_lo + j * WALD_STEP, state, data, minmu, bj)
            wald[g, 0, j] = bj
            wald[g, 1, j] = dbj
            wald[g, 2, j] = fj
            wald[g, 3, j] = dfj
    return prof, wald


@njit(cache=True)
def _log_det_terms(S):
    """log det S[0] and its first two theta derivatives (S[1], S[2] hold those of S[0]), by
    Gauss-Jordan inversion of the small q x q matrix in place: this runs at every profile
    evaluation, where LAPACK calls and their allocations cost more than the profile (the
    real screen with bio_rep took 3.3 s with np.linalg, 0.6 s like this). Zeros when S[0]
    is not positive definite (no covariate information in the cells)."""
    q = S.shape[1]
    M = S[0].copy()
    inv = np.eye(q)
    L = 0.0
    for i in range(q):
        piv = M[i, i]
        if not piv > 0.0:
            return 0.0, 0.0, 0.0
        L += math.log(piv)
        for j in range(q):
            M[i, j] /= piv
            inv[i, j] /= piv
        for k in range(q):
            if k != i:
                f = M[k, i]
                for j in range(q):
                    M[k, j] -= f * M[i, j]
                    inv[k, j] -= f * inv[i, j]
    L1 = 0.0
    L2 = 0.0
    for i in range(q):
        for j in range(q):
            L1 += inv[i, j] * S[1, j, i]
            L2 += inv[i, j] * S[2, j, i]
            a_ij = 0.0
            a_ji = 0.0
            for k in range(q):
                a_ij += inv[i, k] * S[1, k, j]
                a_ji += inv[j, k] * S[1, k, i]
            L2 -= a_ij * a_ji
    return L, L1, L2


@njit(cache=True)
def _objective(theta, state, table, theta_lo, prior_mean, prior_var, data, minmu):
    """Profile of the groups in `state`, plus the control's table when that is non-empty,
    plus, with covariates, the covariate part of the Cox-Reid term of the groups in `state`
    (log det S, `schur_terms`), plus the log-normal prior on the dispersion when
    prior_var > 0. With covariates the atoms are visited once for both (`schur_terms`)."""
    covariates = data.atom_z.shape[1] > 0
    if covariates:
        S, zero = schur_terms(theta, state, data, minmu)
        F, F1, F2 = profile(theta, state, data, minmu, zero)
    else:
        F, F1, F2 = profile(theta, state, data, minmu)
    if table.shape[1] > 0:
        T, T1, T2 = quintic_hermite(theta, theta_lo, PROFILE_STEP, table, 0, 0, table.shape[1])
        F += T
        F1 += T1
        F2 += T2
    if covariates:
        L, L1, L2 = _log_det_terms(S)
        F -= 0.5 * L
        F1 -= 0.5 * L1
        F2 -= 0.5 * L2
    if prior_var > 0.0:
        d = theta - prior_mean
        F -= 0.5 * d * d / prior_var
        F1 -= d / prior_var
        F2 -= 1.0 / prior_var
    return F, F1, F2


@njit(cache=True)
def _maximise(theta0, lo, hi, state, table, theta_lo, prior_mean, prior_var, data, minmu):
    """Maximise the objective over theta in [lo, hi]: Newton steps where it is concave,
    gradient steps elsewhere, each step halved until the objective does not decrease. A
    Newton step below FINAL_STEP is taken without evaluating its end point: convergence is
    quadratic there, so the error left is of order FINAL_STEP^2 (at most 1e-8 in theta on
    the 100k-cell benchmark against a search run to 1e-6 steps; a quarter fewer
    evaluations). Returns the theta and the objective's curvature at the last evaluation
    (the MAP search of stage B takes its first step from it)."""
    th = min(max(theta0, lo), hi)
    F, F1, F2 = _objective(th, state, table, theta_lo, prior_mean, prior_var, data, minmu)
    for _ in range(200):
        step = -F1 / F2 if F2 < 0.0 else (1.0 if F1 > 0.0 else -1.0)
        if F2 < 0.0 and abs(step) < FINAL_STEP:
            return min(max(th + step, lo), hi), F2
        step = min(max(step, -2.0), 2.0)
        moved = False
        for _half in range(40):
            cand = min(max(th + step, lo), hi)
            if cand == th:
                break
            Fc, F1c, F2c = _objective(cand, state, table, theta_lo, prior_mean, prior_var,
                                      data, minmu)
            if Fc >= F - 1e-12 * abs(F):
                moved = abs(cand - th) > 1e-9
                th, F, F1, F2 = cand, Fc, F1c, F2c
                break
            step *= 0.5
        if not moved:
            break
    return th, F2


@njit(cache=True, parallel=True)
def control_optimum(theta0, fit, control_coef, search, data):
    """Per gene, the theta that maximises the control group's own profile: its table without
    covariates; with them, its profile at the control cells' own fit (intercept
    fit.b[:, control], coefficients control_coef, see `initial_fit`). Every comparison's
    gene-wise search starts there: the control cells, usually far more than a
    perturbation's, dominate the comparison's profile, so few Newton steps remain."""
    n_genes = fit.prof.shape[0]
    out = np.empty(n_genes)
    no_groups = np.empty(0, dtype=np.int64)
    hi = search.hi.max()
    for g in prange(n_genes):
        if data.atom_z.shape[1] > 0:
            ks = np.full(1, search.control, dtype=np.int64)
            own = fixed_mu(ks, fit.b[g][ks], control_coef[g], g, data)
            out[g] = _maximise(theta0, search.lo, hi, own, fit.prof[g, :, :0], search.theta_lo,
                               0.0, 0.0, data, search.minmu)[0]
        else:
            nothing = fixed_mu(no_groups, np.empty(0), np.zeros(0), g, data)
            out[g] = _maximise(theta0, search.lo, hi, nothing, fit.prof[g], search.theta_lo,
                               0.0, 0.0, data, 0.0)[0]
    return out


@njit(cache=True)
def _search(g, j, comp, start, hi, prior_mean, prior_var, fit, control_mom, search, data):
    """The optimal theta of gene g in dispersion comparison j, comp (a group against the
    control; -1: every group together, from their one fit) from `start`, in
    [search.lo, hi], under the prior N(prior_mean, prior_var) (none when prior_var is 0),
    and the curvature there (see `_maximise`). The control's part comes from its table and,
    with covariates, from its atoms at the comparison's own fit (control_mom: its counts per
    atom, `kernels.with_control`)."""
    # Both cases as views of the same arrays: an if/else that allocated the empty control
    # table made numba merge unlike arrays and cost 20% of a search.
    ks = np.arange(data.G) if comp < 0 else np.full(1, comp, dtype=np.int64)
    table = fit.prof[g, :, :0] if comp < 0 else fit.prof[g]
    state = fixed_mu(ks, fit.b[g][ks], fit.coef[g, j], g, data)
    if comp >= 0 and data.atom_z.shape[1] > 0:
        state = with_control(state, search.control, fit.control_b[g, j], control_mom, data)
    return _maximise(start, search.lo, hi, state, table, search.theta_lo, prior_mean,
                     prior_var, data, search.minmu)


@njit(cache=True)
def _control_moments(g, dcomps, search, data):
    """The control's counts of gene g per atom where a comparison's search needs them (with
    covariates and a comparison against the control: `kernels.with_control`); else empty."""
    if data.atom_z.shape[1] > 0 and dcomps[0] >= 0:
        return group_moments(g, np.full(1, search.control, dtype=np.int64), data)
    return np.empty((0, 3))


@njit(cache=True, parallel=True)
def dispersions(dcomps, start, fit, search, data):
    """Gene-wise (Cox-Reid adjusted maximum-likelihood) theta of each gene in each
    dispersion comparison `dcomps[j]` (see `_search`), searched from start[g, j]; NaN skips
    the pair. Returns the thetas and the profile's curvature at each (see `_maximise`)."""
    n_genes = fit.b.shape[0]
    out = np.full((n_genes, dcomps.shape[0]), np.nan)
    curv = np.full((n_genes, dcomps.shape[0]), np.nan)
    for g in prange(n_genes):
        control_mom = _control_moments(g, dcomps, search, data)
        for j in range(dcomps.shape[0]):
            if np.isfinite(start[g, j]):
                out[g, j], curv[g, j] = _search(g, j, dcomps[j], start[g, j], search.hi[j],
                                                0.0, 0.0, fit, control_mom, search, data)
    return out, curv


@njit(cache=True, parallel=True)
def final_dispersions(dcomps, start, prior, fit, search, data):
    """DESeq2's final theta (estimateDispersionsMAP) of each gene in each dispersion
    comparison dcomps[j]: the MAP estimate under the log-normal prior
    N(prior.mean[g, j], prior.var[j]) around the trend, searched from start[g, j] (NaN skips
    it) and clipped to [prior.min_theta, search.hi[j]], or the gene-wise prior.gene_theta
    where prior.outlier[g, j] (a gene-wise estimate far above the trend keeps its value)."""
    n_genes = fit.b.shape[0]
    theta = np.full((n_genes, dcomps.shape[0]), np.nan)
    for g in prange(n_genes):
        control_mom = _control_moments(g, dcomps, search, data)
        for j in range(dcomps.shape[0]):
            if not np.isfinite(start[g, j]):
                continue
            if prior.outlier[g, j]:
                theta[g, j] = prior.gene_theta[g, j]
                continue
            th = _search(g, j, dcomps[j], start[g, j], search.hi[j], prior.mean[g, j],
                         prior.var[j], fit, control_mom, search, data)[0]
            theta[g, j] = min(max(th, prior.min_theta), search.hi[j])
    return theta


@njit(cache=True)
def _wald_pair(th, g, j, k, fit, control_mom, wald_table, search, data, coefs):
    """Natural-log fold change of group k over the control for gene g at dispersion e^th,
    and its Fisher standard error; NaN where either group has no counts (the MLE lies at
    the boundary). The fitted coefficients (control intercept, group k's, covariate
    coefficients) go to `coefs` (left NaN where the fold change is): Cook's distances need
    the fitted means.

    Without covariates the groups are separable: the control's MLE and information come from
    its table, SE = sqrt(1/I_control + 1/I_group). With covariates (wald_table None, which
    numba compiles as its own case), as DESeq2 does, the control, the group and the
    covariate coefficients are fitted jointly, from dispersion comparison j's initial fit
    (control_mom: the control's counts per atom), and the SE comes from the joint
    information."""
    b = fit.b
    if not (np.isfinite(th) and np.isfinite(fit.control_b[g, j]) and np.isfinite(b[g, k])):
        return np.nan, np.nan
    if wald_table is None:
        ks = np.array([search.control, k])
        mom = np.concatenate((control_mom, group_moments(g, ks[1:], data)))
        b_start = np.array([fit.control_b[g, j], b[g, k]])
        bj, cj, _ = joint_fit(th, ks, mom, b_start, fit.coef[g, j], data, search.minmu)
        D, B, C, _, _ = joint_terms(th, ks, mom, bj, cj, data, search.minmu)
        coefs[:2] = bj
        coefs[2:] = cj
        return bj[1] - bj[0], math.sqrt(contrast_variance(D[0], B[0], C[0]))
    tab = wald_table[g]
    b0 = cubic_hermite(th, search.theta_lo, WALD_STEP, tab[0], tab[1])
    i0 = cubic_hermite(th, search.theta_lo, WALD_STEP, tab[2], tab[3])
    own = fixed_mu(np.full(1, k, dtype=np.int64), b[g][k:k + 1], fit.coef[g, j], g, data)
    bk, ik, _, _ = mle(th, own, data, search.minmu, np.nan)
    if i0 > 0.0 and ik > 0.0:
        coefs[0] = b0
        coefs[1] = bk
        return bk - b0, math.sqrt(1.0 / i0 + 1.0 / ik)
    return np.nan, np.nan


@njit(cache=True)
def _wald_all_groups(th, g, comps, valid, fit, search, data, coefs):
    """With covariates and one dispersion (and one initial fit) for every comparison,
    dispersion="global": DESeq2's Wald test on all cells at once (design ~ group +
    covariates): every group's intercept and the shared coefficients fitted jointly at
    dispersion e^th from the global initial fit, each comparison's fold change
    b_k - b_control with its variance from the joint information. Returns the rows of
    `wald` (NaN where valid is False or either group has no counts), the fitted
    coefficients of each comparison (its groups' intercepts, the shared ones) in coefs."""
    lfc = np.full(comps.shape[0], np.nan)
    se = np.full(comps.shape[0], np.nan)
    control = search.control
    if not (np.isfinite(th) and np.isfinite(fit.b[g, control])):
        return lfc, se
    ks = np.flatnonzero(np.isfinite(fit.b[g]))
    mom = group_moments(g, ks, data)
    b, c, _ = joint_fit(th, ks, mom, fit.b[g][ks], fit.coef[g, 0], data, search.minmu)
    D, B, C, _, _ = joint_terms(th, ks, mom, b, c, data, search.minmu)
    where = np.full(data.G, -1)
    where[ks] = np.arange(ks.shape[0])
    var = contrast_variances(D[0], B[0], C[0], where[control])
    for i in range(comps.shape[0]):
        k = where[comps[i]]
        if valid[i] and k >= 0:
            lfc[i] = b[k] - b[where[control]]
            se[i] = math.sqrt(var[k])
            coefs[i, 0] = b[where[control]]
            coefs[i, 1] = b[k]
            coefs[i, 2:] = c
    return lfc, se


@njit(cache=True, parallel=True)
def wald(comps, theta, valid, fit, wald_table, search, data):
    """DESeq2's Wald test (nbinomWaldTest) of each comparison comps[i] of every gene at its
    final theta: theta[g, i], or theta[g, 0] for all when theta has one column (one
    dispersion, and one initial fit, for every comparison: with covariates the test then
    fits every group at once, `_wald_all_groups`; with a single comparison that is the same
    fit); pairs with valid[g, i] False are skipped (NaN). wald_table: the control's MLE
    table without covariates, None with them (see `_wald_pair`). Returns the natural-log
    fold changes, their standard errors and the fitted coefficients (genes x comparisons x
    (control intercept, group intercept, covariate coefficients))."""
    n_genes = fit.b.shape[0]
    lfc = np.full((n_genes, comps.shape[0]), np.nan)
    se = np.full((n_genes, comps.shape[0]), np.nan)
    coefs = np.full((n_genes, comps.shape[0], 2 + data.atom_z.shape[1]), np.nan)
    shared = theta.shape[1] == 1
    control_only = np.full(1, search.control, dtype=np.int64)
    for g in prange(n_genes):
        if shared and wald_table is None:
            lfc[g], se[g] = _wald_all_groups(theta[g, 0], g, comps, valid[g], fit, search,
                                             data, coefs[g])
            continue
        control_mom = (group_moments(g, control_only, data) if wald_table is None
                       else np.empty((0, 3)))
        for i in range(comps.shape[0]):
            j = 0 if shared else i
            if valid[g, i] and np.isfinite(theta[g, j]):
                lfc[g, i], se[g, i] = _wald_pair(theta[g, j], g, j, comps[i], fit, control_mom,
                                                 wald_table, search, data, coefs[g, i])
    return lfc, se, coefs
