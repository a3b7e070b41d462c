"""Compiled negative binomial kernels for one gene in one group of cells.

The model within a group k is  y_i ~ NB(mu_i, a),  log mu_i = b_k + log s_i + z_i'c_g,
with covariate coefficients c_g carried as an offset. Sums over a group's cells are split as
DESIGN.md section 3 describes, so that the work follows non-zeros:

- over *all* cells of the group through its "atoms": size-factor bins (log s, weight,
  covariate row) shared by every gene;
- corrected over the gene's non-zero cells, which are visited one by one.

A zero count contributes -(1/a) log(1 + a mu) to the log-likelihood, a function of the cell's
offset only, so  sum over zero cells = sum over atoms - sum over the non-zero cells.

Data layout (see `summaries.GeneBlock`): atoms of group k are atom_ptr[k]:atom_ptr[k+1];
non-zero entries of gene g in group k are nz_ptr[g*G+k]:nz_ptr[g*G+k+1], with counts nz_y and
cell indices nz_cell into cell_logs / cell_z.

Dispersion is optimised in theta = log(a). All derivatives are analytic in theta.
"""

import math

import numpy as np
from numba import njit

from .special import SMALL_COUNT, lgamma_ratio


@njit(cache=True)
def _offset(logs, z, c):
    out = logs
    for j in range(c.shape[0]):
        out += z[j] * c[j]
    return out


@njit(cache=True)
def fixed_mu(ks, bk, c, g, G, atom_ptr, atom_logs, atom_w, atom_z, cell_logs, cell_z, nz_ptr,
             nz_y, nz_cell, minmu):
    """Everything the Cox-Reid profile of gene g in groups ks needs once mu is held fixed
    (intercepts bk): mu and weight of every atom, mu and count of every non-zero cell, and
    the count tail table tail[i, j] = #cells of group ks[i] with j < y <= SMALL_COUNT, which
    turns the log-gamma terms into one log per distinct count level instead of per cell."""
    n = ks.shape[0]
    a_ptr = np.zeros(n + 1, dtype=np.int64)
    e_ptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        k = ks[i]
        a_ptr[i + 1] = a_ptr[i] + atom_ptr[k + 1] - atom_ptr[k]
        e_ptr[i + 1] = e_ptr[i] + nz_ptr[g * G + k + 1] - nz_ptr[g * G + k]
    a_mu = np.empty(a_ptr[n])
    a_w = np.empty(a_ptr[n])
    e_mu = np.empty(e_ptr[n])
    e_y = np.empty(e_ptr[n])
    tail = np.zeros((n, SMALL_COUNT))
    for i in range(n):
        k = ks[i]
        for j in range(atom_ptr[k], atom_ptr[k + 1]):
            t = a_ptr[i] + j - atom_ptr[k]
            a_mu[t] = max(math.exp(bk[i] + _offset(atom_logs[j], atom_z[j], c)), minmu)
            a_w[t] = atom_w[j]
        for e in range(nz_ptr[g * G + k], nz_ptr[g * G + k + 1]):
            t = e_ptr[i] + e - nz_ptr[g * G + k]
            cell = nz_cell[e]
            e_mu[t] = max(math.exp(bk[i] + _offset(cell_logs[cell], cell_z[cell], c)), minmu)
            e_y[t] = nz_y[e]
            if nz_y[e] <= SMALL_COUNT:
                for j in range(int(nz_y[e])):
                    tail[i, j] += 1.0
    return a_ptr, a_mu, a_w, e_ptr, e_mu, e_y, tail


