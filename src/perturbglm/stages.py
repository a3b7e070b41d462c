"""The per-gene stages of the DESeq2 pipeline, compiled and parallel over genes.

1. `initial_fit`: the means that DESeq2 holds fixed while it estimates dispersions. With no
   covariates, DESeq2's linear-model mean (the group mean of normalised counts); with
   covariates, an NB fit at the initial dispersion: covariate coefficients from the control
   cells (from all cells, with an intercept per group, for a gene whose control cells cannot
   identify them), then each group's intercept with those coefficients as offset.
2. `control_tables`: the control group's contribution, tabulated once per gene over a theta
   grid, so that no comparison revisits the control cells (DESIGN.md section 3).
3. `dispersions`: the Cox-Reid adjusted dispersion MLE of each (gene, comparison), and
   then, with the trend as prior, its MAP dispersion.
4. `wald`: the Wald test of each comparison.
"""

import math

import numpy as np
from numba import njit, prange

from .kernels import (
    base_state,
    covariate_fit,
    cubic_hermite,
    fixed_mu,
    group_mle,
    mle,
    profile,
    quintic_hermite,
)

PROFILE_STEP = 0.5  # theta spacing of the quintic Hermite table of the control profile
WALD_STEP = 1.0  # theta spacing of the cubic Hermite table of the control MLE
FINAL_STEP = 1e-6  # a Newton step this small ends a dispersion search (see _maximise)


@njit(cache=True, parallel=True)
def initial_fit(theta0, control, group_n, data, minmu):
    """Returns b (genes x groups), covariate coefficients c (genes x q) and which genes
    needed all cells to identify c."""
    n_genes = (data.nz_ptr.shape[0] - 1) // data.G
    q = data.atom_z.shape[1]
    b = np.empty((n_genes, data.G))
    coef = np.zeros((n_genes, q))
    refit = np.zeros(n_genes, dtype=np.bool_)
    only_control = np.zeros(data.G, dtype=np.bool_)
    only_control[control] = True
    every_group = np.ones(data.G, dtype=np.bool_)
    for g in prange(n_genes):
        if q > 0:
            c, bounded = covariate_fit(theta0, only_control, g, data, minmu)
            if bounded:
                c, _ = covariate_fit(theta0, every_group, g, data, minmu)
                refit[g] = True
            coef[g] = c
            for k in range(data.G):
                b[g, k] = group_mle(theta0, c, g, k, data, minmu, np.nan)[0]
        else:
            for k in range(data.G):
                norm = 0.0
                for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
                    norm += data.nz_y[e] * math.exp(-data.cell_logs[data.nz_cell[e]])
                b[g, k] = math.log(norm / group_n[k]) if norm > 0.0 else -np.inf
    return b, coef, refit


@njit(cache=True, parallel=True)
def control_tables(theta_lo, n_prof, n_wald, control, b, coef, data, minmu):
    """Control profile (value, d1, d2) on theta_lo + j*PROFILE_STEP and control MLE
    (b, db, fisher, dfisher) on theta_lo + j*WALD_STEP, for every gene."""
    n_genes = b.shape[0]
    prof = np.zeros((n_genes, 3, n_prof))
    wald = np.zeros((n_genes, 4, n_wald))
    for g in prange(n_genes):
        c = coef[g]
        state = fixed_mu(
            np.full(1, control, dtype=np.int64), np.full(1, b[g, control]), c, g, data, minmu
        )
        for j in range(n_prof):
            h, h1, h2 = profile(theta_lo + j * PROFILE_STEP, *state)
            prof[g, 0, j] = h
            prof[g, 1, j] = h1
            prof[g, 2, j] = h2
        base = base_state(c, g, control, data)
        bj = np.nan
        for j in range(n_wald):
            bj, fj, dbj, dfj = mle(theta_lo + j * WALD_STEP, *base, minmu, bj)
            wald[g, 0, j] = bj
            wald[g, 1, j] = dbj
            wald[g, 2, j] = fj
            wald[g, 3, j] = dfj
    return prof, wald


@njit(cache=True)
def _objective(theta, state, table, theta_lo, prior_mean, prior_var):
    """Profile of the groups in `state`, plus the control's from its table when the table is
    non-empty, plus the log-normal prior on the dispersion when prior_var > 0."""
    F, F1, F2 = profile(theta, *state)
    if table.shape[1] > 0:
        T, T1, T2 = quintic_hermite(theta, theta_lo, PROFILE_STEP, table[0], table[1], table[2])
        F += T
        F1 += T1
        F2 += T2
    if prior_var > 0.0:
        d = theta - prior_mean
        F -= 0.5 * d * d / prior_var
        F1 -= d / prior_var
        F2 -= 1.0 / prior_var
    return F, F1, F2


