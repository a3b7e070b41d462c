"""Per-cell size factors: library size, DESeq2's poscounts or ratio (median of ratios), or
a user-given obs column."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def library(totals: np.ndarray) -> np.ndarray:
    """Total counts over their geometric mean across cells with any counts."""
    return normalise(np.asarray(totals, dtype=np.float64))


def log_geometric_means(kind: str, logsum: np.ndarray, positive: np.ndarray,
                        n_cells: int) -> np.ndarray:
    """Per-gene log geometric mean over the n_cells analysed cells, as DESeq2's
    estimateSizeFactorsForMatrix computes `loggeomeans` for its `type`:
    - "poscounts": sum_i log y_ig over the positive counts / n_cells (zeros count as ones);
    - "ratio" (DESeq2's default): mean_i log y_ig, which is -Inf (the gene left out of every
      median) when some analysed cell has y_ig = 0, i.e. positive_g < n_cells.
    logsum: per gene, the sum of the log positive counts; positive: per gene, the number of
    analysed cells with a positive count. Refuses "ratio" when every gene has a zero, where
    DESeq2 stops with "every gene contains at least one zero"."""
    log_geo = logsum / max(n_cells, 1)
    if kind == "ratio":
        log_geo[positive < n_cells] = -np.inf
        if not np.isfinite(log_geo).any():
            raise InputError("--size-factors ratio: every gene has a zero count in some "
                             "analysed cell, so DESeq2's median of ratios is undefined; use "
                             "--size-factors poscounts (DESeq2's type='poscounts'), library, "
                             "or obs:COLUMN")
    return log_geo


def median_ratios(counts, log_geo: np.ndarray) -> np.ndarray:
    """Each cell's median over genes of log y_ig - log_geo_g, exponentiated: DESeq2's
    estimateSizeFactorsForMatrix, which takes the median over the genes with a finite
    log geometric mean and a positive count in the cell (before poscounts' rescaling);
    0 for a cell with no such gene. counts: a CSR chunk (indptr, indices, data, shape),
    whose stored zeros are skipped; logs are taken in float64 (as R does), not in the
    file's dtype, to match pass 1's log geometric means."""
    n_cells = counts.shape[0]
    rows = np.repeat(np.arange(n_cells), np.diff(counts.indptr))
    used = (counts.data > 0) & np.isfinite(log_geo[counts.indices])
    rows = rows[used]
    counts_per_cell = np.bincount(rows, minlength=n_cells)
    ratios = np.log(counts.data[used].astype(np.float64)) - log_geo[counts.indices[used]]
    ratios = ratios[np.lexsort((ratios, rows))]
    sf = np.zeros(n_cells)
    has = counts_per_cell > 0
    start = (np.cumsum(counts_per_cell) - counts_per_cell)[has]
    n = counts_per_cell[has]
    sf[has] = np.exp(0.5 * (ratios[start + (n - 1) // 2] + ratios[start + n // 2]))
    return sf


def normalise(sf: np.ndarray) -> np.ndarray:
    """Rescale the positive size factors to geometric mean 1."""
    pos = sf > 0
    out = sf.copy()
    if pos.any():
        out[pos] /= np.exp(np.mean(np.log(sf[pos])))
    return out


def from_obs(obs: dict, columns: list[str], column: str) -> np.ndarray:
    if column not in obs:
        raise InputError(f"--size-factors obs:{column}: no obs column '{column}'; "
                         f"obs columns are: {', '.join(columns)}")
    col = obs[column]
    if not (isinstance(col, np.ndarray) and col.dtype.kind in "biuf"):
        raise InputError(f"--size-factors obs:{column}: the column is not numeric")
    sf = col.astype(np.float64)
    if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
        raise InputError(f"--size-factors obs:{column}: size factors must be positive and "
                         "finite for every cell")
    return sf


def parse(spec: str) -> tuple[str, str | None]:
    if spec in ("library", "poscounts", "ratio"):
        return spec, None
    if spec.startswith("obs:") and len(spec) > 4:
        return "obs", spec[4:]
    raise InputError(f"--size-factors '{spec}': use library, poscounts, ratio or "
                     "obs:COLUMN")
