"""apeGLM fold-change shrinkage, compiled: the posterior mode and standard deviation of the
perturbation's log fold change under a Cauchy prior (Zhu, Ibrahim & Love 2019; DESeq2's
`lfcShrink(type="apeglm")`, apeglm's `apeglm()` with its negative binomial likelihood, and
PyDESeq2's `utils.nbinomGLM`).

The model of one (gene, comparison) is the comparison's GLM at its final dispersion a: the
control cells with log mean b_c + z'c, the perturbation's cells with b_p + z'c (c: the
covariate coefficients, none without covariates), log size factors as offsets, and no floor
on the means (apeglm has none). The log posterior maximised over u = (b_c, b_p, c) is

    F(u) = l(u) - b_c^2 / (2 15^2) - |c|^2 / (2 15^2) - log(1 + beta^2 / S^2),

beta = b_p - b_c: the normal prior of scale 15 is DESeq2's/apeglm's on the coefficients it
does not shrink (the intercept, i.e. the control's log mean at the reference covariate
levels, and the covariate coefficients, in DESeq2's treatment coding, which design.py
shares); the Cauchy prior of scale S (`steps/shrink.py` estimates it per comparison) is on
the fold change. The shrunken fold change is beta at the mode, and its SD the square root of
v' M^-1 v at the mode, M = -Hessian of F, v = (-1, 1, 0...): apeglm's inverse Hessian at the
mode (the same variance as in DESeq2's (intercept, beta) parameterisation, a linear change of
variables). PyDESeq2 0.5.4's nbinomGLM adds the priors' curvatures to whole columns of its
Hessian instead of its diagonal, so its SDs differ (tests/test_shrink.py).

Sums over a group's cells follow kernels.py: the zero-count part of every cell from the
group's atoms (its zero_terms table without covariates), plus the gene's counts summed per
atom (`kernels.group_moments`). The control's per-atom counts are gathered once per gene;
each (gene, comparison) then costs its atoms, not the control's cells.

With a Cauchy prior F need not be concave (where |beta| > S the prior is convex) and can have
two modes, one near 0 (the prior's) and one towards the MLE (the data's); the higher is the
MAP. (apeglm and PyDESeq2 run one L-BFGS from beta = -0.1 and report whichever mode it
reaches.) In terms of the profile of F in beta, with l~ its concave likelihood part and m the
MLE (say m > 0), a mode solves l~'(beta) = 2 beta / (S^2 + beta^2) =: rho(beta): there is none
outside [0, m] and at most one in [0, S] (l~' decreases, rho increases there). So the search
climbs from near 0 first (`approximate_inner_mode`), and from the MLE only when
`outer_mode_possible`; that second climb stops if it enters |beta| <= S, where the first
one's mode is the only one.

Without covariates (q = 0) the searches run on scalars (`plain_shrink_pair`): the same
Newton steps with M's 2 x 2 Cholesky factor written out, nothing allocated per evaluation,
and the control's counted atoms prepared once per gene. On the simulated M screen (396k
pairs, 3.7 evaluations each) this took the kernel from 5.8 to 2.6 s single-threaded.
"""

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from .kernels import _sigmoid_terms, group_moments
from .zero_terms import LOG, W, atom_mean, atom_rho, group_zero, offset, tabulated

NO_SHRINK_SCALE = 15.0   # apeglm's / DESeq2's prior.no.shrink.scale (normal prior SD)
MAX_STEP = 5.0           # cap on a Newton step's largest coordinate (as kernels.joint_fit)
FINAL_STEP = 1e-8        # a Newton step below this (every coordinate) ends a search (climb)
SAME_MODE = 1e-8         # two searches whose beta differ less found the same mode
INFO_MARGIN = 2.0        # safety factor on `outer_mode_possible`'s bound on the information
NO_COVARIATES = np.empty(0)  # c without covariates: a compile-time constant, not allocated

ShrinkInputs = namedtuple("ShrinkInputs", ["comps", "control", "theta", "lfc", "se",
                                           "control_b", "coef", "scale"])
ShrinkInputs.__doc__ = """What `shrink_block` reads besides the block's data:
comps (groups compared with the control, in column order), control (its group code),
theta (genes x comparisons, log final dispersion), lfc (genes x comparisons, the natural-log
MLE fold change, NaN where untested), se (its standard error), control_b and coef (the
control's intercept and the covariate coefficients of stages.initial_fit, per dispersion
comparison: starting values), scale (per comparison, the Cauchy prior scale S)."""

