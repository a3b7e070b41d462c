"""Cook's distances of every (gene, comparison), as DESeq2's nbinomWaldTest records them.

For a comparison run alone (the control and one group, design ~ condition or
~ covariates + condition, p coefficients), DESeq2 (calculateCooksDistance) gives every cell

    D_i = (y_i - mu_i)^2 / (mu_i + a_r mu_i^2) / p * h_i / (1 - h_i)^2,

with mu_i the Wald fit's mean (unfloored), h_i its hat value w_i x_i'(X'WX)^-1 x_i, with
w_i = m_i / (1 + a m_i), m_i = max(mu_i, minmu), at the final dispersion a (fitBeta's
hat_diagonals), and a_r the robust method-of-moments dispersion (robustMethodOfMomentsDisp):
the largest over the "cells" of the design (distinct rows of the model matrix, here a group
and a covariate row: a *stratum*) with at least 3 samples of the trimmed variance of the
normalised counts (trimmedCellVariance), v, and then a_r = max((v - m) / m^2, 0.04), m the
mean normalised count of the comparison's cells. maxCooks (recordMaxCooks) is the largest
D_i over the cells of strata of at least 3 samples.

Within a stratum mu_i = s_i e^l (l = intercept + z'c) and h_i = w_i c_s, where c_s =
x_s'(X'WX)^-1 x_s is the stratum's; so D_i is a function of (y_i, s_i) only, and the work
follows non-zeros:

- A zero count has D(0, s) increasing in s: the stratum's zeros reach their maximum at its
  zero cell of largest size factor, found by a mex over the places (by decreasing size
  factor) of its non-zero cells: O(non-zeros).
- The control is shared by all comparisons. Its per-stratum trimmed variances are computed
  once per gene, and so is a short list of candidate cells that contains every
  comparison's maximum, whatever the comparison's fit and dispersions:
  * where y < u (u = s e^l), D is decreasing in y and increasing in u (d log D / du =
    2/(u - y) - a_r/(1 + a_r u) - a/(1 + a u) + 2 h'/(1 - h) > 0, each negative term being
    above -1/u): a cell is beaten by any cell with a smaller or equal count and a larger
    or equal size factor. The candidates are the zero of largest size factor and the
    non-zero cells above it on the frontier (count down, size factor up).
  * where y > u, D is increasing in y, and decreasing in u when c_s y <= 1: with h' =
    c_s / (1 + a u)^2 <= c_s and 1 - h >= 1 - c_s u, the positive term 2 h'/(1 - h) is
    then below 2 / (y - u). A cell is then beaten by any cell with a larger or equal count
    and a smaller or equal size factor: the candidates are the frontier (count up, size
    factor down).
  Each comparison checks c_s y_max <= 1 for each control stratum (y_max its largest count);
  where it fails (a count above the stratum's total Fisher weight: rare), that stratum's
  non-zero cells are all visited for that comparison. The maximum is therefore exact.
- A perturbation's strata are small: its non-zero cells are visited.

Strata, places and per-stratum sorted size factors are a `Layout` (see `layout`), shared
by all genes.
"""

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from .hermite import cubic_hermite
from .kernels import _schur_complement, fixed_mu, group_moments, joint_fit, joint_terms, mle
from .stages import WALD_STEP
from .zero_terms import group_zero, tabulated

MIN_REPLICATES = 3        # nOrMoreInCell(modelMatrix, n = 3): strata behind maxCooks, a_r
MIN_ROBUST_DISP = 0.04    # robustMethodOfMomentsDisp's floor (minDisp)

Layout = namedtuple("Layout", [
    "cell_stratum", "cell_place", "stratum_ptr", "stratum_n", "stratum_z", "sorted_ptr",
    "sorted_logs", "cell_sf", "cell_inv_sf"])