@njit(cache=True)
def profile(theta, a_ptr, a_mu, a_w, e_ptr, e_mu, e_y, tail):
    """DESeq2's Cox-Reid adjusted log-likelihood with mu held fixed, summed over the groups
    of a `fixed_mu` state: per group sum_i ll(y_i; mu_i, a) - 0.5 log(sum_i mu_i/(1 + a mu_i)),
    and its first two derivatives in theta. Terms free of a are dropped, as DESeq2 does.

    A count y adds lgamma(y + r) - lgamma(r) + y theta - (y + r) log(1 + a mu) (r = 1/a);
    as the atoms already counted the cell as a zero, -r log(1 + a mu), the non-zero cell adds
    the difference lgamma(y + r) - lgamma(r) + y theta - y log(1 + a mu)."""
    a = math.exp(theta)
    r = 1.0 / a
    F = 0.0
    F1 = 0.0
    F2 = 0.0
    for i in range(a_ptr.shape[0] - 1):
        f = 0.0
        f1 = 0.0
        f2 = 0.0
        V = 0.0
        V1 = 0.0
        V2 = 0.0
        for t in range(a_ptr[i], a_ptr[i + 1]):
            mu = a_mu[t]
            w = a_w[t]
            u = math.log1p(a * mu)
            q = a * mu / (1.0 + a * mu)
            v = mu / (1.0 + a * mu)
            f -= w * r * u
            f1 += w * (r * u - r * q)
            f2 += w * (-r * u + r * q + r * q * q)
            V += w * v
            V1 -= w * v * q
            V2 += w * v * q * (2.0 * q - 1.0)
        lg = 0.0
        d1 = 0.0
        d2 = 0.0
        for t in range(e_ptr[i], e_ptr[i + 1]):
            y = e_y[t]
            mu = e_mu[t]
            u = math.log1p(a * mu)
            q = a * mu / (1.0 + a * mu)
            f += y * (theta - u)
            f1 += y * (1.0 - q)
            f2 -= y * q * (1.0 - q)
            if y > SMALL_COUNT:
                l0, l1, l2 = lgamma_ratio(y, r)
                lg += l0
                d1 += l1
                d2 += l2
        for j in range(SMALL_COUNT):
            n_j = tail[i, j]
            if n_j == 0.0:
                break
            s = j + r
            lg += n_j * math.log(s)
            d1 += n_j / s
            d2 -= n_j / (s * s)
        f += lg
        f1 -= r * d1
        f2 += r * d1 + r * r * d2
        if V > 0.0:
            f -= 0.5 * math.log(V)
            f1 -= 0.5 * V1 / V
            f2 -= 0.5 * (V2 / V - (V1 / V) ** 2)
        F += f
        F1 += f1
        F2 += f2
    return F, F1, F2


@njit(cache=True)
def _score_terms(b, a, a_ptr, a_base, a_w, e_ptr, e_base, e_y, minmu):
    """Score, observed information, Fisher information and their theta derivatives for the
    intercept b of the single group of a `fixed_mu` state built at b = 0 with no floor
    (so mu = exp(b) * base), at dispersion a; mu floored at minmu no longer moves with b."""
    eb = math.exp(b)
    score = 0.0
    hess = 0.0
    fisher = 0.0
    s_theta = 0.0
    f_theta = 0.0
    f_b = 0.0
    for t in range(a_ptr[0], a_ptr[1]):
        raw = eb * a_base[t]
        mu = max(raw, minmu)
        w = a_w[t]
        den = 1.0 + a * mu
        v = mu / den
        q = a * mu / den
        score -= w * v
        fisher += w * v
        s_theta += w * v * q
        f_theta -= w * v * q
        if raw >= minmu:
            hess += w * v / den
            f_b += w * v / den
    for t in range(e_ptr[0], e_ptr[1]):
        y = e_y[t]
        raw = eb * e_base[t]
        mu = max(raw, minmu)
        den = 1.0 + a * mu
        score += y / den
        s_theta -= y * a * mu / (den * den)
        if raw >= minmu:
            hess += y * a * mu / (den * den)
    return score, hess, fisher, s_theta, f_theta, f_b


@njit(cache=True)
def mle(theta, a_ptr, a_base, a_w, e_ptr, e_base, e_y, tail, minmu, b_start):
    """Maximum-likelihood intercept b of the single group of a `fixed_mu` state built at
    b = 0 with no floor, at fixed dispersion exp(theta), by Newton's method on the concave
    log-likelihood, started from b_start or (NaN) the Poisson estimate.

    Returns (b, fisher, db/dtheta, dfisher/dtheta); b = -inf and zeros for a group with no
    counts, whose MLE lies at the boundary."""
    ysum = 0.0
    for t in range(e_ptr[0], e_ptr[1]):
        ysum += e_y[t]
    if ysum <= 0.0:
        return -np.inf, 0.0, 0.0, 0.0
    if np.isfinite(b_start):
        b = b_start
    else:
        expo = 0.0
        for t in range(a_ptr[0], a_ptr[1]):
            expo += a_w[t] * a_base[t]
        b = math.log(ysum / expo)
    a = math.exp(theta)
    for _ in range(100):
        score, hess, _, _, _, _ = _score_terms(b, a, a_ptr, a_base, a_w, e_ptr, e_base, e_y,
                                               minmu)
        if hess <= 0.0:
            break
        step = min(max(score / hess, -5.0), 5.0)
        b += step
        if abs(step) < 1e-12 * max(1.0, abs(b)):
            break
    score, hess, fisher, s_theta, f_theta, f_b = _score_terms(b, a, a_ptr, a_base, a_w, e_ptr,
                                                              e_base, e_y, minmu)
    db = s_theta / hess if hess > 0.0 else 0.0
    return b, fisher, db, f_theta + f_b * db