Posterior = namedtuple("Posterior", ["value", "grad", "info"])
Posterior.__doc__ = "F, its gradient and M = -Hessian (see the module docstring)."


@njit(cache=True)
def _add_group(theta, k, b, c, mom, slot, data, grad, info):
    """Add group k's log-likelihood at intercept b (coordinate `slot` of u) and covariate
    coefficients c (coordinates 2..) to grad and info (its observed information), and return
    its value. Terms free of u (log-gamma, y log a, y log s) are dropped; no floor on the
    means. mom: the gene's counts in the group per atom (`kernels.group_moments`).

    Every cell first counts as a zero, -(1/a) log(1 + a mu) (zero_terms.py: the sum over the
    group is -Emu - R_0/a); a count y adds y log mu - y log(1 + a mu), its second-order
    expansion about the atom's mean log size factor (kernels.py)."""
    q = c.shape[0]
    a = math.exp(theta)
    r = 1.0 / a
    value = 0.0
    first = data.atom_ptr[k]
    if q == 0 and tabulated(k, math.exp(b), data, 0.0):
        emu, R0, R1, R2, _ = group_zero(theta, k, b, c, data, 0.0)
        value -= emu + r * R0
        grad[slot] -= emu + r * R1
        info[slot, slot] += emu + r * R2
    else:
        for j in range(first, data.atom_ptr[k + 1]):
            _, mu, h = atom_mean(j, b, c, data, 0.0)
            R0, R1, R2, _ = atom_rho(a * mu, data.atom_stats[j, W], h)
            emu = (data.atom_stats[j, W] + h) * mu
            _add_atom(-(emu + r * R1), emu + r * R2, data.atom_z[j], slot, grad, info)
            value -= emu + r * R0
    for j in range(first, data.atom_ptr[k + 1]):
        y0 = mom[j - first, 0]
        if y0 <= 0.0:
            continue
        y1 = mom[j - first, 1]
        y2 = 0.5 * mom[j - first, 2]
        eta = b + offset(0.0, data.atom_z[j], c)
        am = a * math.exp(eta + data.atom_stats[j, LOG])
        qq, p, kk, kkk = _sigmoid_terms(am)
        value += y0 * eta - (y0 * math.log1p(am) + y1 * qq + y2 * p)
        _add_atom(y0 - (y0 * qq + y1 * p + y2 * kk), y0 * p + y1 * kk + y2 * kkk,
                  data.atom_z[j], slot, grad, info)
    return value


@njit(cache=True)
def _add_atom(score, obs, z, slot, grad, info):
    """Add one atom's score and observed information in its log mean (intercept `slot` plus
    z'c, c at coordinates 2..) to grad and info."""
    grad[slot] += score
    info[slot, slot] += obs
    for u in range(z.shape[0]):
        grad[2 + u] += score * z[u]
        info[slot, 2 + u] += obs * z[u]
        info[2 + u, slot] += obs * z[u]
        for v in range(z.shape[0]):
            info[2 + u, 2 + v] += obs * z[u] * z[v]


@njit(cache=True)
def cauchy_terms(beta, scale):
    """-log(1 + beta^2/S^2) and its first two derivatives in beta."""
    s2 = scale * scale
    d = s2 + beta * beta
    return -math.log1p(beta * beta / s2), -2.0 * beta / d, -2.0 * (s2 - beta * beta) / (d * d)


@njit(cache=True)
def posterior(u, theta, groups, moms, scale, data):
    """F(u) of the module docstring for the control and one perturbation (groups =
    (control, k), moms their per-atom counts), its gradient and M = -Hessian."""
    n = u.shape[0]
    c = u[2:]
    grad = np.zeros(n)
    info = np.zeros((n, n))
    value = _add_group(theta, groups[0], u[0], c, moms[0], 0, data, grad, info)
    value += _add_group(theta, groups[1], u[1], c, moms[1], 1, data, grad, info)
    precision = 1.0 / (NO_SHRINK_SCALE * NO_SHRINK_SCALE)
    for i in range(n):
        if i != 1:
            value -= 0.5 * u[i] * u[i] * precision
            grad[i] -= u[i] * precision
            info[i, i] += precision
    p0, p1, p2 = cauchy_terms(u[1] - u[0], scale)
    value += p0
    grad[1] += p1
    grad[0] -= p1
    info[0, 0] -= p2
    info[1, 1] -= p2
    info[0, 1] += p2
    info[1, 0] += p2
    return Posterior(value, grad, info)


