"""R's lowess smoother (stats::lowess, the C routine clowess; Cleveland 1979), compiled.

DESeq2's results() fits `lowess(numRej ~ theta, f = 1/5)` to choose its independent
filtering threshold (steps/pvalues.py); neither numpy nor scipy has it, so it is written here
step for step as R computes it, with the same arithmetic order, so that the fit agrees with
R's to rounding (tests/test_filters.py holds it against values R computed):

- each point's fit is a local linear regression on its `ns = max(2, min(n, floor(f n +
  1e-7)))` nearest neighbours (the window slides right while that does not widen it),
  tricube weights on the distance to the farthest neighbour h (1 within 0.001 h, 0 beyond
  0.999 h, ties at the edge included), times the robustness weights after the first pass;
  the slope is dropped when the weighted spread of x is below 0.001 of x's range, and a
  point whose weights are all 0 keeps its y;
- points within `delta` of the last fitted one are not fitted but linearly interpolated
  (ties with it copy its fit);
- `iterations` robustness passes follow the first: bisquare weights of the residuals over 6
  median absolute residuals (1 below 0.001 of it, 0 above 0.999), stopping early when that
  scale is below 1e-7 of the mean absolute residual.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _local_fit(x, y, at, left, right, w, robust, rw):
    """The fitted value at `at` from the window x[left..right] (widened over ties on the
    right), as clowess's `lowest`: (value, whether any weight was positive). `w` is scratch."""
    n = x.size
    spread = x[n - 1] - x[0]
    h = max(at - x[left], x[right] - at)
    h_outer = 0.999 * h
    h_inner = 0.001 * h
    total = 0.0
    j = left
    while j < n:
        w[j] = 0.0
        r = abs(x[j] - at)
        if r <= h_outer:
            if r <= h_inner:
                w[j] = 1.0
            else:
                u = r / h
                v = 1.0 - u * u * u
                w[j] = v * v * v
            if robust:
                w[j] *= rw[j]
            total += w[j]
        elif x[j] > at:
            break
        j += 1
    last = j - 1
    if total <= 0.0:
        return 0.0, False
    for j in range(left, last + 1):
        w[j] /= total
    if h > 0.0:
        centre = 0.0
        for j in range(left, last + 1):
            centre += w[j] * x[j]
        slope = at - centre
        ss = 0.0
        for j in range(left, last + 1):
            d = x[j] - centre
            ss += w[j] * (d * d)
        if np.sqrt(ss) > 0.001 * spread:
            slope /= ss
            for j in range(left, last + 1):
                w[j] *= slope * (x[j] - centre) + 1.0
    fit = 0.0
    for j in range(left, last + 1):
        fit += w[j] * y[j]
    return fit, True


@njit(cache=True)
def _clowess(x, y, f, iterations, delta):
    """The lowess fit at each x (x sorted ascending), as R's clowess."""
    n = x.size
    ys = np.empty(n)
    if n < 2:
        ys[:] = y
        return ys
    ns = max(2, min(n, int(f * n + 1e-7)))
    rw = np.ones(n)
    res = np.empty(n)
    w = np.empty(n)
    for it in range(iterations + 1):
        left = 0
        right = ns - 1
        last = -1                # the last point fitted
        i = 0                    # the point to fit next
        while True:
            if right < n - 1:
                if x[i] - x[left] > x[right + 1] - x[i]:
                    left += 1    # the window moves right: it does not widen
                    right += 1
                    continue
            fit, ok = _local_fit(x, y, x[i], left, right, w, it > 0, rw)
            ys[i] = fit if ok else y[i]
            if last < i - 1:     # interpolate the points skipped within delta
                denom = x[i] - x[last]
                for j in range(last + 1, i):
                    a = (x[j] - x[last]) / denom
                    ys[j] = a * ys[i] + (1.0 - a) * ys[last]
            last = i
            cut = x[last] + delta
            i = last + 1
            while i < n:
                if x[i] > cut:
                    break
                if x[i] == x[last]:
                    ys[i] = ys[last]
                    last = i
                i += 1
            i = max(last + 1, i - 1)
            if last >= n - 1:
                break
        scale = 0.0
        for k in range(n):
            res[k] = y[k] - ys[k]
            scale += abs(res[k])
        scale /= n
        if it == iterations:
            break
        absres = np.sort(np.abs(res))
        half = n // 2
        if n % 2 == 0:
            cmad = 3.0 * (absres[half] + absres[n - half - 1])
        else:
            cmad = 6.0 * absres[half]
        if cmad < 1e-7 * scale:
            break
        c_outer = 0.999 * cmad
        c_inner = 0.001 * cmad
        for k in range(n):
            r = abs(res[k])
            if r <= c_inner:
                rw[k] = 1.0
            elif r <= c_outer:
                u = r / cmad
                v = 1.0 - u * u
                rw[k] = v * v
            else:
                rw[k] = 0.0
    return ys


def lowess(x, y, f: float = 2 / 3, iterations: int = 3,
           delta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """R's `lowess(x, y, f, iter = iterations, delta)`: (x sorted, the fit at each), ties
    in x kept in their order; delta defaults to R's 0.01 * diff(range(x))."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("lowess needs x and y of the same length, at least 1")
    order = np.argsort(x, kind="stable")
    xs, ys = np.ascontiguousarray(x[order]), np.ascontiguousarray(y[order])
    if delta is None:
        delta = 0.01 * (xs[-1] - xs[0])
    return xs, _clowess(xs, ys, float(f), int(iterations), float(delta))