Layout.__doc__ = """The strata of every group, shared by all genes: cell_stratum[cell] (cells
by rank, as in the kernels' data), strata of group k are stratum_ptr[k]:stratum_ptr[k+1],
stratum_n its cells, stratum_z its covariate row; sorted_logs[sorted_ptr[s]:sorted_ptr[s+1]]
the log size factors of stratum s in decreasing order, and cell_place[cell] the cell's place
in that order; cell_sf and cell_inv_sf each cell's size factor and its inverse (the hot
loops multiply by them: an exp per count cost as much as the rest of the arithmetic)."""

Rule = namedtuple("Rule", ["p", "cutoff", "two_groups"])
Rule.__doc__ = """results()' Cook's rule: p coefficients, cutoff (per comparison,
qf(0.99, p, m - p)), two_groups (a design of one two-level factor: DESeq2's "3 or more
larger counts" exemption applies)."""
ControlSummary = namedtuple("ControlSummary", ["var", "zero", "ymax", "cand_lo", "cand_hi",
                                               "cand"])
ControlSummary.__doc__ = """The control's per-gene summaries (`control_summaries`): trimmed
variances, largest zero and largest count per stratum (genes x strata), and the candidate
entries cand[cand_lo[g]:cand_hi[g]] of gene g."""


def layout(atoms) -> Layout:
    """The `Layout` of summaries.Atoms: a stratum is a group and a covariate row (atoms are
    made within strata, so an atom's stratum is its group and its covariate row)."""
    atom_group = np.repeat(np.arange(atoms.G), np.diff(atoms.atom_ptr))
    keys = np.column_stack([atom_group.astype(np.float64), atoms.atom_z])
    rows, atom_stratum = np.unique(keys, axis=0, return_inverse=True)  # by group first
    cell_stratum = atom_stratum.ravel()[atoms.cell_atom].astype(np.int64)
    stratum_n = np.bincount(cell_stratum, minlength=rows.shape[0]).astype(np.int64)
    sorted_ptr = np.concatenate([[0], np.cumsum(stratum_n)]).astype(np.int64)
    order = np.lexsort((-atoms.cell_logs, cell_stratum))
    cell_place = np.empty(order.size, dtype=np.int64)
    cell_place[order] = np.arange(order.size) - sorted_ptr[cell_stratum[order]]
    stratum_ptr = np.searchsorted(rows[:, 0], np.arange(atoms.G + 1)).astype(np.int64)
    return Layout(cell_stratum, cell_place, stratum_ptr, stratum_n,
                  np.ascontiguousarray(rows[:, 1:]), sorted_ptr,
                  np.ascontiguousarray(atoms.cell_logs[order]), np.exp(atoms.cell_logs),
                  np.exp(-atoms.cell_logs))


@njit(cache=True)
def by_stratum(g, k, data, lay, out, run_ptr):
    """The entries (rows of data.nz) of gene g in group k ordered by stratum, counting-sorted
    into the caller's buffers (reused across pairs: no allocation per pair): returns
    (entries, run_ptr), views of `out` and `run_ptr`, run i (stratum stratum_ptr[k] + i)
    being entries[run_ptr[i]:run_ptr[i+1]]."""
    s0 = lay.stratum_ptr[k]
    n_strata = lay.stratum_ptr[k + 1] - s0
    e0 = data.nz_ptr[g * data.G + k]
    e1 = data.nz_ptr[g * data.G + k + 1]
    if n_strata == 1:               # no covariates: the group is one stratum
        for e in range(e0, e1):
            out[e - e0] = e
        run_ptr[0] = 0
        run_ptr[1] = e1 - e0
        return out[:e1 - e0], run_ptr[:2]
    run_ptr[:n_strata + 1] = 0
    for e in range(e0, e1):
        run_ptr[lay.cell_stratum[data.nz[e, 0]] - s0 + 1] += 1
    for i in range(n_strata):
        run_ptr[i + 1] += run_ptr[i]
    for e in range(e0, e1):         # run_ptr[i] runs over run i, ending at its successor's start
        i = lay.cell_stratum[data.nz[e, 0]] - s0
        out[run_ptr[i]] = e
        run_ptr[i] += 1
    for i in range(n_strata, 0, -1):
        run_ptr[i] = run_ptr[i - 1]
    run_ptr[0] = 0
    return out[:e1 - e0], run_ptr[:n_strata + 1]


