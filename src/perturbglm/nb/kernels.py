"""Compiled negative binomial kernels for one gene in one or a few groups of cells.

The model within a group k is  y_i ~ NB(mu_i, a),  log mu_i = b_k + log s_i + z_i'c_g,
with covariate coefficients c_g either held fixed (an offset) or fitted jointly with the
groups' intercepts (`joint_fit`). Sums over a group's cells are split as DESIGN.md section 3
describes, so that the work follows non-zeros:

- over *all* cells of the group through its "atoms": size-factor bins (log s, weight,
  spread, covariate row) shared by every gene, and without covariates through a table per
  group (zero_terms.py);
- corrected over the gene's non-zero cells, whose counts are summed per atom.

Within an atom, a sum over its cells of a smooth function of log mu is taken as its
second-order expansion about the atom's mean log size factor (first-order terms cancel for
the atom's own cells; the counts carry their first and second moments). With at most
summaries.ATOM_BINS bins the neglected terms are O(width^3) ~ 1e-7 relative.

A zero count contributes -(1/a) log(1 + a mu) to the log-likelihood, a function of the cell's
offset only, so  sum over zero cells = sum over atoms - sum over the non-zero cells.

Data layout (see `summaries.GeneBlock`): atoms of group k are atom_ptr[k]:atom_ptr[k+1], each
a row of atom_stats: the mean log size factor of its cells, their number and the sum of their
squared deviations from that mean (0 for single cells); cell_atom maps a cell to its atom.
Non-zero entries of gene g in group k are rows nz_ptr[g*G+k]:nz_ptr[g*G+k+1] of nz, each a
cell (its rank in group order, indexing cell_logs / cell_atom) and its count. The tab_*
arrays hold the groups' zero-count tables (zero_terms.build), empty with covariates.

Dispersion is optimised in theta = log(a). All derivatives are analytic in theta.
"""

import math

import numpy as np
from numba import njit

from .special import SMALL_COUNT, lgamma_ratio
from .zero_terms import LOG, W, atom_mean, atom_rho, exposure, group_zero, tabulated


@njit(cache=True)
def _sigmoid_terms(am):
    """For a summand in lambda = log(a mu): q = u' of u = log(1 + e^lambda), p = q' = q(1-q),
    k = p', kk = p'' (u itself, a log, only where the value is wanted)."""
    q = am / (1.0 + am)
    p = q * (1.0 - q)
    k = p * (1.0 - 2.0 * q)
    return q, p, k, k * (1.0 - 2.0 * q) - 2.0 * p * p


@njit(cache=True)
def atom_moments(g, k, data):
    """The counts of gene g in group k summed per atom of the group (rows in atom order),
    with their first and second moments in the cells' log size-factor deviations from the
    atom's mean (Y0, Y1, Y2)."""
    first = data.atom_ptr[k]
    moments = np.zeros((data.atom_ptr[k + 1] - first, 3))
    for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
        _add_moments(moments, data.nz[e, 0], float(data.nz[e, 1]), first, data)
    return moments


@njit(cache=True)
def _add_moments(moments, cell, y, first, data):
    """Add count y of a cell to its atom's row of moments (atoms of the group from `first`)."""
    j = data.cell_atom[cell] - first
    d = data.cell_logs[cell] - data.atom_stats[first + j, LOG]
    moments[j, 0] += y
    moments[j, 1] += y * d
    moments[j, 2] += y * d * d


