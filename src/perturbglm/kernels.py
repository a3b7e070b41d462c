"""Compiled negative binomial kernels for one gene in one group of cells.

The model within a group k is  y_i ~ NB(mu_i, a),  log mu_i = b_k + log s_i + z_i'c_g,
with covariate coefficients c_g carried as an offset. Sums over a group's cells are split as
DESIGN.md section 3 describes, so that the work follows non-zeros:

- over *all* cells of the group through its "atoms": size-factor bins (log s, weight,
  spread, covariate row) shared by every gene;
- corrected over the gene's non-zero cells, whose counts are summed per atom.

Within an atom, a sum over its cells of a smooth function of log mu is taken as its
second-order expansion about the atom's mean log size factor (first-order terms cancel for
the atom's own cells; the counts carry their first and second moments). With at most
summaries.ATOM_BINS bins the neglected terms are O(width^3) ~ 1e-7 relative.

A zero count contributes -(1/a) log(1 + a mu) to the log-likelihood, a function of the cell's
offset only, so  sum over zero cells = sum over atoms - sum over the non-zero cells.

Data layout (see `summaries.GeneBlock`): atoms of group k are atom_ptr[k]:atom_ptr[k+1], each
with the mean log size factor of its cells, their number and the sum of their squared
deviations from that mean (atom_w2, 0 for single cells); cell_atom maps a cell to its atom.
Non-zero entries of gene g in group k are nz_ptr[g*G+k]:nz_ptr[g*G+k+1], with counts nz_y and
cell indices nz_cell into cell_logs / cell_z / cell_atom.

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
def _sigmoid_terms(am):
    """For a summand in lambda = log(a mu): u = log(1 + e^lambda), q = u', p = q' = q(1-q),
    k = p', kk = p''."""
    u = math.log1p(am)
    q = am / (1.0 + am)
    p = q * (1.0 - q)
    k = p * (1.0 - 2.0 * q)
    return u, q, p, k, k * (1.0 - 2.0 * q) - 2.0 * p * p


@njit(cache=True)
def fixed_mu(ks, bk, c, g, data, minmu):
    """Everything the Cox-Reid profile of gene g in groups ks needs once mu is held fixed
    (intercepts bk):
    - every atom's mu (at its mean log size factor), weight and spread w2 (the sum of its
      cells' squared log size-factor deviations);
    - the gene's counts summed per atom, with their first and second moments in those
      deviations (Y0, Y1, Y2), so that sums over non-zero cells are second-order expansions
      about the atom (exact for single-cell atoms);
    - the count tail table tail[i, j] = #cells of group ks[i] with j < y <= SMALL_COUNT,
      which turns the log-gamma terms into one log per count level, and the larger counts.
    A mu floored at minmu does not move with the size factor: its expansion terms are 0."""
    n = ks.shape[0]
    a_ptr = np.zeros(n + 1, dtype=np.int64)
    n_nz = 0
    for i in range(n):
        k = ks[i]
        a_ptr[i + 1] = a_ptr[i] + data.atom_ptr[k + 1] - data.atom_ptr[k]
        n_nz += data.nz_ptr[g * data.G + k + 1] - data.nz_ptr[g * data.G + k]
    a_mu = np.empty(a_ptr[n])
    a_w = np.empty(a_ptr[n])
    a_w2 = np.empty(a_ptr[n])
    e_ptr = np.zeros(n + 1, dtype=np.int64)
    e_mu = np.empty(min(n_nz, a_ptr[n]))
    e_y = np.empty((min(n_nz, a_ptr[n]), 3))
    big_ptr = np.zeros(n + 1, dtype=np.int64)
    big_y = np.empty(n_nz)
    tail = np.zeros((n, SMALL_COUNT))
    for i in range(n):
        k = ks[i]
        first = data.atom_ptr[k]
        n_a = data.atom_ptr[k + 1] - first
        floored = np.zeros(n_a, dtype=np.bool_)
        for j in range(first, data.atom_ptr[k + 1]):
            t = a_ptr[i] + j - first
            raw = math.exp(bk[i] + _offset(data.atom_logs[j], data.atom_z[j], c))
            floored[j - first] = raw < minmu
            a_mu[t] = max(raw, minmu)
            a_w[t] = data.atom_w[j]
            a_w2[t] = 0.0 if floored[j - first] else data.atom_w2[j]
        moments = np.zeros((n_a, 3))
        big_ptr[i + 1] = big_ptr[i]
        for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
            cell = data.nz_cell[e]
            j = data.cell_atom[cell] - first
            d = data.cell_logs[cell] - data.atom_logs[first + j]
            y = float(data.nz_y[e])
            moments[j, 0] += y
            moments[j, 1] += y * d
            moments[j, 2] += y * d * d
            if y <= SMALL_COUNT:
                for m in range(int(y)):
                    tail[i, m] += 1.0
            else:
                big_y[big_ptr[i + 1]] = y
                big_ptr[i + 1] += 1
        t = e_ptr[i]
        for j in range(n_a):
            if moments[j, 0] > 0.0:
                e_mu[t] = a_mu[a_ptr[i] + j]
                e_y[t, 0] = moments[j, 0]
                e_y[t, 1] = 0.0 if floored[j] else moments[j, 1]
                e_y[t, 2] = 0.0 if floored[j] else moments[j, 2]
                t += 1
        e_ptr[i + 1] = t
    return a_ptr, a_mu, a_w, a_w2, e_ptr, e_mu, e_y, big_ptr, big_y, tail