@njit(cache=True)
def base_state(c, g, k, G, atom_ptr, atom_logs, atom_w, atom_z, cell_logs, cell_z, nz_ptr,
               nz_y, nz_cell):
    """The `fixed_mu` state of group k at b = 0 without a floor, which `mle` scales by e^b."""
    return fixed_mu(np.full(1, k, dtype=np.int64), np.zeros(1), c, g, G, atom_ptr, atom_logs,
                    atom_w, atom_z, cell_logs, cell_z, nz_ptr, nz_y, nz_cell, 0.0)


@njit(cache=True)
def group_mle(theta, c, g, k, G, atom_ptr, atom_logs, atom_w, atom_z,
              cell_logs, cell_z, nz_ptr, nz_y, nz_cell, minmu, b_start=np.nan):
    """`mle` of group k of gene g with covariate offsets c."""
    state = base_state(c, g, k, G, atom_ptr, atom_logs, atom_w, atom_z, cell_logs, cell_z,
                       nz_ptr, nz_y, nz_cell)
    return mle(theta, *state, minmu, b_start)


BETA_BOUND = 30.0  # DESeq2's bound on coefficients (natural log scale)


@njit(cache=True)
def covariate_fit(theta, use, g, G, atom_ptr, atom_logs, atom_w, atom_z, cell_logs, cell_z,
                  nz_ptr, nz_y, nz_cell, minmu):
    """Joint MLE, at fixed dispersion, of one intercept per group in `use` (a boolean mask)
    and covariate coefficients c shared by those groups' cells, by Fisher scoring. The
    intercept block of the information is diagonal, so each step solves a q x q Schur
    complement: one visit of every atom and non-zero of the groups per iteration.

    Returns (c, bounded): bounded is True when a coefficient ran to +-BETA_BOUND, i.e. the
    cells could not identify it (a covariate stratum without counts)."""
    q = atom_z.shape[1]
    b = np.empty(G)
    c = np.zeros(q)
    active = use.copy()
    for k in range(G):
        if active[k]:
            b[k] = group_mle(theta, c, g, k, G, atom_ptr, atom_logs, atom_w, atom_z, cell_logs,
                             cell_z, nz_ptr, nz_y, nz_cell, minmu, np.nan)[0]
            active[k] = np.isfinite(b[k])
    a = math.exp(theta)
    D = np.zeros(G)
    B = np.zeros((G, q))
    sb = np.zeros(G)
    for _ in range(200):
        C = np.zeros((q, q))
        sc = np.zeros(q)
        S = np.zeros((q, q))
        rhs = np.zeros(q)
        for k in range(G):
            if not active[k]:
                continue
            D[k] = 0.0
            B[k] = 0.0
            sb[k] = 0.0
            for j in range(atom_ptr[k], atom_ptr[k + 1]):
                z = atom_z[j]
                mu = max(math.exp(b[k] + _offset(atom_logs[j], z, c)), minmu)
                v = atom_w[j] * mu / (1.0 + a * mu)
                D[k] += v
                B[k] += v * z
                C += v * np.outer(z, z)
                sb[k] -= v
                sc -= v * z
            for e in range(nz_ptr[g * G + k], nz_ptr[g * G + k + 1]):
                z = cell_z[nz_cell[e]]
                mu = max(math.exp(b[k] + _offset(cell_logs[nz_cell[e]], z, c)), minmu)
                t = nz_y[e] / (1.0 + a * mu)
                sb[k] += t
                sc += t * z
            S -= np.outer(B[k], B[k]) / D[k]
            rhs -= B[k] * sb[k] / D[k]
        S += C
        rhs += sc
        for d in range(q):
            S[d, d] += 1e-10
        dc = np.linalg.solve(S, rhs)
        big = np.max(np.abs(dc)) if q > 0 else 0.0
        for k in range(G):
            if active[k]:
                big = max(big, abs((sb[k] - np.dot(B[k], dc)) / D[k]))
        shrink = 5.0 / big if big > 5.0 else 1.0
        for k in range(G):
            if active[k]:
                db = (sb[k] - np.dot(B[k], dc)) / D[k]
                b[k] = min(max(b[k] + shrink * db, -BETA_BOUND), BETA_BOUND)
        for d in range(q):
            c[d] = min(max(c[d] + shrink * dc[d], -BETA_BOUND), BETA_BOUND)
        if big < 1e-10:
            break
    bounded = False
    for d in range(q):
        bounded = bounded or abs(c[d]) >= BETA_BOUND
    for k in range(G):
        bounded = bounded or (active[k] and abs(b[k]) >= BETA_BOUND)
    return c, bounded


# --- interpolation of per-gene control tables over a uniform theta grid -------------------

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