@njit(cache=True)
def fixed_mu(ks, bk, c, g, data):
    """What the Cox-Reid profile of gene g in groups ks needs once mu is held fixed
    (intercepts bk, covariate coefficients c), and what `mle` needs of a single group,
    besides the groups' atoms (zero_terms.py):
    - the gene's counts summed per atom that has any, with their first and second moments
      in the cells' log size-factor deviations from the atom's (Y0, Y1, Y2), so that sums
      over non-zero cells are second-order expansions about the atom (exact for single-cell
      atoms), and the atom's mean at b = 0 (a group's mean is e^b times it): rows
      (mean at b = 0, Y0, Y1, Y2) of `terms`;
    - the count tail table tail[i, j] = #cells of group ks[i] with j < y <= SMALL_COUNT,
      which turns the log-gamma terms into one log per count level, and the larger counts.
    Returns the state (ks, bk, c, e_ptr, terms, big_ptr, big_y, tail)."""
    n = ks.shape[0]
    n_nz = 0
    for i in range(n):
        n_nz += data.nz_ptr[g * data.G + ks[i] + 1] - data.nz_ptr[g * data.G + ks[i]]
    e_ptr = np.zeros(n + 1, dtype=np.int64)
    terms = np.empty((n_nz, 4))
    big_ptr = np.zeros(n + 1, dtype=np.int64)
    big_y = np.empty(n_nz)
    tail = np.zeros((n, SMALL_COUNT))
    for i in range(n):
        k = ks[i]
        first = data.atom_ptr[k]
        moments = np.zeros((data.atom_ptr[k + 1] - first, 3))
        big_ptr[i + 1] = big_ptr[i]
        for e in range(data.nz_ptr[g * data.G + k], data.nz_ptr[g * data.G + k + 1]):
            y = float(data.nz[e, 1])
            _add_moments(moments, data.nz[e, 0], y, first, data)
            if y <= SMALL_COUNT:
                tail[i, int(y) - 1] += 1.0
            else:
                big_y[big_ptr[i + 1]] = y
                big_ptr[i + 1] += 1
        for m in range(SMALL_COUNT - 2, -1, -1):    # counts of y == m + 1 -> of y > m
            tail[i, m] += tail[i, m + 1]
        t = e_ptr[i]
        for j in range(moments.shape[0]):
            if moments[j, 0] > 0.0:
                terms[t, 0] = atom_mean(first + j, 0.0, c, data, 0.0)[0]
                terms[t, 1] = moments[j, 0]
                terms[t, 2] = moments[j, 1]
                terms[t, 3] = moments[j, 2]
                t += 1
        e_ptr[i + 1] = t
    return ks, bk, c, e_ptr, terms, big_ptr, big_y, tail


@njit(cache=True)
def with_control(state, control, b0, control_mom, data):
    """The `fixed_mu` state of a comparison: the groups of `state` with the control group
    prepended at intercept b0, its counts given per atom (control_mom, `atom_moments`: they
    do not depend on the means, so a gene's are summed once for all its comparisons) and
    without its log-gamma terms (no tail, no large counts): those depend on the counts
    alone and come from a per-gene table (stages.control_tables), so that the comparison
    visits the control's atoms but never its cells."""
    ks, bk, c, e_ptr, terms, big_ptr, big_y, tail = state
    n = ks.shape[0]
    first = data.atom_ptr[control]
    n_control = 0
    for j in range(control_mom.shape[0]):
        if control_mom[j, 0] > 0.0:
            n_control += 1
    ks_all = np.empty(n + 1, dtype=np.int64)
    ks_all[0] = control
    ks_all[1:] = ks
    b_all = np.empty(n + 1)
    b_all[0] = b0
    b_all[1:] = bk
    terms_all = np.empty((n_control + terms.shape[0], 4))
    t = 0
    for j in range(control_mom.shape[0]):
        if control_mom[j, 0] > 0.0:
            terms_all[t, 0] = atom_mean(first + j, 0.0, c, data, 0.0)[0]
            terms_all[t, 1:] = control_mom[j]
            t += 1
    terms_all[n_control:] = terms
    e_all = np.zeros(n + 2, dtype=np.int64)
    e_all[1:] = e_ptr + n_control
    big_all = np.zeros(n + 2, dtype=np.int64)
    big_all[1:] = big_ptr
    tail_all = np.zeros((n + 1, SMALL_COUNT))
    tail_all[1:] = tail
    return ks_all, b_all, c, e_all, terms_all, big_all, big_y, tail_all


@njit(cache=True)
def log_gamma_terms(r, tail, big):
    """sum over a group's counts y of lgamma(y + r) - lgamma(r), r = 1/a, and its first two
    derivatives in r: one log per count level up to SMALL_COUNT (tail[j], the number of
    counts above j, see `fixed_mu`) and `lgamma_ratio` for the larger counts (big)."""
    lg = 0.0
    d1 = 0.0
    d2 = 0.0
    for t in range(big.shape[0]):
        l0, l1, l2 = lgamma_ratio(big[t], r)
        lg += l0
        d1 += l1
        d2 += l2
    for j in range(SMALL_COUNT):
        n_j = tail[j]
        if n_j == 0.0:
            break
        s = j + r
        lg += n_j * math.log(s)
        d1 += n_j / s
        d2 -= n_j / (s * s)
    return lg, d1, d2


@njit(cache=True)
def _zero_weights(theta, emu, R1, R2, R3):
    """From zero-count sums (zero_terms.py): the Fisher weight V = sum mu/(1 + a mu) of the
    cells and its first two theta derivatives."""
    r = math.exp(-theta)
    return emu + r * R1, -r * (R1 - R2), r * (R3 + R1 - 2.0 * R2)


