"""One streaming pass over the matrix, and the per-group summaries the kernels work from.

The pass reads cell chunks, validates them, accumulates per-cell totals and keeps each
non-zero count of an analysed cell, keyed by (gene, group). The kernels then see, for every
(gene, group), only its non-zero counts, plus the group's size-factor atoms shared by all
genes (see kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .reader import check_counts, iter_cell_chunks

ATOM_BINS = 128        # size-factor bins per stratum of a large group
EXACT_UP_TO = 256      # strata with at most this many cells keep one atom per cell


@dataclass
class Pass:
    """What the single pass over the file produced."""

    totals: np.ndarray          # per cell total counts (all cells of the file)
    counts: sp.csr_matrix       # non-zero counts of analysed cells (cells x genes)


def stream(f, src, cell_group: np.ndarray, chunk_cells: int, progress=None) -> Pass:
    totals = np.zeros(src.n_cells)
    parts = []
    for start, chunk in iter_cell_chunks(f, src, chunk_cells):
        check_counts(chunk, start, src.key)
        totals[start:start + chunk.shape[0]] = np.asarray(chunk.sum(axis=1)).ravel()
        keep = cell_group[start:start + chunk.shape[0]] >= 0
        parts.append(chunk if keep.all() else chunk.multiply(keep[:, None]).tocsr())
        if progress is not None:
            progress(start + chunk.shape[0], src.n_cells)
    counts = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, src.n_genes))
    counts.eliminate_zeros()
    return Pass(totals, counts)


@dataclass
class GeneBlock:
    """Arrays the compiled kernels take (see the layout note in kernels.py)."""

    G: int
    group_n: np.ndarray
    atom_ptr: np.ndarray
    atom_logs: np.ndarray
    atom_w: np.ndarray
    atom_z: np.ndarray
    cell_logs: np.ndarray
    cell_z: np.ndarray
    nz_ptr: np.ndarray
    nz_y: np.ndarray
    nz_cell: np.ndarray

    def kernel_args(self):
        return (self.G, self.atom_ptr, self.atom_logs, self.atom_w, self.atom_z,
                self.cell_logs, self.cell_z, self.nz_ptr, self.nz_y, self.nz_cell)

    def group_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-entry values for every (gene, group): genes x groups."""
        sums = np.add.reduceat(np.append(values, 0.0), self.nz_ptr[:-1])
        sums[np.diff(self.nz_ptr) == 0] = 0.0
        return sums.reshape(-1, self.G)


def _atoms(logs: np.ndarray, z: np.ndarray):
    """Atoms of one stratum (cells sharing a covariate row): exact cells when few, else
    equal-width bins in log size factor carrying the bin's cell count and mean size factor."""
    if logs.size <= EXACT_UP_TO:
        return logs, np.ones(logs.size), z
    edges = np.linspace(logs.min(), logs.max(), ATOM_BINS + 1)
    idx = np.clip(np.searchsorted(edges, logs, side="right") - 1, 0, ATOM_BINS - 1)
    w = np.bincount(idx, minlength=ATOM_BINS).astype(np.float64)
    s_sum = np.bincount(idx, weights=np.exp(logs), minlength=ATOM_BINS)
    used = w > 0
    zrow = np.broadcast_to(z[:1], (int(used.sum()), z.shape[1]))
    return np.log(s_sum[used] / w[used]), w[used], zrow


def build_block(counts: sp.csr_matrix, cell_group: np.ndarray, size_factors: np.ndarray,
                covariates: np.ndarray, categorical_only: bool, G: int) -> GeneBlock:
    cells = np.flatnonzero(cell_group >= 0)
    cell_logs = np.zeros(cell_group.shape[0])
    cell_logs[cells] = np.log(size_factors[cells])
    q = covariates.shape[1]
    atom_ptr = [0]
    a_logs, a_w, a_z = [], [], []
    by_group = np.argsort(cell_group, kind="stable")   # unanalysed cells (-1) first
    counts_k = np.bincount(cell_group[cells], minlength=G)
    group_n = counts_k.astype(np.float64)
    bounds = cell_group.size - cells.size + np.concatenate([[0], np.cumsum(counts_k)])
    for k in range(G):
        members = by_group[bounds[k]:bounds[k + 1]]
        if q == 0:
            strata = [members]
        elif categorical_only:
            _, inv = np.unique(covariates[members], axis=0, return_inverse=True)
            strata = [members[inv.ravel() == s] for s in range(inv.max() + 1)]
        else:
            strata = [members[i:i + 1] for i in range(members.size)]
        for cells_s in strata:
            lg, w, zz = _atoms(cell_logs[cells_s], covariates[cells_s])
            a_logs.append(lg)
            a_w.append(w)
            a_z.append(zz)
        atom_ptr.append(atom_ptr[-1] + sum(x.size for x in a_logs[len(a_logs) - len(strata):]))
    # rows in group order, then scipy's O(nnz) CSC conversion: each gene's entries come out
    # grouped by group, the (gene, group) layout the kernels read
    by_gene = counts[by_group[bounds[0]:]].tocsc()
    nz_cell = by_group[bounds[0]:][by_gene.indices].astype(np.int64)
    key = np.repeat(np.arange(counts.shape[1], dtype=np.int64) * G,
                    np.diff(by_gene.indptr)) + cell_group[nz_cell]
    nz_ptr = np.zeros(counts.shape[1] * G + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=counts.shape[1] * G), out=nz_ptr[1:])
    return GeneBlock(
        G=G, group_n=group_n, atom_ptr=np.asarray(atom_ptr, dtype=np.int64),
        atom_logs=np.concatenate(a_logs), atom_w=np.concatenate(a_w),
        atom_z=np.ascontiguousarray(np.concatenate(a_z, axis=0)),
        cell_logs=cell_logs, cell_z=np.ascontiguousarray(covariates),
        nz_ptr=nz_ptr, nz_y=by_gene.data.astype(np.float64), nz_cell=nz_cell)
