"""Hermite interpolation of functions tabulated with their derivatives on a uniform grid:
the control's per-gene tables (stages.py) and the groups' zero-count tables (zero_terms.py)."""

import math

from numba import njit


@njit(cache=True)
def quintic_hermite(x, x0, h, f, d1, d2):
    """Value, first and second derivative at x of the quintic Hermite interpolant of nodes
    x0 + j*h carrying f, f' and f''. Clamped to the grid ends."""
    n = f.shape[0]
    pos = (x - x0) / h
    j = min(max(int(math.floor(pos)), 0), n - 2)
    t = min(max(pos - j, 0.0), 1.0)
    t2 = t * t
    t3 = t2 * t
    t4 = t3 * t
    t5 = t4 * t
    p0, p1 = f[j], f[j + 1]
    m0, m1 = d1[j] * h, d1[j + 1] * h
    s0, s1 = d2[j] * h * h, d2[j + 1] * h * h
    val = (p0 * (1 - 10 * t3 + 15 * t4 - 6 * t5) + m0 * (t - 6 * t3 + 8 * t4 - 3 * t5)
           + s0 * 0.5 * (t2 - 3 * t3 + 3 * t4 - t5) + s1 * 0.5 * (t3 - 2 * t4 + t5)
           + m1 * (-4 * t3 + 7 * t4 - 3 * t5) + p1 * (10 * t3 - 15 * t4 + 6 * t5))
    der = (p0 * (-30 * t2 + 60 * t3 - 30 * t4) + m0 * (1 - 18 * t2 + 32 * t3 - 15 * t4)
           + s0 * 0.5 * (2 * t - 9 * t2 + 12 * t3 - 5 * t4) + s1 * 0.5 * (3 * t2 - 8 * t3 + 5 * t4)
           + m1 * (-12 * t2 + 28 * t3 - 15 * t4) + p1 * (30 * t2 - 60 * t3 + 30 * t4))
    sec = (p0 * (-60 * t + 180 * t2 - 120 * t3) + m0 * (-36 * t + 96 * t2 - 60 * t3)
           + s0 * 0.5 * (2 - 18 * t + 36 * t2 - 20 * t3) + s1 * 0.5 * (6 * t - 24 * t2 + 20 * t3)
           + m1 * (-24 * t + 84 * t2 - 60 * t3) + p1 * (60 * t - 180 * t2 + 120 * t3))
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
