"""Compiled kernels of DESeq2's likelihood-ratio test (nbinomLRT) of one comparison.

For gene g, a perturbation group k and the control group, both models are fitted at the
pair's final dispersion a = e^theta, as DESeq2's nbinomLRT does with fitNbinomGLMs:

- full: the comparison's design, an intercept per group plus covariate coefficients c shared
  by the cells: the fit of the Wald test (kernels.mle per group, or kernels.joint_fit);
- reduced: the same without the perturbation indicator, one intercept for both groups (plus
  c). Without covariates the reduced design is ~ 1, for which fitNbinomGLMs takes its
  "justIntercept" shortcut: no IRLS, the intercept is log of the mean normalised count over
  the comparison's cells (its base mean), not the NB maximum (the NB score weights cells by
  1/(1 + a mu_i), so the two differ where size factors vary). We follow DESeq2: the
  reduced likelihood sits a little below its maximum and the statistic is a little larger
  than the likelihood ratio; with covariates the reduced model is fitted by floored IRLS.

stat = 2 (logLik_full - logLik_reduced), as nbinomLRT. The log-likelihood is DESeq2's
nbinomLogLike, sum_i log dnbinom(y_i; mu_i, size 1/a), at the *unfloored* fitted means
(fitNbinomGLMs floors means at minmu inside its IRLS, then evaluates the likelihood at
nf * exp(X beta)). Terms free of the means cancel between the two models (lgamma(y + 1/a) -
lgamma(1/a) - lgamma(y + 1), y log a, y log s_i); per cell what is left is

    l_i = y_i log mu_i - (y_i + 1/a) log(1 + a mu_i),

split as in kernels.py: every cell counted as a zero, -(1/a) log(1 + a mu_i), from the
group's zero-count table or atoms (zero_terms.group_zero), plus over the non-zero counts
y log mu - y log(1 + a mu), summed per atom with its second-order expansion in the cells'
log size factors. The control's part at any intercept thus costs one table look-up and a
pass over its atoms (a few dozen), never over its cells: the per-pair cost follows the
perturbation's non-zeros.

A group without counts: DESeq2's floored IRLS does not run its coefficient to the +-30
(log2) bound but stops where every mean of the group sits below the floor, at
b = log(minmu) - 1 - (mean log size factor) (about -14.8 for minmu = 1e-6; DESeq2's
reported log2 fold changes of about -14 for such genes are this point). We fit that same
fixed point (`intercept_fit`), where the group's cells add about -sum_i mu_i, of order
n minmu, to the log-likelihood. The LR statistic is then finite and its p-value defined,
where the Wald test of the same pair is not (its fold change stays NaN).
"""

import math

import numpy as np
from numba import njit, prange

from .hermite import cubic_hermite
from .kernels import (
    _score_terms,
    _sigmoid_terms,
    atom_moments,
    fixed_mu,
    group_moments,
    joint_fit,
    joint_terms,
    mle,
)
from .stages import WALD_STEP
from .zero_terms import LOG, W, atom_mean, group_zero


@njit(cache=True)
def group_loglik(theta, k, b, c, mom, data):
    """sum_i y_i log mu_i - (y_i + 1/a) log(1 + a mu_i) over group k's cells at intercept b,
    covariate coefficients c and dispersion a = e^theta, less sum_i y_i (log s_i - l_j) (l_j:
    the mean log size factor of the cell's atom), which does not depend on (b, c). mom: the
    group's counts per atom (kernels.atom_moments). Means are not floored, as in DESeq2's
    nbinomLogLike."""
    a = math.exp(theta)
    emu, R0, _, _, _ = group_zero(theta, k, b, c, data, 0.0)
    ll = -(emu + R0 / a)
    first = data.atom_ptr[k]
    for j in range(mom.shape[0]):
        y0 = mom[j, 0]
        if y0 > 0.0:
            raw = atom_mean(first + j, b, c, data, 0.0)[0]
            am = a * raw
            q, p, _, _ = _sigmoid_terms(am)
            ll += y0 * math.log(raw) - (y0 * math.log1p(am) + mom[j, 1] * q
                                        + 0.5 * mom[j, 2] * p)
    return ll