@njit(cache=True)
def _cholesky(M):
    """Lower Cholesky factor of the small symmetric M, or an empty array when M is not
    positive definite (Gaussian elimination by hand: a LAPACK call per Newton step costs
    more than the posterior, see stages._log_det_terms)."""
    n = M.shape[0]
    L = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            s = M[i, j]
            for t in range(j):
                s -= L[i, t] * L[j, t]
            if i == j:
                if not s > 0.0:
                    return np.zeros((0, 0))
                L[i, i] = math.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    return L


@njit(cache=True)
def _solve(L, rhs):
    """M^-1 rhs from M's Cholesky factor L."""
    n = L.shape[0]
    x = rhs.copy()
    for i in range(n):
        for t in range(i):
            x[i] -= L[i, t] * x[t]
        x[i] /= L[i, i]
    for i in range(n - 1, -1, -1):
        for t in range(i + 1, n):
            x[i] -= L[t, i] * x[t]
        x[i] /= L[i, i]
    return x


@njit(cache=True)
def _ascent_factor(post, u, scale):
    """Cholesky factor of M where M is not positive definite, without the Cauchy prior's
    curvature where that is negative (|beta| > S, where the prior is convex): that leaves the
    likelihood's and the normal priors' information, positive definite, so that the Newton
    step still ascends."""
    M = post.info.copy()
    p2 = cauchy_terms(u[1] - u[0], scale)[2]
    M[0, 0] += p2
    M[1, 1] += p2
    M[0, 1] -= p2
    M[1, 0] -= p2
    return _cholesky(M)


@njit(cache=True)
def climb(u, theta, groups, moms, scale, data, core):
    """The local maximum of F reached from u by Newton steps (M, or `_ascent_factor` where M
    is not positive definite), each capped at MAX_STEP and halved until F does not decrease.
    It ends on a Newton step below FINAL_STEP, taken without evaluating its end point:
    convergence is quadratic there, so the error left is of order FINAL_STEP^2 times the
    ratio of F's third to second derivative (1e-13 for S = 0.001, where that ratio is ~1/S),
    and F and M are those of the last evaluation, off by O(FINAL_STEP^2) and O(FINAL_STEP)
    relative. Or it ends (F = NaN) once |beta| <= core.
    Returns (u, F, the Cholesky factor of M, empty if M is not positive definite)."""
    u = u.copy()
    post = posterior(u, theta, groups, moms, scale, data)
    for _ in range(200):
        L = _cholesky(post.info)
        full = L.shape[0] > 0
        if not full:
            L = _ascent_factor(post, u, scale)
            if L.shape[0] == 0:
                break
        step = _solve(L, post.grad)
        big = np.max(np.abs(step))
        if big < FINAL_STEP and full:
            return u + step, post.value, L
        if big > MAX_STEP:
            step *= MAX_STEP / big
        moved = False
        for _half in range(60):
            cand = u + step
            new = posterior(cand, theta, groups, moms, scale, data)
            # rounding of F (a sum over every cell) may hide the gain of a short step
            if new.value >= post.value - 1e-12 * abs(post.value):
                u, post, moved = cand, new, True
                break
            step *= 0.5
        if not moved or abs(u[1] - u[0]) <= core:
            break
    return (u, post.value if abs(u[1] - u[0]) > core else np.nan, _cholesky(post.info))


@njit(cache=True)
def counted_atoms(k, mom, data):
    """The atoms of group k where the gene has counts, for `plain_posterior`: rows (the
    atom's mean size factor e^l, Y0, Y1, Y2 / 2), from its per-atom counts mom
    (`kernels.group_moments`). Exponentiated here once, not at every evaluation."""
    first = data.atom_ptr[k]
    n = 0
    for j in range(mom.shape[0]):
        n += mom[j, 0] > 0.0
    out = np.empty((n, 4))
    t = 0
    for j in range(mom.shape[0]):
        if mom[j, 0] > 0.0:
            out[t, 0] = math.exp(data.atom_stats[first + j, LOG])
            out[t, 1] = mom[j, 0]
            out[t, 2] = mom[j, 1]
            out[t, 3] = 0.5 * mom[j, 2]
            t += 1
    return out