@njit(cache=True)
def schur_terms(theta, state, data, minmu):
    """The covariate part of DESeq2's Cox-Reid term for the groups of a `fixed_mu` state.
    With an intercept per group and shared coefficients c, the information X'WX has a
    diagonal intercept block, so log det X'WX = sum_k log D_k + log det S,
    S = sum_k (C_k - B_k B_k' / D_k), where D_k, B_k and C_k sum w, w z and w z z' over
    group k's cells. Returns S and its first two theta derivatives, stacked (3 x q x q);
    `profile` holds the sum_k log D_k part. The atoms' zero-count sums are taken on the
    way: each group's `group_zero` (Emu, R_0..R_3, the same sums in the same order; with
    covariates there are no tables), returned as `zero` (groups x 5) for `profile`, which
    then does not visit the atoms a second time."""
    ks, bk, c = state[0], state[1], state[2]
    q = data.atom_z.shape[1]
    a = math.exp(theta)
    S = np.zeros((3, q, q))
    zero = np.zeros((ks.shape[0], 5))
    D = np.zeros(3)
    B = np.zeros((3, q))
    C = np.zeros((3, q, q))
    wt = np.zeros(3)
    for i in range(ks.shape[0]):
        D[:] = 0.0
        B[:] = 0.0
        C[:] = 0.0
        for t in range(data.atom_ptr[ks[i]], data.atom_ptr[ks[i] + 1]):
            _, mu, h = atom_mean(t, bk[i], c, data, minmu)
            w = data.atom_stats[t, W]
            R0, R1, R2, R3 = atom_rho(a * mu, w, h)
            zero[i, 0] += (w + h) * mu
            zero[i, 1] += R0
            zero[i, 2] += R1
            zero[i, 3] += R2
            zero[i, 4] += R3
            wt[0], wt[1], wt[2] = _zero_weights(theta, (w + h) * mu, R1, R2, R3)
            z = data.atom_z[t]
            for d in range(3):
                D[d] += wt[d]
                for u in range(q):
                    wz = wt[d] * z[u]
                    B[d, u] += wz
                    for v in range(q):
                        C[d, u, v] += wz * z[v]
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
    return S, zero


@njit(cache=True)
def profile(theta, state, data, minmu, zero=None):
    """DESeq2's Cox-Reid adjusted log-likelihood with mu held fixed, summed over the groups
    of a `fixed_mu` state: per group sum_i ll(y_i; mu_i, a) - 0.5 log(sum_i mu_i/(1 + a mu_i)),
    and its first two derivatives in theta. Terms free of a are dropped, as DESeq2 does.
    The groups' zero-count sums are `group_zero`'s, or given (zero, from `schur_terms`).

    Every cell is first counted as a zero, -r u (r = 1/a, u = log(1 + a mu)); a count y then
    adds the difference lgamma(y + r) - lgamma(r) + y theta - y u. Sums over an atom's cells
    are expanded to second order in their log size-factor deviations; a mean floored at
    minmu does not move with the size factor (no expansion terms)."""
    ks, bk, c, e_ptr, terms, big_ptr, big_y, tail = state
    a = math.exp(theta)
    r = 1.0 / a
    F = 0.0
    F1 = 0.0
    F2 = 0.0
    for i in range(ks.shape[0]):
        if zero is None:
            emu, R0, R1, R2, R3 = group_zero(theta, ks[i], bk[i], c, data, minmu)
        else:
            emu, R0, R1, R2, R3 = zero[i, 0], zero[i, 1], zero[i, 2], zero[i, 3], zero[i, 4]
        f = -emu - r * R0
        f1 = r * (R0 - R1)
        f2 = r * (2.0 * R1 - R2 - R0)
        V, V1, V2 = _zero_weights(theta, emu, R1, R2, R3)
        eb = math.exp(bk[i])
        for t in range(e_ptr[i], e_ptr[i + 1]):
            raw = eb * terms[t, 0]
            free = raw >= minmu
            y0 = terms[t, 1]
            y1 = terms[t, 2] if free else 0.0
            y2 = 0.5 * terms[t, 3] if free else 0.0
            am = a * max(raw, minmu)
            q, p, k, kk = _sigmoid_terms(am)
            u = math.log1p(am)
            f += y0 * theta - (y0 * u + y1 * q + y2 * p)
            f1 += y0 - (y0 * q + y1 * p + y2 * k)
            f2 -= y0 * p + y1 * k + y2 * kk
        lg, d1, d2 = log_gamma_terms(r, tail[i], big_y[big_ptr[i]:big_ptr[i + 1]])
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
def _atom_terms(j, b, c, data, a, minmu):
    """The zero-count terms of atom j at intercept b: raw, its unfloored mean; Q1, its Fisher
    weight, the sum over its cells of mu/(1 + a mu); Q2 = -dQ1/dtheta; P, the observed
    information of its log mean; gap. A mean floored at minmu no longer moves (nor with the
    size factor: no expansion terms), and its cells add DESeq2's IRLS working-response term
    Q1 * gap, gap = log(minmu / raw), to the score: the fits reach the fixed point of
    DESeq2's IRLS, in which floored means keep their weight."""
    raw, mu, h = atom_mean(j, b, c, data, minmu)
    w = data.atom_stats[j, W]
    _, R1, R2, _ = atom_rho(a * mu, w, h)
    r = 1.0 / a
    emu = (w + h) * mu
    Q1 = emu + r * R1
    Q2 = r * (R1 - R2)
    if raw >= minmu:
        return raw, Q1, Q2, emu + r * R2, 0.0
    return raw, Q1, Q2, Q1, math.log(minmu / raw)


