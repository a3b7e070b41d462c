"""Special functions, compiled: log-gamma differences and their derivatives for the
likelihood kernels, and the normal tail for p-values.

numba cannot call scipy.special in nopython mode, so the two polygamma functions the NB
likelihood needs are evaluated here by recurrence plus the asymptotic series (absolute error
below 1e-12 relative for x > 0); tests check them against scipy. Using them and math.erfc
outside the kernels too spares every run the import of scipy.special (0.14 s).
"""

import math

import numpy as np
from numba import njit

SMALL_COUNT = 64  # counts up to this use exact finite sums, which stay accurate as r -> inf


@njit(cache=True)
def digamma(x):
    acc = 0.0
    while x < 10.0:
        acc -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (
        1.0 / 240 - inv2 * (1.0 / 132)))))
    return acc + math.log(x) - 0.5 * inv - series


@njit(cache=True)
def trigamma(x):
    acc = 0.0
    while x < 10.0:
        acc += 1.0 / (x * x)
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv + 0.5 * inv2 + inv * inv2 * (1.0 / 6 - inv2 * (1.0 / 30 - inv2 * (
        1.0 / 42 - inv2 * (1.0 / 30))))
    return acc + series


@njit(cache=True)
def lgamma_ratio(y, r):
    """lgamma(y + r) - lgamma(r) and its first two derivatives in r, for a count y >= 0."""
    if y <= SMALL_COUNT:
        val = 0.0
        d1 = 0.0
        d2 = 0.0
        for j in range(int(y)):
            t = j + r
            val += math.log(t)
            d1 += 1.0 / t
            d2 -= 1.0 / (t * t)
        return val, d1, d2
    return (math.lgamma(y + r) - math.lgamma(r), digamma(y + r) - digamma(r),
            trigamma(y + r) - trigamma(r))


@njit(cache=True)
def two_sided_p(stat):
    """Two-sided normal p-values of an array of Wald statistics (NaN stays NaN)."""
    out = np.empty(stat.shape)
    flat = stat.ravel()
    res = out.ravel()
    for i in range(flat.shape[0]):
        res[i] = math.erfc(abs(flat[i]) / math.sqrt(2.0))
    return out
