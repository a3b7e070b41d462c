"""Hermite interpolation of functions tabulated with their derivatives on a uniform grid:
the control's per-gene tables (stages.py) and the groups' zero-count tables (zero_terms.py)."""

import math

from numba import njit


@njit(cache=True)
def quintic_hermite(x, x0, h, table, row, first, n):
    """Value, first and second derivative at x of the quintic Hermite interpolant of nodes
    x0 + j*h, j < n, whose value, first and second derivative are table[row + d, first + j],
    d = 0, 1, 2 (read in place: views cost reference counting in the hot loops). Clamped to
    the grid ends."""
    pos = (x - x0) / h
    j = min(max(int(math.floor(pos)), 0), n - 2)
    t = min(max(pos - j, 0.0), 1.0)
    e = first + j
    p0 = table[row, e]
    m0 = table[row + 1, e] * h
    m1 = table[row + 1, e + 1] * h
    c2 = 0.5 * table[row + 2, e] * h * h
    s1 = table[row + 2, e + 1] * h * h
    dp = table[row, e + 1] - p0
    c3 = 10.0 * dp - 6.0 * m0 - 4.0 * m1 - 3.0 * c2 + 0.5 * s1
    c4 = -15.0 * dp + 8.0 * m0 + 7.0 * m1 + 3.0 * c2 - s1
    c5 = 6.0 * dp - 3.0 * m0 - 3.0 * m1 - c2 + 0.5 * s1
    val = p0 + t * (m0 + t * (c2 + t * (c3 + t * (c4 + t * c5))))
    der = m0 + t * (2.0 * c2 + t * (3.0 * c3 + t * (4.0 * c4 + t * 5.0 * c5)))
    sec = 2.0 * c2 + t * (6.0 * c3 + t * (12.0 * c4 + t * 20.0 * c5))
    return val, der / h, sec / (h * h)


@njit(cache=True)
def cubic_hermite(x, x0, h, f, d1):
    """Value at x of the cubic Hermite interpolant of nodes x0 + j*h carrying f and f'."""
    n = f.shape[0]
    pos = (x - x0) / h
    j = min(max(int(math.floor(pos)), 0), n - 2)
    t = min(max(pos - j, 0.0), 1.0)
    t2 = t * t
    t3 = t2 * t
    return ((2 * t3 - 3 * t2 + 1) * f[j] + (t3 - 2 * t2 + t) * h * d1[j]
            + (-2 * t3 + 3 * t2) * f[j + 1] + (t3 - t2) * h * d1[j + 1])
