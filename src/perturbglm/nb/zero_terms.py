"""Zero-count terms: sums over every cell of a group, from its size-factor atoms.

An atom is w cells of a group with mean log size factor l and spread w2 (kernels.py). At
dispersion a = e^theta and intercept b its cells have y_i = log(a mu_i) about
y = theta + b + l, and a sum over them of a smooth f(y_i) is taken to second order,
L[f] = w f(y) + h f''(y), h = w2 / 2. A cell's zero-count log-likelihood is -u(y) / a with
u = log(1 + e^y), and every zero-count term of the kernels is made of the sums L[u^(n)],
n = 0..3. With t = e^y and u = t + rho:

    L[u^(n)] = a Emu + R_n,    Emu = (w + h) mu,    R_n = L[rho^(n)].

rho^(n) are written without cancellation (they are O(t^2) as t -> 0): the profile's slope
at small dispersions is a difference of nearly equal sums, and stays accurate.

Without covariates a group's R_n depend on x = theta + b alone. `build` tabulates them once
per group on a grid of x for quintic Hermite interpolation (relative error ~1e-10, below the
atoms' own 1e-7); below the grid, where every t < T_LO, three terms of their series in t are
exact to 1e-12; above it (some t > T_HI: never in practice) and wherever a mean is floored,
`group_zero` sums the atoms one by one.
"""

import math

import numpy as np
from numba import njit, prange

from .hermite import quintic_hermite

T_LO = 1e-4
T_HI = math.exp(25.0)
STEP = 0.125  # grid spacing in x
X0, S, SMIN, C2 = 0, 1, 2, 3  # columns of a group's constants (`build`); C3, C4 follow C2
LOG, W, W2 = 0, 1, 2          # columns of atom_stats (summaries.Atoms)


@njit(cache=True)
def offset(logs, z, c):
    """An atom's log mean less the intercept: its log size factor plus covariates z'c."""
    out = logs
    for j in range(c.shape[0]):
        out += z[j] * c[j]
    return out


@njit(cache=True)
def atom_mean(j, b, c, data, minmu):
    """Atom j at intercept b and covariate coefficients c: its unfloored mean raw (at its mean
    log size factor), its mean mu = max(raw, minmu) and h, half its spread, which is 0 when
    the mean is floored (a floored mean does not move with the size factor)."""
    raw = math.exp(b + offset(data.atom_stats[j, LOG], data.atom_z[j], c))
    if raw < minmu:
        return raw, minmu, 0.0
    return raw, raw, 0.5 * data.atom_stats[j, W2]


@njit(cache=True)
def atom_rho(t, w, h):
    """R_0..R_3 of one atom of w cells with half-spread h at t = e^y: w rho^(n) + h rho^(n+2)."""
    t2 = t * t
    s = 1.0 / (1.0 + t)
    if t < 1e-3:
        r0 = t2 * (-0.5 + t * (1.0 / 3.0 + t * (-0.25 + t * 0.2)))
    else:
        r0 = math.log1p(t) - t
    r1 = -t2 * s
    r2 = r1 * (2.0 + t) * s
    r3 = -t2 * (4.0 + t * (3.0 + t)) * s * s * s
    r4 = -t2 * (8.0 + t * (5.0 + t * (4.0 + t))) * (s * s) * (s * s)
    r5 = -t2 * (16.0 + t * (-1.0 + t * (11.0 + t * (5.0 + t)))) * (s * s) * (s * s) * s
    return w * r0 + h * r2, w * r1 + h * r3, w * r2 + h * r4, w * r3 + h * r5