@njit(cache=True)
def _count_terms(raw, y0, y1, y2, a, minmu):
    """The non-zero terms of an atom with counts Y0, Y1, Y2 (see fixed_mu) at unfloored mean
    raw: their score, the observed information (0 when floored) and the score's theta
    derivative."""
    free = raw >= minmu
    y1 = y1 if free else 0.0
    y2 = 0.5 * y2 if free else 0.0
    q, p, k, kk = _sigmoid_terms(a * max(raw, minmu))
    Sp = y0 * p + y1 * k + y2 * kk
    return y0 - (y0 * q + y1 * p + y2 * k), Sp if free else 0.0, -Sp


@njit(cache=True)
def _score_terms(theta, b, state, data, minmu):
    """Score, observed information, Fisher information and their theta derivatives for the
    intercept b of the single group of a `fixed_mu` state (mu = exp(b) * base) at dispersion
    e^theta. Without covariates and with no mean floored, the zero-count terms are the
    group's sums (its table); otherwise atom by atom, with the floors' gaps."""
    ks, _, c, e_ptr, terms = state[:5]
    k = ks[0]
    a = math.exp(theta)
    score = 0.0
    hess = 0.0
    fisher = 0.0
    s_theta = 0.0
    f_theta = 0.0
    f_b = 0.0
    if tabulated(k, math.exp(b), data, minmu):
        emu, _, R1, R2, _ = group_zero(theta, k, b, c, data, minmu)
        r = 1.0 / a
        fisher = emu + r * R1
        score = -fisher
        s_theta = r * (R1 - R2)
        f_theta = -s_theta
        hess = emu + r * R2
        f_b = hess
    else:
        for j in range(data.atom_ptr[k], data.atom_ptr[k + 1]):
            _, Q1, Q2, P, gap = _atom_terms(j, b, c, data, a, minmu)
            score += Q1 * (gap - 1.0)
            fisher += Q1
            s_theta += Q2 * (1.0 - gap)
            f_theta -= Q2
            hess += P
            if gap == 0.0:
                f_b += P
    eb = math.exp(b)
    for t in range(e_ptr[0], e_ptr[1]):
        sc, obs, sc_theta = _count_terms(eb * terms[t, 0], terms[t, 1], terms[t, 2],
                                         terms[t, 3], a, minmu)
        score += sc
        hess += obs
        s_theta += sc_theta
    return score, hess, fisher, s_theta, f_theta, f_b


@njit(cache=True)
def mle(theta, state, data, minmu, b_start):
    """Maximum-likelihood intercept b of the single group of a `fixed_mu` state at fixed
    dispersion exp(theta), by Newton's method on the concave log-likelihood, started from
    b_start or (NaN) the Poisson estimate.

    Returns (b, fisher, db/dtheta, dfisher/dtheta); b = -inf and zeros for a group with no
    counts, whose MLE lies at the boundary."""
    ks, _, c, e_ptr, terms = state[:5]
    ysum = 0.0
    for t in range(e_ptr[0], e_ptr[1]):
        ysum += terms[t, 1]
    if ysum <= 0.0:
        return -np.inf, 0.0, 0.0, 0.0
    if np.isfinite(b_start):
        b = b_start
    else:
        b = math.log(ysum / exposure(ks[0], c, data))
    for _ in range(100):
        score, hess, fisher, s_theta, f_theta, f_b = _score_terms(theta, b, state, data, minmu)
        if hess <= 0.0:
            return b, fisher, 0.0, f_theta
        step = min(max(score / hess, -5.0), 5.0)
        if abs(step) < 1e-8 * max(1.0, abs(b + step)):
            # Quadratic convergence: this last step leaves an error of order 1e-16 in b, and
            # the information moves with it to first order (error of order 1e-16 too); the
            # theta derivatives, which only shape interpolation, keep this evaluation's.
            db = s_theta / hess
            return b + step, fisher + f_b * step, db, f_theta + f_b * db
        b += step
    score, hess, fisher, s_theta, f_theta, f_b = _score_terms(theta, b, state, data, minmu)
    db = s_theta / hess if hess > 0.0 else 0.0
    return b, fisher, db, f_theta + f_b * db


