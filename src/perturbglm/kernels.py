"""Compiled negative binomial kernels for one gene in one or a few groups of cells.

The model within a group k is  y_i ~ NB(mu_i, a),  log mu_i = b_k + log s_i + z_i'c_g,
with covariate coefficients c_g either held fixed (an offset) or fitted jointly with the
groups' intercepts (`joint_fit`). Sums over a group's cells are split as DESIGN.md section 3
describes, so that the work follows non-zeros:

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
cell indices nz_cell into cell_logs / cell_atom.

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
def atom_moments(g, k, data):
    """The counts of gene g in group k summed per atom of the group (rows in atom order),
    with their first and second moments in the cells' log size-factor deviations from the
    atom's mean (Y0, Y1, Y2)."""
    first = data.atom_ptr[k]
    moments = np.zeros((data.atom_ptr[k + 1] - first, 3))
    for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
        _add_moments(moments, data.nz_cell[e], float(data.nz_y[e]), first, data)
    return moments


@njit(cache=True)
def _add_moments(moments, cell, y, first, data):
    """Add count y of a cell to its atom's row of moments (atoms of the group from `first`)."""
    j = data.cell_atom[cell] - first
    d = data.cell_logs[cell] - data.atom_logs[first + j]
    moments[j, 0] += y
    moments[j, 1] += y * d
    moments[j, 2] += y * d * d


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
            y = float(data.nz_y[e])
            _add_moments(moments, data.nz_cell[e], y, first, data)
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
def _atom_sums(am, w, w2):
    """Second-order sums over an atom's w cells (spread w2) of u and of q, q^2, q^3 (see
    _sigmoid_terms) at lambda = log(a mu): the atom's zero-count log-likelihood is -U/a, its
    weight sum_i mu_i/(1 + a mu_i) is Q1/a, and its theta derivatives are -Q2/a and
    (2 Q3 - Q2)/a."""
    h = 0.5 * w2
    u, q, p, k, _ = _sigmoid_terms(am)
    return (w * u + h * p, w * q + h * k, w * q * q + h * (2.0 * p * p + 2.0 * q * k),
            w * q * q * q + h * (6.0 * q * p * p + 3.0 * q * q * k))


@njit(cache=True)
def schur_terms(theta, a_ptr, a_mu, a_w, a_w2, a_z):
    """The covariate part of DESeq2's Cox-Reid term for the groups of a `fixed_mu` state
    (a_z: the covariate rows of its atoms, from `atoms_z`). With an intercept per group and
    shared coefficients c, the information X'WX has a diagonal intercept block, so
    log det X'WX = sum_k log D_k + log det S, S = sum_k (C_k - B_k B_k' / D_k), where D_k,
    B_k and C_k sum w, w z and w z z' over group k's cells. Returns S and its first two
    theta derivatives, stacked (3 x q x q); `profile` holds the sum_k log D_k part."""
    q = a_z.shape[1]
    a = math.exp(theta)
    r = 1.0 / a
    S = np.zeros((3, q, q))
    D = np.zeros(3)
    B = np.zeros((3, q))
    C = np.zeros((3, q, q))
    wt = np.zeros(3)
    for i in range(a_ptr.shape[0] - 1):
        D[:] = 0.0
        B[:] = 0.0
        C[:] = 0.0
        for t in range(a_ptr[i], a_ptr[i + 1]):
            _, Q1, Q2, Q3 = _atom_sums(a * a_mu[t], a_w[t], a_w2[t])
            wt[0] = r * Q1
            wt[1] = -r * Q2
            wt[2] = r * (2.0 * Q3 - Q2)
            for d in range(3):
                D[d] += wt[d]
                for u in range(q):
                    wz = wt[d] * a_z[t, u]
                    B[d, u] += wz
                    for v in range(q):
                        C[d, u, v] += wz * a_z[t, v]
        if D[0] <= 0.0:
            continue
        for u in range(q):
            for v in range(q):
                bb = B[0, u] * B[0, v]
                cross = B[1, u] * B[0, v] + B[0, u] * B[1, v]
                S[0, u, v] += C[0, u, v] - bb / D[0]
                S[1, u, v] += C[1, u, v] - cross / D[0] + bb * D[1] / D[0] ** 2
                S[2, u, v] += (C[2, u, v] - (B[2, u] * B[0, v] + B[0, u] * B[2, v]
                                             + 2.0 * B[1, u] * B[1, v]) / D[0]
                               + 2.0 * cross * D[1] / D[0] ** 2
                               + bb * (D[2] / D[0] ** 2 - 2.0 * D[1] ** 2 / D[0] ** 3))
    return S