@njit(cache=True, parallel=True)
def build(atom_ptr, atom_stats):
    """Every group's table: ptr (its nodes are ptr[k]:ptr[k+1] of R, 4 x nodes, rows R_0..R_3)
    and its constants (groups x 6, one row per group so that the kernels pass one array):
    X0, its first node; S = sum (w + h) e^l (so that Emu = e^b S); SMIN, its smallest atom
    size factor (no mean is floored while e^b smin >= minmu); C2..C4, the series
    coefficients C_m = sum (w + m^2 h) e^(m l), m = 2, 3, 4, below the grid."""
    G = atom_ptr.shape[0] - 1
    ptr = np.zeros(G + 1, dtype=np.int64)
    const = np.zeros((G, 6))
    for k in range(G):
        lo = atom_stats[atom_ptr[k]:atom_ptr[k + 1], LOG]
        l_min = lo.min() if lo.shape[0] else 0.0
        l_max = lo.max() if lo.shape[0] else 0.0
        const[k, X0] = math.log(T_LO) - l_max
        const[k, SMIN] = math.exp(l_min)
        n = int(math.ceil((math.log(T_HI) - l_min - const[k, X0]) / STEP)) + 1
        ptr[k + 1] = ptr[k] + n
    R = np.zeros((4, ptr[G]))
    for k in prange(G):
        for j in range(atom_ptr[k], atom_ptr[k + 1]):
            w, h = atom_stats[j, W], 0.5 * atom_stats[j, W2]
            e = math.exp(atom_stats[j, LOG])
            const[k, S] += (w + h) * e
            for m in range(2, 5):
                const[k, C2 + m - 2] += (w + m * m * h) * e ** m
        for i in range(ptr[k + 1] - ptr[k]):
            x = const[k, X0] + i * STEP
            for j in range(atom_ptr[k], atom_ptr[k + 1]):
                r0, r1, r2, r3 = atom_rho(math.exp(x + atom_stats[j, LOG]),
                                          atom_stats[j, W], 0.5 * atom_stats[j, W2])
                R[0, ptr[k] + i] += r0
                R[1, ptr[k] + i] += r1
                R[2, ptr[k] + i] += r2
                R[3, ptr[k] + i] += r3
    return ptr, R, const


@njit(cache=True)
def exposure(k, c, data):
    """sum (w + h) e^offset over group k's atoms: its cells' summed means at b = 0."""
    if data.tab_ptr.shape[0] > 0:
        return data.tab_const[k, S]
    out = 0.0
    for j in range(data.atom_ptr[k], data.atom_ptr[k + 1]):
        _, mu, h = atom_mean(j, 0.0, c, data, 0.0)
        out += (data.atom_stats[j, W] + h) * mu
    return out


@njit(cache=True)
def tabulated(k, eb, data, minmu):
    """Whether group k's zero-count sums come from its table at intercept b (eb = e^b): it
    has one (no covariates) and none of its means is floored."""
    return data.tab_ptr.shape[0] > 0 and eb * data.tab_const[k, SMIN] >= minmu


@njit(cache=True)
def group_zero(theta, k, b, c, data, minmu):
    """Emu and R_0..R_3 summed over group k's atoms at dispersion e^theta, intercept b and
    covariate coefficients c: from the group's table where `tabulated` (and below its top),
    else atom by atom."""
    x = theta + b
    eb = math.exp(b)
    if tabulated(k, eb, data, minmu):
        p0 = data.tab_ptr[k]
        n = data.tab_ptr[k + 1] - p0
        x0 = data.tab_const[k, X0]
        emu = eb * data.tab_const[k, S]
        if x < x0:
            e = math.exp(x)
            c2 = data.tab_const[k, C2] * e * e
            c3 = data.tab_const[k, C2 + 1] * e * e * e
            c4 = data.tab_const[k, C2 + 2] * (e * e) * (e * e)
            return (emu, -c2 / 2.0 + c3 / 3.0 - c4 / 4.0, -c2 + c3 - c4,
                    -2.0 * c2 + 3.0 * c3 - 4.0 * c4, -4.0 * c2 + 9.0 * c3 - 16.0 * c4)
        if x <= x0 + (n - 1) * STEP:
            r0 = quintic_hermite(x, x0, STEP, data.tab_R, 0, p0, n)[0]
            r1, r2, r3 = quintic_hermite(x, x0, STEP, data.tab_R, 1, p0, n)
            return emu, r0, r1, r2, r3
    a = math.exp(theta)
    emu = r0 = r1 = r2 = r3 = 0.0
    for j in range(data.atom_ptr[k], data.atom_ptr[k + 1]):
        _, mu, h = atom_mean(j, b, c, data, minmu)
        w = data.atom_stats[j, W]
        emu += (w + h) * mu
        d0, d1, d2, d3 = atom_rho(a * mu, w, h)
        r0 += d0
        r1 += d1
        r2 += d2
        r3 += d3
    return emu, r0, r1, r2, r3