@njit(cache=True)
def _maximise(theta0, lo, hi, state, table, theta_lo, prior_mean, prior_var):
    """Maximise the objective over theta in [lo, hi]: Newton steps where it is concave,
    gradient steps elsewhere, each step halved until the objective does not decrease. A
    Newton step below FINAL_STEP is taken without evaluating its end point: convergence is
    quadratic there, so the error left is of order FINAL_STEP^2."""
    th = min(max(theta0, lo), hi)
    F, F1, F2 = _objective(th, state, table, theta_lo, prior_mean, prior_var)
    for _ in range(200):
        step = -F1 / F2 if F2 < 0.0 else (1.0 if F1 > 0.0 else -1.0)
        if F2 < 0.0 and abs(step) < FINAL_STEP:
            return min(max(th + step, lo), hi)
        step = min(max(step, -2.0), 2.0)
        moved = False
        for _half in range(40):
            cand = min(max(th + step, lo), hi)
            if cand == th:
                break
            Fc, F1c, F2c = _objective(cand, state, table, theta_lo, prior_mean, prior_var)
            if Fc >= F - 1e-12 * abs(F):
                moved = abs(cand - th) > 1e-9
                th, F, F1, F2 = cand, Fc, F1c, F2c
                break
            step *= 0.5
        if not moved:
            break
    return th


@njit(cache=True, parallel=True)
def control_optimum(prof, theta0, lo, hi, theta_lo, data):
    """Per gene, the theta that maximises the control group's tabulated profile alone. Every
    comparison's gene-wise search starts there: the control cells, usually far more than a
    perturbation's, dominate the comparison's profile, so few Newton steps remain."""
    n_genes = prof.shape[0]
    out = np.empty(n_genes)
    no_groups = np.empty(0, dtype=np.int64)
    for g in prange(n_genes):
        nothing = fixed_mu(no_groups, np.empty(0), np.zeros(0), g, data, 0.0)
        out[g] = _maximise(theta0, lo, hi, nothing, prof[g], theta_lo, 0.0, 0.0)
    return out


@njit(cache=True, parallel=True)
def dispersions(comps, start, prior_mean, prior_var, lo, hi, b, coef, prof, theta_lo, data, minmu):
    """Optimal theta of each gene in each comparison `comps[j]` (a group index tested against
    the control, its control part read from the table; -1 means every group together).
    Gene-wise estimates take prior_var[j] = 0; MAP estimates a normal prior
    N(prior_mean[g, j], prior_var[j]). start[g, j] is where the search begins; NaN skips
    the pair. hi[j] is the upper bound of comparison j."""
    n_genes = b.shape[0]
    out = np.full((n_genes, comps.shape[0]), np.nan)
    everyone = np.arange(data.G)
    no_table = np.zeros((3, 0))
    for g in prange(n_genes):
        for j in range(comps.shape[0]):
            if not np.isfinite(start[g, j]):
                continue
            joint = comps[j] < 0
            ks = everyone if joint else np.full(1, comps[j], dtype=np.int64)
            state = fixed_mu(ks, b[g][ks], coef[g], g, data, minmu)
            out[g, j] = _maximise(
                start[g, j],
                lo,
                hi[j],
                state,
                no_table if joint else prof[g],
                theta_lo,
                prior_mean[g, j],
                prior_var[j],
            )
    return out


@njit(cache=True, parallel=True)
def wald(comps, control, theta, coef, wald_table, theta_lo, data, minmu):
    """Natural-log fold change of group comps[j] over the control at dispersion
    exp(theta[g, j]) and its Fisher standard error sqrt(1/I_control + 1/I_group).
    NaN where either group has no counts (the MLE lies at the boundary)."""
    n_genes = theta.shape[0]
    lfc = np.full((n_genes, comps.shape[0]), np.nan)
    se = np.full((n_genes, comps.shape[0]), np.nan)
    for g in prange(n_genes):
        for j in range(comps.shape[0]):
            th = theta[g, j]
            if not np.isfinite(th):
                continue
            tab = wald_table[g]
            if not np.isfinite(tab[0, 0]):
                continue
            b0 = cubic_hermite(th, theta_lo, WALD_STEP, tab[0], tab[1])
            i0 = cubic_hermite(th, theta_lo, WALD_STEP, tab[2], tab[3])
            bk, ik, _, _ = group_mle(th, coef[g], g, comps[j], data, minmu)
            if not np.isfinite(bk) or i0 <= 0.0 or ik <= 0.0:
                continue
            lfc[g, j] = bk - b0
            se[g, j] = math.sqrt(1.0 / i0 + 1.0 / ik)
    return lfc, se