@njit(cache=True)
def profile(theta, a_ptr, a_mu, a_w, a_w2, e_ptr, e_mu, e_y, big_ptr, big_y, tail):
    """DESeq2's Cox-Reid adjusted log-likelihood with mu held fixed, summed over the groups
    of a `fixed_mu` state: per group sum_i ll(y_i; mu_i, a) - 0.5 log(sum_i mu_i/(1 + a mu_i)),
    and its first two derivatives in theta. Terms free of a are dropped, as DESeq2 does.

    A count y adds lgamma(y + r) - lgamma(r) + y theta - (y + r) log(1 + a mu) (r = 1/a);
    as the atoms already counted the cell as a zero, -r log(1 + a mu), the non-zero cell adds
    the difference lgamma(y + r) - lgamma(r) + y theta - y log(1 + a mu). Sums over an atom's
    cells are expanded to second order in their log size-factor deviations."""
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
            w = a_w[t]
            h = 0.5 * a_w2[t]
            u, q, p, k, _ = _sigmoid_terms(a * a_mu[t])
            U = w * u + h * p
            Q1 = w * q + h * k
            Q2 = w * q * q + h * (2.0 * p * p + 2.0 * q * k)
            Q3 = w * q * q * q + h * (6.0 * q * p * p + 3.0 * q * q * k)
            f -= r * U
            f1 += r * (U - Q1)
            f2 += r * (Q1 + Q2 - U)
            V += r * Q1
            V1 -= r * Q2
            V2 += r * (2.0 * Q3 - Q2)
        for t in range(e_ptr[i], e_ptr[i + 1]):
            y0 = e_y[t, 0]
            y1 = e_y[t, 1]
            y2 = 0.5 * e_y[t, 2]
            u, q, p, k, kk = _sigmoid_terms(a * e_mu[t])
            f += y0 * theta - (y0 * u + y1 * q + y2 * p)
            f1 += y0 - (y0 * q + y1 * p + y2 * k)
            f2 -= y0 * p + y1 * k + y2 * kk
        lg = 0.0
        d1 = 0.0
        d2 = 0.0
        for t in range(big_ptr[i], big_ptr[i + 1]):
            l0, l1, l2 = lgamma_ratio(big_y[t], r)
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
def _score_terms(b, a, a_ptr, a_base, a_w, a_w2, e_ptr, e_base, e_y, minmu):
    """Score, observed information, Fisher information and their theta derivatives for the
    intercept b of the single group of a `fixed_mu` state built at b = 0 with no floor
    (so mu = exp(b) * base), at dispersion a; mu floored at minmu no longer moves with b
    (nor with the size factor: no expansion terms)."""
    eb = math.exp(b)
    r = 1.0 / a
    score = 0.0
    hess = 0.0
    fisher = 0.0
    s_theta = 0.0
    f_theta = 0.0
    f_b = 0.0
    for t in range(a_ptr[0], a_ptr[1]):
        raw = eb * a_base[t]
        free = raw >= minmu
        w = a_w[t]
        h = 0.5 * a_w2[t] if free else 0.0
        _, q, p, k, kk = _sigmoid_terms(a * max(raw, minmu))
        Q1 = r * (w * q + h * k)
        Q2 = r * (w * q * q + h * (2.0 * p * p + 2.0 * q * k))
        score -= Q1
        fisher += Q1
        s_theta += Q2
        f_theta -= Q2
        if free:
            P = r * (w * p + h * kk)
            hess += P
            f_b += P
    for t in range(e_ptr[0], e_ptr[1]):
        raw = eb * e_base[t]
        free = raw >= minmu
        y0 = e_y[t, 0]
        y1 = e_y[t, 1] if free else 0.0
        y2 = 0.5 * e_y[t, 2] if free else 0.0
        _, q, p, k, kk = _sigmoid_terms(a * max(raw, minmu))
        Sp = y0 * p + y1 * k + y2 * kk
        score += y0 - (y0 * q + y1 * p + y2 * k)
        s_theta -= Sp
        if free:
            hess += Sp
    return score, hess, fisher, s_theta, f_theta, f_b