@njit(cache=True)
def top_zero(ents, s, data, lay, held):
    """Log size factor of stratum s's zero-count cell of largest size factor, given the
    entries `ents` of its non-zero cells (-inf: every cell is non-zero). The first place
    (by decreasing size factor) that no non-zero cell holds: O(non-zeros). `held`: a
    scratch buffer of at least len(ents) + 1 False values, left False."""
    r = ents.shape[0]
    if r >= lay.stratum_n[s]:
        return -np.inf
    for e in ents:
        place = lay.cell_place[data.nz[e, 0]]
        if place <= r:
            held[place] = True
    return _first_free(held, r, s, lay)


@njit(cache=True)
def _first_free(held, r, s, lay):
    """`top_zero` once the places (<= r) of stratum s's r non-zero cells are marked in
    `held`, which is left False."""
    place = 0
    while held[place]:
        place += 1
    held[:r + 1] = False
    if r >= lay.stratum_n[s]:
        return -np.inf
    return lay.sorted_logs[lay.sorted_ptr[s] + place]


@njit(cache=True)
def _trim(n):
    """trimmedCellVariance's trim ratio and variance scale for a cell of n samples."""
    if n <= 3:
        return 1.0 / 3.0, 2.04
    if n <= 23:
        return 0.25, 1.86
    return 0.125, 1.51