@njit(cache=True)
def _plain_group(theta, k, b, counted, data):
    """`_add_group` without covariates, as scalars (value, score, observed information) in
    the group's intercept b: the zero-count part from `group_zero` (its table, or its atoms
    where it has none), the counts' from their atoms (`counted_atoms`), at a mean
    e^(theta + b) times the atom's size factor: one exp per group, not per atom. Terms free
    of b dropped, as there."""
    r = math.exp(-theta)
    emu, R0, R1, R2, _ = group_zero(theta, k, b, NO_COVARIATES, data, 0.0)
    value = -(emu + r * R0)
    score = -(emu + r * R1)
    info = emu + r * R2
    scale_am = math.exp(theta + b)
    for t in range(counted.shape[0]):
        y0, y1, y2 = counted[t, 1], counted[t, 2], counted[t, 3]
        am = scale_am * counted[t, 0]
        qq, p, kk, kkk = _sigmoid_terms(am)
        value += y0 * b - (y0 * math.log1p(am) + y1 * qq + y2 * p)
        score += y0 - (y0 * qq + y1 * p + y2 * kk)
        info += y0 * p + y1 * kk + y2 * kkk
    return value, score, info


@njit(cache=True)
def plain_posterior(b_c, b_p, pair):
    """`posterior` without covariates, u = (b_c, b_p), allocation-free: (F, its gradient
    g0, g1 and M = -Hessian's m00, m01, m11). pair: PlainPair."""
    v0, s0, i0 = _plain_group(pair.theta, pair.control, b_c, pair.control_counts, pair.data)
    v1, s1, i1 = _plain_group(pair.theta, pair.group, b_p, pair.group_counts, pair.data)
    precision = 1.0 / (NO_SHRINK_SCALE * NO_SHRINK_SCALE)
    p0, p1, p2 = cauchy_terms(b_p - b_c, pair.scale)
    return (v0 + v1 - 0.5 * b_c * b_c * precision + p0,
            s0 - b_c * precision - p1, s1 + p1,
            i0 + precision - p2, p2, i1 - p2)


@njit(cache=True)
def _cholesky2(m00, m01, m11):
    """`_cholesky` of the 2 x 2 M as its entries (l00, l10, l11); l00 = 0 when M is not
    positive definite."""
    if not m00 > 0.0:
        return 0.0, 0.0, 0.0
    l00 = math.sqrt(m00)
    l10 = m01 / l00
    d = m11 - l10 * l10
    if not d > 0.0:
        return 0.0, 0.0, 0.0
    return l00, l10, math.sqrt(d)


@njit(cache=True)
def _solve2(l00, l10, l11, g0, g1):
    """`_solve` for the 2 x 2 factor (l00, l10, l11)."""
    x0 = g0 / l00
    x1 = (g1 - l10 * x0) / l11
    x1 /= l11
    return (x0 - l10 * x1) / l00, x1


@njit(cache=True)
def plain_climb(b_c, b_p, pair, core):
    """`climb` without covariates, on scalars (the same steps, without allocating).
    Returns (b_c, b_p, F, the Cholesky factor of M as (l00, l10, l11), l00 = 0 if M is
    not positive definite)."""
    value, g0, g1, m00, m01, m11 = plain_posterior(b_c, b_p, pair)
    for _ in range(200):
        l00, l10, l11 = _cholesky2(m00, m01, m11)
        full = l00 > 0.0
        if not full:
            p2 = cauchy_terms(b_p - b_c, pair.scale)[2]
            l00, l10, l11 = _cholesky2(m00 + p2, m01 - p2, m11 + p2)
            if l00 == 0.0:
                break
        d0, d1 = _solve2(l00, l10, l11, g0, g1)
        big = max(abs(d0), abs(d1))
        if big < FINAL_STEP and full:
            return b_c + d0, b_p + d1, value, l00, l10, l11
        if big > MAX_STEP:
            d0 *= MAX_STEP / big
            d1 *= MAX_STEP / big
        moved = False
        for _half in range(60):
            new = plain_posterior(b_c + d0, b_p + d1, pair)
            # rounding of F (a sum over every cell) may hide the gain of a short step
            if new[0] >= value - 1e-12 * abs(value):
                b_c, b_p = b_c + d0, b_p + d1
                value, g0, g1, m00, m01, m11 = new
                moved = True
                break
            d0 *= 0.5
            d1 *= 0.5
        if not moved or abs(b_p - b_c) <= core:
            break
    l00, l10, l11 = _cholesky2(m00, m01, m11)
    return b_c, b_p, value if abs(b_p - b_c) > core else np.nan, l00, l10, l11