@njit(cache=True)
def mle(theta, a_ptr, a_base, a_w, a_w2, e_ptr, e_base, e_y, big_ptr, big_y, tail, minmu,
        b_start):
    """Maximum-likelihood intercept b of the single group of a `fixed_mu` state built at
    b = 0 with no floor, at fixed dispersion exp(theta), by Newton's method on the concave
    log-likelihood, started from b_start or (NaN) the Poisson estimate.

    Returns (b, fisher, db/dtheta, dfisher/dtheta); b = -inf and zeros for a group with no
    counts, whose MLE lies at the boundary."""
    ysum = 0.0
    for t in range(e_ptr[0], e_ptr[1]):
        ysum += e_y[t, 0]
    if ysum <= 0.0:
        return -np.inf, 0.0, 0.0, 0.0
    if np.isfinite(b_start):
        b = b_start
    else:
        expo = 0.0
        for t in range(a_ptr[0], a_ptr[1]):
            expo += (a_w[t] + 0.5 * a_w2[t]) * a_base[t]
        b = math.log(ysum / expo)
    a = math.exp(theta)
    for _ in range(100):
        score, hess, _, _, _, _ = _score_terms(b, a, a_ptr, a_base, a_w, a_w2, e_ptr, e_base,
                                               e_y, minmu)
        if hess <= 0.0:
            break
        step = min(max(score / hess, -5.0), 5.0)
        b += step
        if abs(step) < 1e-12 * max(1.0, abs(b)):
            break
    score, hess, fisher, s_theta, f_theta, f_b = _score_terms(b, a, a_ptr, a_base, a_w, a_w2,
                                                              e_ptr, e_base, e_y, minmu)
    db = s_theta / hess if hess > 0.0 else 0.0
    return b, fisher, db, f_theta + f_b * db


@njit(cache=True)
def base_state(c, g, k, data):
    """The `fixed_mu` state of group k at b = 0 without a floor, which `mle` scales by e^b."""
    return fixed_mu(np.full(1, k, dtype=np.int64), np.zeros(1), c, g, data, 0.0)


@njit(cache=True)
def group_mle(theta, c, g, k, data, minmu, b_start=np.nan):
    """`mle` of group k of gene g with covariate offsets c."""
    state = base_state(c, g, k, data)
    return mle(theta, *state, minmu, b_start)


BETA_BOUND = 30.0  # DESeq2's bound on coefficients (natural log scale)


@njit(cache=True)
def covariate_fit(theta, use, g, data, minmu):
    """Joint MLE, at fixed dispersion, of one intercept per group in `use` (a boolean mask)
    and covariate coefficients c shared by those groups' cells, by Fisher scoring. The
    intercept block of the information is diagonal, so each step solves a q x q Schur
    complement: one visit of every atom and non-zero of the groups per iteration.

    Returns (c, bounded): bounded is True when a coefficient ran to +-BETA_BOUND, i.e. the
    cells could not identify it (a covariate stratum without counts)."""
    q = data.atom_z.shape[1]
    b = np.empty(data.G)
    c = np.zeros(q)
    active = use.copy()
    for k in range(data.G):
        if active[k]:
            b[k] = group_mle(theta, c, g, k, data, minmu,
                             np.nan)[0]
            active[k] = np.isfinite(b[k])
    a = math.exp(theta)
    D = np.zeros(data.G)
    B = np.zeros((data.G, q))
    sb = np.zeros(data.G)
    for _ in range(200):
        C = np.zeros((q, q))
        sc = np.zeros(q)
        S = np.zeros((q, q))
        rhs = np.zeros(q)
        for k in range(data.G):
            if not active[k]:
                continue
            D[k] = 0.0
            B[k] = 0.0
            sb[k] = 0.0
            for j in range(data.atom_ptr[k], data.atom_ptr[k + 1]):
                z = data.atom_z[j]
                raw = math.exp(b[k] + _offset(data.atom_logs[j], z, c))
                h = 0.5 * data.atom_w2[j] if raw >= minmu else 0.0
                _, qa, _, ka, _ = _sigmoid_terms(a * max(raw, minmu))
                v = (data.atom_w[j] * qa + h * ka) / a
                D[k] += v
                B[k] += v * z
                C += v * np.outer(z, z)
                sb[k] -= v
                sc -= v * z
            for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
                z = data.cell_z[data.nz_cell[e]]
                mu = max(math.exp(b[k] + _offset(data.cell_logs[data.nz_cell[e]], z, c)), minmu)
                t = data.nz_y[e] / (1.0 + a * mu)
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
        for k in range(data.G):
            if active[k]:
                big = max(big, abs((sb[k] - np.dot(B[k], dc)) / D[k]))
        shrink = 5.0 / big if big > 5.0 else 1.0
        for k in range(data.G):
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
    for k in range(data.G):
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