@njit(cache=True)
def atoms_z(ks, data):
    """The covariate rows of the atoms of groups ks, in `fixed_mu`'s order."""
    n = 0
    for k in ks:
        n += data.atom_ptr[k + 1] - data.atom_ptr[k]
    out = np.empty((n, data.atom_z.shape[1]))
    t = 0
    for k in ks:
        m = data.atom_ptr[k + 1] - data.atom_ptr[k]
        out[t:t + m] = data.atom_z[data.atom_ptr[k]:data.atom_ptr[k + 1]]
        t += m
    return out


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
            U, Q1, Q2, Q3 = _atom_sums(a * a_mu[t], a_w[t], a_w2[t])
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
def _atom_terms(raw, w, w2, a, minmu):
    """The zero-count terms of an atom whose unfloored mean (at its mean log size factor) is
    raw: Q1 = its Fisher weight, the sum over its cells of mu/(1 + a mu); Q2 = -dQ1/dtheta;
    P = the observed information of its log mean; gap. A mean floored at minmu no longer
    moves (nor with the size factor: no expansion terms), and its cells add DESeq2's IRLS
    working-response term Q1 * gap, gap = log(minmu / raw), to the score: the fits reach
    the fixed point of DESeq2's IRLS, in which floored means keep their weight."""
    free = raw >= minmu
    h = 0.5 * w2 if free else 0.0
    _, q, p, k, kk = _sigmoid_terms(a * max(raw, minmu))
    r = 1.0 / a
    Q1 = r * (w * q + h * k)
    Q2 = r * (w * q * q + h * (2.0 * p * p + 2.0 * q * k))
    if free:
        return Q1, Q2, r * (w * p + h * kk), 0.0
    return Q1, Q2, Q1, math.log(minmu / raw)


@njit(cache=True)
def _count_terms(raw, y0, y1, y2, a, minmu):
    """The non-zero terms of an atom with counts Y0, Y1, Y2 (see fixed_mu) at unfloored mean
    raw: their score, the observed information (0 when floored) and the score's theta
    derivative."""
    free = raw >= minmu
    y1 = y1 if free else 0.0
    y2 = 0.5 * y2 if free else 0.0
    _, q, p, k, kk = _sigmoid_terms(a * max(raw, minmu))
    Sp = y0 * p + y1 * k + y2 * kk
    return y0 - (y0 * q + y1 * p + y2 * k), Sp if free else 0.0, -Sp


@njit(cache=True)
def _score_terms(b, a, a_ptr, a_base, a_w, a_w2, e_ptr, e_base, e_y, minmu):
    """Score, observed information, Fisher information and their theta derivatives for the
    intercept b of the single group of a `fixed_mu` state built at b = 0 with no floor
    (so mu = exp(b) * base), at dispersion a."""
    eb = math.exp(b)
    score = 0.0
    hess = 0.0
    fisher = 0.0
    s_theta = 0.0
    f_theta = 0.0
    f_b = 0.0
    for t in range(a_ptr[0], a_ptr[1]):
        Q1, Q2, P, gap = _atom_terms(eb * a_base[t], a_w[t], a_w2[t], a, minmu)
        score += Q1 * (gap - 1.0)
        fisher += Q1
        s_theta += Q2 * (1.0 - gap)
        f_theta -= Q2
        hess += P
        if gap == 0.0:
            f_b += P
    for t in range(e_ptr[0], e_ptr[1]):
        sc, obs, sc_theta = _count_terms(eb * e_base[t], e_y[t, 0], e_y[t, 1], e_y[t, 2], a,
                                         minmu)
        score += sc
        hess += obs
        s_theta += sc_theta
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
def group_moments(g, ks, data):
    """`atom_moments` of gene g for the groups ks, stacked in that order."""
    n = 0
    for k in ks:
        n += data.atom_ptr[k + 1] - data.atom_ptr[k]
    mom = np.empty((n, 3))
    t = 0
    for k in ks:
        m = atom_moments(g, k, data)
        mom[t:t + m.shape[0]] = m
        t += m.shape[0]
    return mom


