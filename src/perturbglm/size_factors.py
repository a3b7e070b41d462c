"""Per-cell size factors: library size, DESeq2's poscounts, or a user-given obs column."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def library(totals: np.ndarray) -> np.ndarray:
    """Total counts over their geometric mean across cells with any counts."""
    return normalise(np.asarray(totals, dtype=np.float64))


def log_geometric_means(logsum: np.ndarray, n_cells: int) -> np.ndarray:
    """Per-gene log geometric mean over n_cells with zeros counted as ones (poscounts)."""
    return logsum / max(n_cells, 1)


def median_ratios(counts, log_geo: np.ndarray) -> np.ndarray:
    """Each cell's median ratio of its positive counts to the genes' geometric means
    (DESeq2's poscounts before rescaling); 0 for a cell with no counts. counts: a CSR
    chunk (indptr, indices, data, shape), whose stored zeros are skipped."""
    n_cells = counts.shape[0]
    rows = np.repeat(np.arange(n_cells), np.diff(counts.indptr))
    pos = counts.data > 0
    rows = rows[pos]
    counts_per_cell = np.bincount(rows, minlength=n_cells)
    ratios = np.log(counts.data[pos]) - log_geo[counts.indices[pos]]
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
    if spec in ("library", "poscounts"):
        return spec, None
    if spec.startswith("obs:") and len(spec) > 4:
        return "obs", spec[4:]
    raise InputError(f"--size-factors '{spec}': use library, poscounts or obs:COLUMN")