PlainPair = namedtuple("PlainPair", ["theta", "control", "group", "control_counts",
                                     "group_counts", "group_mom", "scale", "data"])
PlainPair.__doc__ = """One (gene, comparison) without covariates: theta (log dispersion),
control and group (group codes), control_counts and group_counts (`counted_atoms`),
group_mom (the group's per-atom counts, for `outer_mode_possible`), scale (S), data (the
block's)."""


@njit(cache=True)
def plain_shrink_pair(pair, b_c, lfc, se):
    """`shrink_pair` without covariates, from the control intercept b_c: the same searches
    on scalars, with the control's counted atoms computed once per gene by the caller."""
    b_p = b_c + (approximate_inner_mode(lfc, se, pair.scale) if se > 0.0 else 0.0)
    b_c, b_p, best_value, l00, l10, l11 = plain_climb(b_c, b_p, pair, -1.0)
    if outer_mode_possible(pair.theta, pair.group, b_c, NO_COVARIATES, pair.group_mom, lfc,
                           pair.scale, pair.data):
        o_c, o_p, other_value, o00, o10, o11 = plain_climb(b_c, b_c + lfc, pair, pair.scale)
        if abs((o_p - o_c) - (b_p - b_c)) > SAME_MODE and other_value > best_value:
            b_c, b_p, l00, l10, l11 = o_c, o_p, o00, o10, o11
    if l00 == 0.0:
        return np.nan, np.nan
    x0, x1 = _solve2(l00, l10, l11, -1.0, 1.0)
    return b_p - b_c, math.sqrt(x1 - x0)



@njit(cache=True)
def outer_mode_possible(theta, k, b_c, c, mom, lfc, scale, data):
    """Whether F may have a mode with |beta| > S besides the one its climb from 0 found
    (module docstring), for group k, control intercept b_c and MLE fold change lfc.

    Such a mode solves l~'(beta) = rho(beta) in (S, m) (m = |lfc|). l~ is concave with its
    maximum at m, so l~'(beta) <= I (m - beta) for I an upper bound of its curvature on
    [beta, m]; a root then needs h(beta) = I (m - beta)(S^2 + beta^2) - 2 beta >= 0, a cubic
    whose maximum over [S, m] is checked. The profile's curvature is below group k's
    observed information, sum over cells of (y + r) r mu / (r + mu)^2 (r = 1/a), each term
    largest at mu = r: per atom, its largest value over the means that b_p in
    b_c + [min(0, lfc), max(0, lfc)] gives (the atoms' spread neglected, hence
    INFO_MARGIN)."""
    m = abs(lfc)
    if m <= scale:
        return False
    r = math.exp(-theta)
    lo = b_c + min(0.0, lfc)
    first = data.atom_ptr[k]
    info = 0.0
    for j in range(first, data.atom_ptr[k + 1]):
        shift = offset(data.atom_stats[j, LOG], data.atom_z[j], c)
        mu = min(max(r, math.exp(lo + shift)), math.exp(lo + m + shift))
        info += (mom[j - first, 0] + data.atom_stats[j, W] * r) * r * mu / ((r + mu) ** 2)
    info *= INFO_MARGIN
    s2 = scale * scale
    best = scale       # h's maximum over [S, m]: at S or at its local maximum inside
    disc = m * m - 3.0 * (s2 + 2.0 / info)
    if disc >= 0.0:
        best = min(max((m + math.sqrt(disc)) / 3.0, scale), m)
    h_best = info * (m - best) * (s2 + best * best) - 2.0 * best
    h_scale = info * (m - scale) * 2.0 * s2 - 2.0 * scale
    return max(h_best, h_scale) >= 0.0