@njit(cache=True)
def floored_start(k, data, minmu):
    """The intercept of group k at DESeq2's floored IRLS fixed point when it has no counts
    and no covariates: every mean floored, the working responses log(minmu / s_i) - 1
    averaged with equal weights, b = log(minmu) - 1 - mean log s. Exact where no size
    factor exceeds e times the group's geometric mean; a start for `intercept_fit` (and for
    joint fits) otherwise."""
    n = 0.0
    total = 0.0
    for j in range(data.atom_ptr[k], data.atom_ptr[k + 1]):
        n += data.atom_stats[j, W]
        total += data.atom_stats[j, W] * data.atom_stats[j, LOG]
    return math.log(minmu) - 1.0 - total / n


@njit(cache=True)
def intercept_fit(theta, state, data, minmu, b_start):
    """The intercept of the single group of a `kernels.fixed_mu` state at the fixed point of
    DESeq2's floored IRLS: `kernels.mle` (from b_start, NaN for its Poisson start) when the
    group has counts, else Newton's method on the same floored score from `floored_start`
    (one step where every mean stays floored: the score is then linear in b)."""
    e_ptr = state[3]
    if e_ptr[1] > e_ptr[0]:
        return mle(theta, state, data, minmu, b_start)[0]
    b = floored_start(state[0][0], data, minmu)
    for _ in range(50):
        score, hess = _score_terms(theta, b, state, data, minmu)[:2]
        step = score / hess
        b += step
        if abs(step) < 1e-10:
            break
    return b


@njit(cache=True)
def _separable_stat(theta, g, k, base_mean, control_state, control_mom, wald_table, search,
                    data):
    """LR statistic of group k against the control for gene g at dispersion e^theta without
    covariates: full model, each group at its own floored-IRLS intercept (the control's
    Newton search starts from its tabulated MLE, stages.control_tables); reduced model,
    DESeq2's ~ 1 shortcut, intercept log(base_mean) for both."""
    control, minmu = search.control, search.minmu
    tab = wald_table[g]
    b0 = intercept_fit(theta, control_state, data, minmu,
                       cubic_hermite(theta, search.theta_lo, WALD_STEP, tab[0], tab[1]))
    none = np.zeros(0)
    own_state = fixed_mu(np.full(1, k, dtype=np.int64), np.zeros(1), none, g, data)
    bk = intercept_fit(theta, own_state, data, minmu, np.nan)
    own_mom = atom_moments(g, k, data)
    br = math.log(base_mean)
    full = (group_loglik(theta, control, b0, none, control_mom, data)
            + group_loglik(theta, k, bk, none, own_mom, data))
    reduced = (group_loglik(theta, control, br, none, control_mom, data)
               + group_loglik(theta, k, br, none, own_mom, data))
    return 2.0 * (full - reduced)


