"""DESeq2's initial fit of a design with covariates, per comparison or over all groups.

With covariates the design is not one intercept per group, so DESeq2's
estimateDispersionsGeneEst fits it by IRLS (fitNbinomGLMs, its default mean floor minmu =
INITIAL_MINMU) at the initial dispersion alphaInit, on the cells of the run, and holds the
fitted means fixed while it estimates the dispersion. Run per comparison (the control and
one perturbation alone, design ~ covariates + condition), the covariate coefficients are
that comparison's own: where the control is the minority of the cells, the perturbed cells
weigh most in them. With one dispersion per gene (all cells, ~ group + covariates), one fit
of every group's intercept and the shared coefficients.

Each fit is `kernels.joint_fit` (Fisher scoring to the fixed point of DESeq2's IRLS) of
the intercepts of the groups that have counts and the shared coefficients, started from
the control cells' own fit. A group without counts has its maximum-likelihood intercept at
-inf (its means are floored later, at the dispersion search's minmu) and is left out of
the fit. (DESeq2's IRLS keeps such a group's means at its floor, where they stop moving
and leave a pseudo-response that tugs at the shared coefficients depending on where the
iterations stopped; that is not a fixed point to reproduce.)
"""

import numpy as np
from numba import njit

from .kernels import group_mle, group_moments, joint_fit

INITIAL_MINMU = 0.5  # the floor of DESeq2's IRLS (fitNbinomGLMs) in its initial fit


@njit(cache=True)
def _has_counts(g, k, data):
    return data.nz_ptr[g * data.G + k + 1] > data.nz_ptr[g * data.G + k]


@njit(cache=True)
def _fit_groups(theta0, ks, b_start, c_start, g, data):
    """Joint fit of gene g in groups ks from intercepts b_start and coefficients c_start,
    over the groups with counts; the others' intercepts are -inf. Returns (b, c)."""
    has = np.zeros(ks.shape[0], dtype=np.bool_)
    for i in range(ks.shape[0]):
        has[i] = _has_counts(g, ks[i], data)
    b = np.full(ks.shape[0], -np.inf)
    if not has.any():
        return b, c_start.copy()
    fitted = ks[has]
    b_fit, c, _ = joint_fit(theta0, fitted, group_moments(g, fitted, data), b_start[has],
                            c_start, data, INITIAL_MINMU)
    b[has] = b_fit
    return b, c


@njit(cache=True)
def control_fit(theta0, g, control, data):
    """The control cells' own fit of gene g, (intercept, coefficients): the start of every
    other fit. Its intercept's start is the group's MLE with no covariate effect."""
    c = np.zeros(data.atom_z.shape[1])
    b0 = group_mle(theta0, c, g, control, data, INITIAL_MINMU, np.nan)[0]
    if not np.isfinite(b0):
        return b0, c
    b, c = _fit_groups(theta0, np.full(1, control, dtype=np.int64), np.full(1, b0), c, g,
                       data)
    return b[0], c


@njit(cache=True)
def gene_fits(theta0, g, control, dcomps, data):
    """Gene g's initial fits: each dispersion comparison dcomps[j]'s (the control and group
    dcomps[j]; -1: every group at once), from the control's own fit, with each group's
    intercept started at its MLE given the control's coefficients.

    Returns b (groups: each group's intercept in its comparison's fit and the control's in
    its own fit; with dcomps [-1], every group's in the one fit), control_b (dispersion
    comparisons: the control's intercept in each), coef (dispersion comparisons x q) and
    the control's own coefficients."""
    b_control, c_control = control_fit(theta0, g, control, data)
    b = np.empty(data.G)
    for k in range(data.G):
        b[k] = (b_control if k == control else
                group_mle(theta0, c_control, g, k, data, INITIAL_MINMU, np.nan)[0])
    control_b = np.empty(dcomps.shape[0])
    coef = np.empty((dcomps.shape[0], c_control.shape[0]))
    for j in range(dcomps.shape[0]):
        if dcomps[j] < 0:
            b, coef[j] = _fit_groups(theta0, np.arange(data.G), b, c_control, g, data)
            control_b[j] = b[control]
            continue
        ks = np.array([control, dcomps[j]])
        pair, coef[j] = _fit_groups(theta0, ks, b[ks], c_control, g, data)
        control_b[j] = pair[0]
        b[dcomps[j]] = pair[1]
    return b, control_b, coef, c_control