@njit(cache=True)
def approximate_inner_mode(lfc, se, scale):
    """The mode nearest 0 of -(beta - m)^2 / (2 se^2) - log(1 + beta^2/S^2), the posterior
    with the likelihood replaced by its quadratic about the MLE m: Newton's method from 0
    while that function is concave, kept within [0, m]. Only a start for `climb` (it saves
    one or two of its evaluations)."""
    v = se * se
    beta = 0.0
    for _ in range(30):
        s2b = scale * scale + beta * beta
        d1 = (lfc - beta) / v - 2.0 * beta / s2b
        d2 = -1.0 / v - 2.0 * (scale * scale - beta * beta) / (s2b * s2b)
        if not d2 < 0.0:
            break
        step = -d1 / d2
        beta = min(max(beta + step, min(0.0, lfc)), max(0.0, lfc))
        if abs(step) < 1e-10:
            break
    return beta


@njit(cache=True)
def shrink_pair(theta, groups, moms, start, lfc, se, scale, data):
    """Shrunken fold change (beta at the MAP) and its posterior SD for the control and group
    groups[1], from the starting intercepts and covariates `start` (b_c, b_p, c; b_p is set
    here) and the MLE fold change lfc and its SE: the mode climbed to from near 0
    (`approximate_inner_mode`), or the one climbed to from the MLE where that is another and
    higher (module docstring). Without covariates, `plain_shrink_pair`."""
    if start.shape[0] == 2:
        pair = PlainPair(theta, groups[0], groups[1], counted_atoms(groups[0], moms[0], data),
                         counted_atoms(groups[1], moms[1], data), moms[1], scale, data)
        return plain_shrink_pair(pair, start[0], lfc, se)
    u = start.copy()
    u[1] = u[0] + (approximate_inner_mode(lfc, se, scale) if se > 0.0 else 0.0)
    best, best_value, L = climb(u, theta, groups, moms, scale, data, -1.0)
    if outer_mode_possible(theta, groups[1], best[0], best[2:], moms[1], lfc, scale, data):
        u = best.copy()
        u[1] = u[0] + lfc
        other, other_value, other_L = climb(u, theta, groups, moms, scale, data, scale)
        if (abs((other[1] - other[0]) - (best[1] - best[0])) > SAME_MODE
                and other_value > best_value):
            best, L = other, other_L
    if L.shape[0] == 0:
        return np.nan, np.nan
    v = np.zeros(best.shape[0])
    v[0] = -1.0
    v[1] = 1.0
    return best[1] - best[0], math.sqrt(np.dot(v, _solve(L, v)))


@njit(cache=True, parallel=True)
def shrink_block(inputs, data):
    """`shrink_pair` for every gene of the block and every comparison whose MLE (inputs.lfc)
    and dispersion are finite; NaN elsewhere. Returns (shrunken lfc, SD), genes x
    comparisons, natural log."""
    n_genes, n_comps = inputs.lfc.shape
    q = data.atom_z.shape[1]
    out = np.full((n_genes, n_comps), np.nan)
    sd = np.full((n_genes, n_comps), np.nan)
    control = np.full(1, inputs.control, dtype=np.int64)
    shared = inputs.coef.shape[1] == 1      # one initial fit for every comparison
    for g in prange(n_genes):
        control_mom = group_moments(g, control, data)
        control_counts = counted_atoms(inputs.control, control_mom, data)
        start = np.empty(2 + q)
        for j in range(n_comps):
            start[0] = inputs.control_b[g, 0 if shared else j]
            start[2:] = inputs.coef[g, 0 if shared else j]
            if not (np.isfinite(inputs.lfc[g, j]) and np.isfinite(inputs.theta[g, j])
                    and np.isfinite(start[0])):
                continue
            k = inputs.comps[j]
            mom = group_moments(g, inputs.comps[j:j + 1], data)
            if q == 0:      # the control's counted atoms once per gene, not per comparison
                pair = PlainPair(inputs.theta[g, j], inputs.control, k, control_counts,
                                 counted_atoms(k, mom, data), mom, inputs.scale[j], data)
                out[g, j], sd[g, j] = plain_shrink_pair(pair, start[0], inputs.lfc[g, j],
                                                        inputs.se[g, j])
            else:
                out[g, j], sd[g, j] = shrink_pair(inputs.theta[g, j],
                                                  np.array([inputs.control, k]),
                                                  (control_mom, mom), start, inputs.lfc[g, j],
                                                  inputs.se[g, j], inputs.scale[j], data)
    return out, sd