@njit(cache=True)
def group_mle(theta, c, g, k, data, minmu, b_start=np.nan):
    """`mle` of group k of gene g with covariate offsets c."""
    return mle(theta, fixed_mu(np.full(1, k, dtype=np.int64), np.zeros(1), c, g, data), data,
               minmu, b_start)


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
            raw, Q1, _, P, gap = _atom_terms(j, b[i], c, data, a, minmu)
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
def _pooled(D, B, sb):
    """`joint_terms`' intercept block for one intercept shared by all its groups: the sums
    of the groups' D, B and scores (the information of a common intercept)."""
    return (D.sum(axis=1).reshape(2, 1), B.sum(axis=1).reshape(2, 1, B.shape[2]),
            np.full(1, sb.sum()))


@njit(cache=True)
def joint_fit(theta, ks, mom, b, c, data, minmu, shared=False):
    """Joint fit of `joint_terms`' model from (b, c), to the fixed point of DESeq2's IRLS
    (Fisher scoring): it ends when the Fisher step is below 1e-10. Newton steps on the
    observed information get there in about half the iterations; one is taken only where
    it is at most twice the Fisher step, and none after a Newton step that did not shrink
    the Fisher step (on flat likelihoods, one count at a dispersion of 50, Newton's method
    oscillates). Steps are capped at 5 and coefficients at +-BETA_BOUND, and a step that
    went more than twice past the maximum along its line is halved (the log-likelihood is
    concave in the coefficients, so its slope along the step tells). With shared, the
    groups have one intercept (b's entries equal): the design without the group indicator,
    as the likelihood-ratio test's reduced model.

    Returns (b, c, bounded): bounded is True when a coefficient ran to its bound, i.e. the
    cells could not identify it (a covariate stratum without counts)."""
    b = b.copy()
    c = c.copy()
    newton = True
    last = np.inf
    slope = 0.0      # the log-likelihood's slope along the last step, where it was taken
    b_from, c_from = b.copy(), c.copy()
    tb, tc = np.zeros(1), np.zeros(c.shape[0])
    for _ in range(200):
        D, B, C, sb, sc = joint_terms(theta, ks, mom, b, c, data, minmu)
        if shared:
            D, B, sb = _pooled(D, B, sb)
        if slope > 0.0 and np.dot(sb, tb) + np.dot(sc, tc) < -slope:
            # The last step went more than twice past the maximum along its line (the
            # concave log-likelihood's slope turned from `slope` to below -slope): Fisher
            # scoring oscillates on flat likelihoods (a count of 1000 among ones at a
            # dispersion of 25 ended 0.5 log2 from the MLE), so take half of it.
            tb, tc, slope = 0.5 * tb, 0.5 * tc, 0.5 * slope
            b = np.minimum(np.maximum(b_from + tb, -BETA_BOUND), BETA_BOUND)
            c = np.minimum(np.maximum(c_from + tc, -BETA_BOUND), BETA_BOUND)
            continue
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
        tb, tc = shrink * db, shrink * dc
        slope = np.dot(sb, tb) + np.dot(sc, tc)
        b_from, c_from = b, c
        b = np.minimum(np.maximum(b + tb, -BETA_BOUND), BETA_BOUND)
        c = np.minimum(np.maximum(c + tc, -BETA_BOUND), BETA_BOUND)
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


@njit(cache=True)
def contrast_variances(D, B, C, base):
    """Variance of b[i] - b[base] for every group i of the joint information (D, B, C) of
    `joint_terms` (q > 0), as `contrast_variance` for many groups: the Schur complement S
    is inverted once, so that each contrast costs O(q^2)."""
    S_inv = np.linalg.inv(_schur_complement(D, B, C))
    out = np.empty(D.shape[0])
    for i in range(D.shape[0]):
        u = B[i] / D[i] - B[base] / D[base]
        out[i] = 1.0 / D[i] + 1.0 / D[base] + np.dot(u, S_inv @ u)
    return out
