"""DESeq2's mean-dispersion trend and the prior it sets for the MAP dispersions.

Parametric fit a0 + a1/mean by a Gamma-family GLM with identity link, iterated with outlier
removal; when it fails (a coefficient not positive, no convergence) a local quadratic
regression of log dispersion on log mean takes over, as DESeq2 falls back to locfit.
"""

from __future__ import annotations

import numpy as np

from .special import trigamma

MIN_DISP = 1e-8
LOCAL_NODES = 512  # most evaluation nodes of the local fit (see local)


def _gamma_identity_glm(y, x, start, maxit=25, tol=1e-8):
    """Gamma GLM with identity link, y ~ c0 + c1 x, by IRLS (R's glm.fit convergence rule).
    Returns (coefficients, converged); not converged when the design is singular (all genes
    with one mean)."""
    X = np.column_stack([np.ones_like(x), x])
    coef = np.asarray(start, dtype=float)
    mu = X @ coef
    if np.any(mu <= 0):
        return coef, False
    dev = 2 * np.sum(-np.log(y / mu) + (y - mu) / mu)
    for _ in range(maxit):
        w = 1.0 / mu**2
        XtW = X.T * w
        try:
            coef = np.linalg.solve(XtW @ X, XtW @ y)
        except np.linalg.LinAlgError:
            return coef, False
        mu = X @ coef
        if np.any(mu <= 0):
            return coef, False
        dev_new = 2 * np.sum(-np.log(y / mu) + (y - mu) / mu)
        if abs(dev_new - dev) / (abs(dev_new) + 0.1) < tol:
            return coef, True
        dev = dev_new
    return coef, False


def parametric(means, disps):
    """DESeq2's parametricDispersionFit; returns (a0, a1) or None when it fails."""
    coefs = np.array([0.1, 1.0])
    for _ in range(11):
        resid = disps / (coefs[0] + coefs[1] / means)
        good = (resid > 1e-4) & (resid < 15)
        if good.sum() < 3:
            return None
        new, converged = _gamma_identity_glm(disps[good], 1.0 / means[good], coefs)
        if not np.all(new > 0):
            return None
        done = np.sum(np.log(new / coefs) ** 2) < 1e-6 and converged
        coefs = new
        if done:
            return coefs
    return None


def local(means, disps, at, span=0.7):
    """Local quadratic regression of log dispersion on log mean (tricube kernel over the
    nearest `span` fraction of genes, weighted by mean), the locfit defaults DESeq2 uses,
    evaluated at the means `at`. Beyond LOCAL_NODES of them it is fitted, as locfit does, at
    nodes spanning them and interpolated (by a cubic spline; relative error ~2e-4 on 8,000
    genes), so that its cost does not grow with the number of genes squared."""
    x = np.log(means)
    y = np.log(disps)
    n = x.size
    k = max(3, int(np.ceil(span * n)))
    xa = np.log(at)
    nodes = np.linspace(xa.min(), xa.max(), LOCAL_NODES) if xa.size > LOCAL_NODES else xa
    t = x[None, :] - nodes[:, None]
    d = np.abs(t)
    h = np.partition(d, k - 1, axis=1)[:, k - 1] * (1 + 1e-10) + 1e-12
    w = np.clip(1 - (d / h[:, None]) ** 3, 0, None) ** 3 * means[None, :]
    moments = np.empty((5, nodes.size))     # sum_i w t^m, m = 0..4
    XtWy = np.empty((nodes.size, 3))
    wt = w
    for m in range(5):
        moments[m] = wt.sum(axis=1)
        if m < 3:
            XtWy[:, m] = wt @ y
        wt = wt * t
    XtWX = moments[np.add.outer(np.arange(3), np.arange(3))].transpose(2, 0, 1)
    try:
        fitted = np.linalg.solve(XtWX, XtWy[:, :, None])[:, 0, 0]
    except np.linalg.LinAlgError:   # a node whose neighbours share one mean
        fitted = np.array([np.linalg.lstsq(A, b, rcond=None)[0][0]
                           for A, b in zip(XtWX, XtWy, strict=True)])
    if nodes is xa:
        return np.exp(fitted)
    from scipy.interpolate import CubicSpline  # 0.12 s to import; only large screens get here

    return np.exp(CubicSpline(nodes, fitted)(xa))


def fit(base_mean, disp_gene):
    """Trend evaluated at every gene's mean (NaN where the mean is 0) and the fit's kind."""
    trend = np.full(base_mean.shape, np.nan)
    ok = np.isfinite(disp_gene) & (base_mean > 0)
    use = ok & (disp_gene > 100 * MIN_DISP)
    if use.sum() == 0:
        trend[ok] = 10 * MIN_DISP
        return trend, "none"
    coefs = parametric(base_mean[use], disp_gene[use]) if use.sum() >= 3 else None
    if coefs is not None:
        trend[ok] = coefs[0] + coefs[1] / base_mean[ok]
        return trend, "parametric"
    loc = ok & (disp_gene >= 10 * MIN_DISP)
    if loc.sum() < 3:       # too few genes for a local quadratic: DESeq2's fitType="mean"
        trend[ok] = disp_gene[loc].mean() if loc.any() else 10 * MIN_DISP
        return trend, "mean"
    trend[ok] = local(base_mean[loc], disp_gene[loc], base_mean[ok])
    return trend, "local"


def prior_variance(disp_gene, trend, n_cells, n_coef):
    """DESeq2's prior variance of log dispersions around the trend: the squared MAD of the
    residuals minus their expected sampling variance trigamma((m - p) / 2), at least 0.25.
    Returns (prior variance, squared MAD); the latter sets the outlier rule."""
    use = np.isfinite(disp_gene) & np.isfinite(trend) & (disp_gene >= 100 * MIN_DISP)
    if use.sum() == 0:
        return 0.25, 0.25
    resid = np.log(disp_gene[use]) - np.log(trend[use])
    var_log = (1.4826 * np.median(np.abs(resid - np.median(resid)))) ** 2
    df = n_cells - n_coef
    if df <= 0:
        return var_log, var_log
    return max(var_log - trigamma(df / 2), 0.25), var_log