@njit(cache=True)
def joint_terms(theta, ks, mom, b, c, data, minmu):
    """Score and information of the joint model of the groups ks (one intercept b[i] per
    group, covariate coefficients c shared by their cells) at dispersion exp(theta), with
    the counts summed per atom (mom, from `group_moments`). The intercept block of the
    information is diagonal: returned as D (2 x n), B (2 x n x q) and C (2 x q x q), index 0
    Fisher's information and 1 the observed one, with the scores sb of b and sc of c."""
    n = ks.shape[0]
    q = data.atom_z.shape[1]
    a = math.exp(theta)
    D = np.zeros((2, n))
    B = np.zeros((2, n, q))
    C = np.zeros((2, q, q))
    sb = np.zeros(n)
    sc = np.zeros(q)
    t = 0
    for i in range(n):
        for j in range(data.atom_ptr[ks[i]], data.atom_ptr[ks[i] + 1]):
            z = data.atom_z[j]
            raw = math.exp(b[i] + _offset(data.atom_logs[j], z, c))
            Q1, _, P, gap = _atom_terms(raw, data.atom_w[j], data.atom_w2[j], a, minmu)
            s = Q1 * (gap - 1.0)
            if mom[t, 0] > 0.0:
                sc_count, obs, _ = _count_terms(raw, mom[t, 0], mom[t, 1], mom[t, 2], a, minmu)
                s += sc_count
                P += obs
            t += 1
            sb[i] += s
            D[0, i] += Q1
            D[1, i] += P
            for u in range(q):
                sc[u] += s * z[u]
                B[0, i, u] += Q1 * z[u]
                B[1, i, u] += P * z[u]
                for v in range(q):
                    C[0, u, v] += Q1 * z[u] * z[v]
                    C[1, u, v] += P * z[u] * z[v]
    return D, B, C, sb, sc


@njit(cache=True)
def _schur_complement(D, B, C):
    """S = C - B' diag(1/D) B of the information [diag(D) B; B' C], with a 1e-10 ridge so that
    an unidentified coefficient does not make it singular."""
    S = C.copy()
    for i in range(D.shape[0]):
        S -= np.outer(B[i], B[i]) / D[i]
    for d in range(C.shape[0]):
        S[d, d] += 1e-10
    return S


@njit(cache=True)
def _schur_step(D, B, C, sb, sc):
    """The step (db, dc) solving [diag(D) B; B' C] (db, dc) = (sb, sc) through the q x q
    Schur complement of the diagonal block."""
    rhs = sc.copy()
    for i in range(D.shape[0]):
        rhs -= B[i] * sb[i] / D[i]
    dc = np.linalg.solve(_schur_complement(D, B, C), rhs)
    return (sb - B @ dc) / D, dc


@njit(cache=True)
def joint_fit(theta, ks, mom, b, c, data, minmu):
    """Joint fit of `joint_terms`' model from (b, c), to the fixed point of DESeq2's IRLS
    (Fisher scoring): it ends when the Fisher step is below 1e-10. Newton steps on the
    observed information get there in about half the iterations; one is taken only where
    it is at most twice the Fisher step, and none after a Newton step that did not shrink
    the Fisher step (on flat likelihoods, one count at a dispersion of 50, Newton's method
    oscillates). Steps are capped at 5 and coefficients at +-BETA_BOUND.

    Returns (b, c, bounded): bounded is True when a coefficient ran to its bound, i.e. the
    cells could not identify it (a covariate stratum without counts)."""
    b = b.copy()
    c = c.copy()
    newton = True
    last = np.inf
    for _ in range(200):
        D, B, C, sb, sc = joint_terms(theta, ks, mom, b, c, data, minmu)
        db, dc = _schur_step(D[0], B[0], C[0], sb, sc)
        big = max(np.max(np.abs(db)), np.max(np.abs(dc)) if c.shape[0] > 0 else 0.0)
        if big >= 1e-10 and newton:
            if big > last:
                newton = False
            elif np.all(D[1] > 0.0):
                nb, nc = _schur_step(D[1], B[1], C[1], sb, sc)
                n_big = max(np.max(np.abs(nb)), np.max(np.abs(nc)) if c.shape[0] > 0 else 0.0)
                if n_big <= 2.0 * big:
                    db, dc = nb, nc
        last = big
        step = max(np.max(np.abs(db)), np.max(np.abs(dc)) if c.shape[0] > 0 else 0.0)
        shrink = 5.0 / step if step > 5.0 else 1.0
        b = np.minimum(np.maximum(b + shrink * db, -BETA_BOUND), BETA_BOUND)
        c = np.minimum(np.maximum(c + shrink * dc, -BETA_BOUND), BETA_BOUND)
        if big < 1e-10:
            break
    bounded = np.any(np.abs(b) >= BETA_BOUND) or np.any(np.abs(c) >= BETA_BOUND)
    return b, c, bounded


@njit(cache=True)
def contrast_variance(D, B, C):
    """Variance of b[1] - b[0] from the joint information (D, B, C) of `joint_terms`: the
    inverse information of the intercepts is diag(1/D) + U S^-1 U' with U = B / D and S
    the Schur complement C - B' diag(1/D) B."""
    u = B[1] / D[1] - B[0] / D[0]
    spread = np.dot(u, np.linalg.solve(_schur_complement(D, B, C), u)) if C.shape[0] else 0.0
    return 1.0 / D[0] + 1.0 / D[1] + spread


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