@njit(cache=True)
def _select(x, lo, hi, k):
    """Reorder x[lo:hi] in place so that x[k] holds the value of rank k there, with x[lo:k]
    <= x[k] <= x[k+1:hi] (Hoare's quickselect, median-of-three pivot): the order statistics
    at the trim boundaries in O(len) instead of a sort."""
    while hi - lo > 1:
        first, mid, last = x[lo], x[(lo + hi - 1) // 2], x[hi - 1]
        pivot = max(min(first, mid), min(max(first, mid), last))
        i, j = lo, hi - 1
        while i <= j:
            while x[i] < pivot:
                i += 1
            while x[j] > pivot:
                j -= 1
            if i <= j:
                x[i], x[j] = x[j], x[i]
                i += 1
                j -= 1
        # x[lo:j+1] <= pivot, x[j+1:i] == pivot, x[i:hi] >= pivot
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:
            return


@njit(cache=True)
def _middle_sum(x, r, a, b):
    """Sum of the values of ranks a..b-1 of x[:r] (0 <= a < b <= r), reordering x[:r]: a
    selection at each boundary brings them to x[a:b], which are then summed directly (not
    as a total minus the trimmed tails, which would cancel against a large outlier)."""
    if a > 0:
        _select(x, 0, r, a)
    if b < r:
        _select(x, a, r, b)
    out = 0.0
    for i in range(a, b):
        out += x[i]
    return out


@njit(cache=True)
def stratum_variance(ents, n, data, inv_sf, x):
    """DESeq2's trimmedCellVariance of one stratum of n cells whose non-zero counts are the
    entries `ents`: scale * the trimmed mean of the squared deviations of the normalised
    counts y/s from their trimmed mean (R's mean(x, trim): drop floor(n trim) values at
    each end of the sorted values). The n - r zeros are one block at the bottom of the
    sorted values, and their squared deviations one block of tm^2 placed among the others':
    only the r non-zero values are partially ordered, at the trim boundaries (`_middle_sum`).
    inv_sf: each cell's inverse size factor; x: a scratch buffer of at least r values."""
    r = ents.shape[0]
    if r <= int(math.floor(n * _trim(n)[0])):      # see trimmed_variance
        return 0.0
    for i in range(r):
        e = ents[i]
        x[i] = data.nz[e, 1] * inv_sf[data.nz[e, 0]]
    return trimmed_variance(x, r, n)


@njit(cache=True)
def trimmed_variance(x, r, n):
    """`stratum_variance` of a stratum of n cells whose r non-zero normalised counts are
    x[:r] (reordered)."""
    n0 = n - r
    trim, scale = _trim(n)
    lo = int(math.floor(n * trim))       # 0-based first kept value; hi: one past the last
    hi = n - lo
    if r <= lo:         # only zeros kept: trimmed mean 0, and the squared deviations sort alike
        return 0.0
    a = max(lo - n0, 0)                  # the kept non-zero values are ranks a..b-1
    b = hi - n0
    tm = _middle_sum(x, r, a, b) / (hi - lo)       # leaves ranks a..b-1 in x[a:b]
    z = tm * tm
    below = 0                            # squared deviations below the zeros' z
    for i in range(r):
        below += (x[i] - tm) ** 2 < z
    # merged order: the `below` values (0 < y/s < 2 tm), n0 times z, the others, whose
    # squared deviations rank as their values do; kept: merged ranks lo..hi-1, of which
    # the non-zeros' squared deviations are those of ranks a2..b2-1
    a2 = min(lo, below) + max(0, lo - below - n0)
    b2 = min(hi, below) + max(0, hi - below - n0)
    total = z * ((hi - lo) - (b2 - a2))
    if b2 <= a2:
        return scale * total / (hi - lo)
    if a2 == max(below, a) and b2 == b:
        # the usual case: the kept squared deviations are those of the values of ranks
        # a2..b-1, x[a:b] without its values below 2 tm: no second selection
        for i in range(a, b):
            d = (x[i] - tm) ** 2
            if not d < z:
                total += d
        return scale * total / (hi - lo)
    for i in range(r):
        x[i] = (x[i] - tm) ** 2
    total += _middle_sum(x, r, a2, b2)
    return scale * total / (hi - lo)


@njit(cache=True)
def trimmed_cell_variance(ents, n, data):
    """`stratum_variance` with its own scratch buffers."""
    return stratum_variance(ents, n, data, np.exp(-data.cell_logs), np.empty(ents.shape[0]))


@njit(cache=True)
def _mark_frontiers(ents, s, zero_log, data, lay, mark, slot):
    """Mark the candidate cells of control stratum s (see the module docstring): the
    frontier (count up, size factor down) of its non-zero cells `ents`, and the frontier
    (count down, size factor up) of those above its largest zero's size factor zero_log.
    The cells are visited by place (decreasing size factor) through `slot`, a scratch
    buffer over the stratum's places holding -1, left so: a bucket pass over the stratum's
    cells, cheaper than sorting its non-zeros when they are many."""
    r = ents.shape[0]
    if r == 0:
        return
    n = lay.stratum_n[s]
    for e in ents:
        slot[lay.cell_place[data.nz[e, 0]]] = e
    # (count down, size up): from the smallest size factor up, a count above all before
    top = 0
    for place in range(n - 1, -1, -1):
        e = slot[place]
        if e >= 0 and data.nz[e, 1] > top:
            mark[e] = True
            top = data.nz[e, 1]
    # (count up, size down): from the largest size factor down to the largest zero's, a
    # count below all before
    low = np.iinfo(np.int32).max
    for place in range(n):
        e = slot[place]
        if e < 0:
            continue
        if lay.sorted_logs[lay.sorted_ptr[s] + place] <= zero_log:
            break
        if data.nz[e, 1] < low:
            mark[e] = True
            low = data.nz[e, 1]
    for e in ents:
        slot[lay.cell_place[data.nz[e, 0]]] = -1


@njit(cache=True, parallel=True)
def control_summaries(control, lay, data):
    """What every comparison needs of the control cells, once per gene (genes x control
    strata): the trimmed cell variance (NaN for strata of fewer than MIN_REPLICATES cells),
    the log size factor of the largest zero (-inf: none), the largest count; and `mark`,
    True on the entries of data.nz that are candidates for the maximum."""
    n_genes = (data.nz_ptr.shape[0] - 1) // data.G
    s0 = lay.stratum_ptr[control]
    n_strata = lay.stratum_ptr[control + 1] - s0
    var = np.full((n_genes, n_strata), np.nan)
    zero_log = np.full((n_genes, n_strata), -np.inf)
    y_max = np.zeros((n_genes, n_strata))
    mark = np.zeros(data.nz.shape[0], dtype=np.bool_)
    n_cells = lay.sorted_ptr[s0 + n_strata] - lay.sorted_ptr[s0]
    most = 0                             # the most cells of a control stratum
    for i in range(n_strata):
        most = max(most, lay.stratum_n[s0 + i])
    # scratch per run of genes, not per gene (a control stratum can hold most cells)
    n_runs = min(n_genes, 64)
    for chunk in prange(n_runs):
        ents_buf = np.empty(n_cells, dtype=np.int64)
        run_buf = np.empty(n_strata + 1, dtype=np.int64)
        x = np.empty(n_cells)
        held = np.zeros(n_cells + 1, dtype=np.bool_)
        slot = np.full(most, -1, dtype=np.int64)
        for g in range(chunk * n_genes // n_runs, (chunk + 1) * n_genes // n_runs):
            ents, run_ptr = by_stratum(g, control, data, lay, ents_buf, run_buf)
            for i in range(n_strata):
                run = ents[run_ptr[i]:run_ptr[i + 1]]
                n = lay.stratum_n[s0 + i]
                if n < MIN_REPLICATES:
                    continue
                var[g, i] = stratum_variance(run, n, data, lay.cell_inv_sf, x)
                zero_log[g, i] = top_zero(run, s0 + i, data, lay, held)
                for e in run:
                    y_max[g, i] = max(y_max[g, i], data.nz[e, 1])
                _mark_frontiers(run, s0 + i, zero_log[g, i], data, lay, mark, slot)
    return var, zero_log, y_max, mark


@njit(cache=True)
def _cooks(y, sf, mean, lev, a, a_r, p, minmu):
    """Cook's distance of a count y of a cell with size factor sf in a stratum of mean
    `mean` (e^(intercept + z'c)) and leverage factor lev (h = w lev), at dispersion a (hat
    values) and robust dispersion a_r (Pearson residual). 0 where the mean is 0 (a group
    without counts, whose fitted mean DESeq2 drives to its bound: D of order e^-30)."""
    mu = sf * mean
    if mu == 0.0:
        return 0.0
    m = max(mu, minmu)
    h = lev * m / (1.0 + a * m)
    return (y - mu) ** 2 / (mu + a_r * mu * mu) / p * h / ((1.0 - h) * (1.0 - h))


@njit(cache=True)
def _fit(th, g, j, k, wald_fit, fit, wald_table, search, data):
    """The Wald fit (control intercept, group k's, covariate coefficients) of gene g at
    dispersion e^th: `wald_fit` where the test made it, else (a group without counts, whose
    MLE lies at the boundary: intercept -inf) the fit of the groups with counts. Without
    covariates the control's comes from its MLE table, with them the groups with counts are
    fitted jointly from dispersion comparison j's initial fit (stages.Fit)."""
    out = wald_fit.copy()
    if np.isfinite(out[0]) and np.isfinite(out[1]):
        return out
    control, minmu = search.control, search.minmu
    ks = np.array([control, k])
    has = np.empty(2, dtype=np.bool_)
    for i in range(2):
        has[i] = data.nz_ptr[g * data.G + ks[i] + 1] > data.nz_ptr[g * data.G + ks[i]]
    out[:2] = -np.inf
    out[2:] = fit.coef[g, j]
    if not (has[0] or has[1]):
        return out
    if wald_table is None:
        live = ks[has]
        start = np.array([fit.control_b[g, j], fit.b[g, k]])[has]
        bj, cj, _ = joint_fit(th, live, group_moments(g, live, data), start, fit.coef[g, j],
                              data, minmu)
        t = 0
        for i in range(2):
            if has[i]:
                out[i] = bj[t]
                t += 1
        out[2:] = cj
        return out
    if has[0]:
        tab = wald_table[g]
        out[0] = cubic_hermite(th, search.theta_lo, WALD_STEP, tab[0], tab[1])
    if has[1]:
        state = fixed_mu(np.full(1, k, dtype=np.int64), np.zeros(1), fit.coef[g, j], g, data)
        out[1] = mle(th, state, data, minmu, np.nan)[0]
    return out


@njit(cache=True)
def _leverages(th, ks, bk, c, lay, data, minmu, lev_first, lev_last):
    """Per stratum of the groups ks (with finite intercepts bk, covariate coefficients c),
    c_s = x_s'(X'WX)^-1 x_s at dispersion e^th, Fisher weights
    w = m/(1 + a m): with one intercept per group, 1/D_i + (u_i - z_s)' S^-1 (u_i - z_s),
    u_i = B_i / D_i, S the Schur complement C - sum_i B_i B_i' / D_i
    (kernels.contrast_variance's algebra). DESeq2's ridge of 1e-6 on X'WX is left out (its
    effect is below 1e-6 relative). Writes those of the strata of ks[0] to lev_first and of
    ks[-1] to lev_last (pass the same buffer when ks has one group); without covariates
    nothing is allocated (this runs once per pair)."""
    q = data.atom_z.shape[1]
    n = ks.shape[0] - 1
    tables = q == 0
    for i in range(n + 1):
        tables = tables and tabulated(ks[i], math.exp(bk[i]), data, minmu)
    if tables:
        # without covariates a group is one stratum, c_s = 1/D_k, D_k from the group's
        # zero-count table: O(1)
        emu, _, R1, _, _ = group_zero(th, ks[0], bk[0], c, data, minmu)
        lev_first[0] = 1.0 / (emu + R1 * math.exp(-th))
        if n:
            emu, _, R1, _, _ = group_zero(th, ks[n], bk[n], c, data, minmu)
            lev_last[0] = 1.0 / (emu + R1 * math.exp(-th))
        return
    n_atoms = 0
    for k in ks:
        n_atoms += data.atom_ptr[k + 1] - data.atom_ptr[k]
    D, B, C, _, _ = joint_terms(th, ks, np.zeros((n_atoms, 3)), bk, c, data, minmu)
    # the fits' Schur complement; pseudo-inverted, as a covariate the cells cannot identify
    # (a stratum of no weight) leaves it singular
    S = _schur_complement(D[0], B[0], C[0])
    S_inv = np.linalg.pinv(S) if q > 0 else S
    _group_leverage(ks[0], D[0, 0], B[0, 0], S_inv, lay, lev_first)
    if n:
        _group_leverage(ks[n], D[0, n], B[0, n], S_inv, lay, lev_last)


@njit(cache=True)
def _group_leverage(k, d_k, b_k, S_inv, lay, out):
    """`_leverages` of group k's strata, into out, from its information terms D_k, B_k."""
    q = b_k.shape[0]
    s0 = lay.stratum_ptr[k]
    u = b_k / d_k
    for i in range(lay.stratum_ptr[k + 1] - s0):
        out[i] = 1.0 / d_k
        d = u - lay.stratum_z[s0 + i]
        for r in range(q):
            for t in range(q):
                out[i] += d[r] * S_inv[r, t] * d[t]


@njit(cache=True)
def _log_mean(s, b_group, c, lay):
    out = b_group
    for j in range(c.shape[0]):
        out += lay.stratum_z[s, j] * c[j]
    return out


@njit(cache=True, parallel=True)
def max_cooks(comps, theta, base_mean, wald_fit, fit, wald_table, search, rule, ctrl, lay,
              data):
    """maxCooks of every (gene, comparison comps[j]) and whether results()' Cook's rule
    removes its p-value: maxCooks > rule.cutoff[j] and, for a design of one two-level
    factor (rule.two_groups), fewer than 3 of the comparison's counts above the count of
    the cell with the largest Cook's distance. theta[g, j]: the final log dispersion;
    base_mean[g, j]: m; wald_fit[g, j]: the Wald test's fit (`_fit`); fit: the initial fit
    (stages.Fit, one column per dispersion comparison); ctrl: the control's
    `ControlSummary`. Returns (max_cooks, outlier), genes x comparisons; NaN where the
    comparison has no counts or no stratum of MIN_REPLICATES cells."""
    control, minmu, p = search.control, search.minmu, rule.p
    ctrl_var, ctrl_zero, ctrl_ymax = ctrl.var, ctrl.zero, ctrl.ymax
    cand_lo, cand_hi, cand = ctrl.cand_lo, ctrl.cand_hi, ctrl.cand
    shared = fit.coef.shape[1] == 1         # one initial fit for every comparison
    n_genes = theta.shape[0]
    n_c = comps.shape[0]
    out = np.full((n_genes, n_c), np.nan)
    outlier = np.zeros((n_genes, n_c), dtype=np.bool_)
    c0 = lay.stratum_ptr[control]
    n_ctrl = lay.stratum_ptr[control + 1] - c0
    # scratch sizes: the most cells and strata of a compared group
    most_cells, most_strata = 0, 0
    for k in comps:
        most_strata = max(most_strata, lay.stratum_ptr[k + 1] - lay.stratum_ptr[k])
        most_cells = max(most_cells, lay.sorted_ptr[lay.stratum_ptr[k + 1]]
                         - lay.sorted_ptr[lay.stratum_ptr[k]])
    for g in prange(n_genes):
        # per-gene scratch reused by every comparison (allocating per pair cost as much as
        # the arithmetic)
        ents_buf = np.empty(most_cells, dtype=np.int64)
        run_buf = np.empty(most_strata + 1, dtype=np.int64)
        x = np.empty(most_cells)
        y_k = np.empty(most_cells)       # the perturbation's counts and their size factors
        sf_k = np.empty(most_cells)
        held = np.zeros(most_cells + 1, dtype=np.bool_)
        k_zero_buf = np.empty(most_strata)
        exact = np.empty(n_ctrl, dtype=np.bool_)
        lev_ctrl = np.empty(n_ctrl)
        lev_k_buf = np.empty(most_strata)
        pair = np.empty(2, dtype=np.int64)
        for j in range(n_c):
            m = base_mean[g, j]
            th = theta[g, j]
            if not (m > 0.0 and np.isfinite(th)):
                continue
            k = comps[j]
            a = math.exp(th)
            f = wald_fit[g, j]
            if not (np.isfinite(f[0]) and np.isfinite(f[1])):
                f = _fit(th, g, 0 if shared else j, k, f, fit, wald_table, search, data)
            c = f[2:]
            fitted = (np.isfinite(f[0]), np.isfinite(f[1]))
            lev_k = lev_k_buf[:lay.stratum_ptr[k + 1] - lay.stratum_ptr[k]]
            if fitted[0] and fitted[1]:
                pair[0], pair[1] = control, k
                _leverages(th, pair, f[:2], c, lay, data, minmu, lev_ctrl, lev_k)
            elif fitted[0]:
                pair[0] = control
                _leverages(th, pair[:1], f[:1], c, lay, data, minmu, lev_ctrl, lev_ctrl)
            elif fitted[1]:
                pair[0] = k
                _leverages(th, pair[:1], f[1:2], c, lay, data, minmu, lev_k, lev_k)
            # robust dispersion: largest trimmed cell variance over strata of >= 3 cells
            v = -np.inf
            for i in range(n_ctrl):
                if lay.stratum_n[c0 + i] >= MIN_REPLICATES:
                    v = max(v, ctrl_var[g, i])
            ents, run_ptr = by_stratum(g, k, data, lay, ents_buf, run_buf)
            k0 = lay.stratum_ptr[k]
            n_k = lay.stratum_ptr[k + 1] - k0
            k_zero = k_zero_buf[:n_k]
            k_zero[:] = -np.inf
            for i in range(n_k):
                n = lay.stratum_n[k0 + i]
                if n < MIN_REPLICATES:
                    continue
                # one pass over the stratum's counts for its trimmed variance, its largest
                # zero (top_zero) and the Cook's distances below
                t0, t1 = run_ptr[i], run_ptr[i + 1]
                for t in range(t0, t1):
                    cell = data.nz[ents[t], 0]
                    y_k[t] = data.nz[ents[t], 1]
                    sf_k[t] = lay.cell_sf[cell]
                    x[t - t0] = y_k[t] * lay.cell_inv_sf[cell]
                    place = lay.cell_place[cell]
                    if place <= t1 - t0:
                        held[place] = True
                v = max(v, trimmed_variance(x, t1 - t0, n))
                k_zero[i] = _first_free(held, t1 - t0, k0 + i, lay)
            if v == -np.inf:
                continue
            a_r = max((v - m) / (m * m), MIN_ROBUST_DISP)
            best = -1.0
            best_y = 0.0
            # the control: its largest zeros, its candidates where they are exact, else all
            exact[:] = True
            if fitted[0]:
                lev = lev_ctrl
                for i in range(n_ctrl):
                    s = c0 + i
                    if lay.stratum_n[s] < MIN_REPLICATES:
                        continue
                    exact[i] = lev[i] * ctrl_ymax[g, i] <= 1.0
                    if ctrl_zero[g, i] > -np.inf:
                        d = _cooks(0.0, math.exp(ctrl_zero[g, i]),
                                   math.exp(_log_mean(s, f[0], c, lay)), lev[i], a, a_r, p,
                                   minmu)
                        if d > best:
                            best, best_y = d, 0.0
                for t in range(cand_lo[g], cand_hi[g]):
                    e = cand[t]
                    s = lay.cell_stratum[data.nz[e, 0]]
                    if lay.stratum_n[s] < MIN_REPLICATES or not exact[s - c0]:
                        continue
                    y = float(data.nz[e, 1])
                    d = _cooks(y, lay.cell_sf[data.nz[e, 0]],
                               math.exp(_log_mean(s, f[0], c, lay)), lev[s - c0], a, a_r, p,
                               minmu)
                    if d > best:
                        best, best_y = d, y
                if not np.all(exact):
                    for e in range(data.nz_ptr[g * data.G + control],
                                   data.nz_ptr[g * data.G + control + 1]):
                        s = lay.cell_stratum[data.nz[e, 0]]
                        if lay.stratum_n[s] < MIN_REPLICATES or exact[s - c0]:
                            continue
                        y = float(data.nz[e, 1])
                        d = _cooks(y, lay.cell_sf[data.nz[e, 0]],
                                   math.exp(_log_mean(s, f[0], c, lay)), lev[s - c0], a, a_r,
                                   p, minmu)
                        if d > best:
                            best, best_y = d, y
            else:
                best = 0.0          # no control counts: D of order e^-30, see _cooks
            # the perturbation's cells
            if fitted[1]:
                lev = lev_k
                for i in range(n_k):
                    s = k0 + i
                    if lay.stratum_n[s] < MIN_REPLICATES:
                        continue
                    mean = math.exp(_log_mean(s, f[1], c, lay))
                    if k_zero[i] > -np.inf:
                        d = _cooks(0.0, math.exp(k_zero[i]), mean, lev[i], a, a_r, p, minmu)
                        if d > best:
                            best, best_y = d, 0.0
                    for t in range(run_ptr[i], run_ptr[i + 1]):
                        d = _cooks(y_k[t], sf_k[t], mean, lev[i], a, a_r, p, minmu)
                        if d > best:
                            best, best_y = d, y_k[t]
            else:
                best = max(best, 0.0)
            out[g, j] = best
            if best > rule.cutoff[j]:
                outlier[g, j] = True
                if rule.two_groups:
                    larger = 0
                    for kk in (control, k):
                        for e in range(data.nz_ptr[g * data.G + kk],
                                       data.nz_ptr[g * data.G + kk + 1]):
                            if data.nz[e, 1] > best_y:
                                larger += 1
                    outlier[g, j] = larger < 3
    return out, outlier