@njit(cache=True)
def _covariate_stat(theta, g, j, k, fit, wald_fit, control_mom, search, data):
    """LR statistic of group k against the control for gene g at dispersion e^theta with
    covariates: the full model is the Wald test's joint fit of the pair (wald_fit, its
    coefficients, where that test fitted the pair; else fitted as stages._wald_pair does,
    from dispersion comparison j's initial fit, a group without counts started at its
    floored point), the reduced one `kernels.joint_fit` with one intercept for both
    groups."""
    control, minmu = search.control, search.minmu
    ks = np.array([control, k])
    mom = np.concatenate((control_mom, group_moments(g, ks[1:], data)))
    if np.isfinite(wald_fit[0]) and np.isfinite(wald_fit[1]):
        bf, cf = wald_fit[:2].copy(), wald_fit[2:].copy()
    else:
        start = np.array([fit.control_b[g, j], fit.b[g, k]])
        for i in range(2):
            if not np.isfinite(start[i]):
                start[i] = floored_start(ks[i], data, minmu)
        bf, cf, _ = joint_fit(theta, ks, mom, start, fit.coef[g, j], data, minmu)
    # the reduced intercept starts at the full ones' average weighted by their Fisher
    # information (the pooled estimate, to first order), c at the full fit's
    D = joint_terms(theta, ks, mom, bf, cf, data, minmu)[0][0]
    pooled = (D[0] * bf[0] + D[1] * bf[1]) / (D[0] + D[1])
    b_reduced, cr, _ = joint_fit(theta, ks, mom, np.full(2, pooled), cf, data, minmu, True)
    br = b_reduced[0]
    n0 = control_mom.shape[0]
    full = (group_loglik(theta, control, bf[0], cf, control_mom, data)
            + group_loglik(theta, k, bf[1], cf, mom[n0:], data))
    reduced = (group_loglik(theta, control, br, cr, control_mom, data)
               + group_loglik(theta, k, br, cr, mom[n0:], data))
    return 2.0 * (full - reduced)


@njit(cache=True, parallel=True)
def lr_statistics(comps, theta, base_mean, fit, wald_fit, wald_table, search, data):
    """DESeq2's LR statistic of each comparison comps[i] (a group against the control) of
    every gene at its final theta: theta[g, i], or theta[g, 0] for all when theta has one
    column (one dispersion for every comparison: each pair is still tested on its own cells,
    at that dispersion). Genes x comparisons, NaN where the pair is untested (its theta NaN
    or its base mean, base_mean[g, i], 0). fit: the initial fit (stages.Fit), the start of
    the joint fits; wald_fit[g, i]: the Wald test's coefficients of the pair (stages.wald),
    its full model where it fitted the pair alone (not with one dispersion for all, where
    it fits every group at once); wald_table: the control's MLE table without covariates,
    None with them (numba then compiles the joint fits), as stages.wald takes them."""
    n_genes = fit.b.shape[0]
    out = np.full((n_genes, comps.shape[0]), np.nan)
    shared = theta.shape[1] == 1
    # the control's fixed_mu state serves its intercept search without covariates only
    state_groups = np.full(0 if wald_table is None else 1, search.control, dtype=np.int64)
    for g in prange(n_genes):
        control_mom = atom_moments(g, search.control, data)
        control_state = fixed_mu(state_groups, np.zeros(1), np.zeros(0), g, data)
        for i in range(comps.shape[0]):
            j = 0 if shared else i
            th = theta[g, j]
            if not (np.isfinite(th) and base_mean[g, i] > 0.0):
                continue
            if wald_table is None:
                own = wald_fit[g, i] if not shared else np.full(wald_fit.shape[2], np.nan)
                out[g, i] = _covariate_stat(th, g, j, comps[i], fit, own, control_mom, search,
                                            data)
            else:
                out[g, i] = _separable_stat(th, g, comps[i], base_mean[g, i], control_state,
                                            control_mom, wald_table, search, data)
    return out


@njit(cache=True)
def chi_square_1_p(stat):
    """Upper tail of the chi-square distribution with 1 degree of freedom at an array of
    statistics, P(X > x) = P(|Z| > sqrt(x)) = erfc(sqrt(x / 2)), in float64 (R's pchisq(x,
    1, lower.tail = FALSE)); a negative statistic (rounding of two equal likelihoods) has
    p = 1, NaN stays NaN."""
    out = np.empty(stat.shape)
    flat = stat.ravel()
    res = out.ravel()
    for i in range(flat.shape[0]):
        res[i] = math.erfc(math.sqrt(max(flat[i], 0.0) / 2.0)) if flat[i] == flat[i] else np.nan
    return out
