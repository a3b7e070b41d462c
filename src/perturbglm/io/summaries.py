"""The non-zero counts, regrouped by gene, and the per-group summaries the kernels work from.

The pass over the file (scan.py) hands every chunk's non-zero counts of analysed cells to
a `Store`, which files them by gene slab (SLAB_GENES consecutive genes), in memory when they
fit the memory budget and in append-only spill files otherwise. A gene block (consecutive
slabs) is later loaded and ordered by (gene, group) in one counting sort: the kernels then
see, for every (gene, group), only its non-zero counts, plus the group's size-factor atoms
shared by all genes (see kernels.py). Entries keep file order within a (gene, group), so the
result does not depend on chunk sizes or thread counts.
"""

from __future__ import annotations

import math
import os
from collections import namedtuple
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit, prange

from ..nb import zero_terms

ATOM_BINS = 32         # size-factor bins per stratum of a large group
EXACT_UP_TO = 32       # strata with at most this many cells keep one atom per cell
SLAB_GENES = 64        # genes per slab of the store
RECORD = np.dtype([("cell", "<i4"), ("y", "<i4")])

# What _split finds wrong with a compressed slice (Problem.kind); scan.py words the refusals.
OK, NOT_COUNT, OUT_OF_RANGE, DUPLICATE = 0, 1, 2, 3


class Problem(NamedTuple):
    """The first malformed entry of a slice: its kind, its row in the slice (a cell of a CSR
    slice, a gene of a CSC one) and its index (gene or cell)."""

    kind: int
    row: int
    index: int


class Store:
    """Non-zero counts of analysed cells, filed by gene slab.

    Each chunk of the pass adds its (cell, count) records ordered by gene (cells in file
    order within a gene) and the number of records of each gene, which restores the gene of
    every record on loading: 8 bytes per non-zero. folder=None keeps each chunk's records
    in memory as they came; otherwise each slab is a pair of append-only files in `folder`
    (records and per-chunk gene counts), and `truncate()` cuts them back to a checkpoint."""

    def __init__(self, n_genes: int, folder: str | None = None):
        self.bounds = np.append(np.arange(0, n_genes, SLAB_GENES), n_genes).astype(np.int64)
        self.n_slabs = self.bounds.size - 1
        self.n_genes = n_genes
        self.folder = folder
        self.nnz = np.zeros(self.n_slabs, dtype=np.int64)
        self.pieces = np.zeros(self.n_slabs, dtype=np.int64)
        self.gene_nnz = np.zeros(n_genes, dtype=np.int64)   # records filed per gene
        self._chunks = None if folder else []
        self._files = None
        if folder:
            os.makedirs(folder, exist_ok=True)

    def _paths(self, s: int) -> tuple[str, str]:
        stem = os.path.join(self.folder, f"slab{s:05d}")
        return stem + ".rec", stem + ".idx"

    def _width(self, s: int) -> int:
        return int(self.bounds[s + 1] - self.bounds[s])

    def add(self, ptr, minor, data, first: int, by_cell: bool, keep, totals,
            logsum) -> Problem | None:
        """File the entries of a compressed slice: cell rows first.. with gene indices
        `minor` (CSR, by_cell) or gene columns first.. with cell indices `minor` (CSC).
        Adds every value to totals[cell] and, if logsum is not None, log counts of kept
        cells to logsum[gene]. Returns None, or the `Problem` that stopped it filing
        anything: a value that is not a count, an index outside the matrix or repeated in a
        row."""
        rec, gene_ptr, kind, row, index = _split(
            ptr, minor, data, first, by_cell, keep, self.n_genes, totals,
            logsum if logsum is not None else np.zeros(0), logsum is not None,
            get_num_threads())
        if kind != OK:
            return Problem(int(kind), int(row), int(index))
        per_slab = np.diff(gene_ptr[self.bounds])
        self.nnz += per_slab
        self.gene_nnz += np.diff(gene_ptr)
        self.pieces += per_slab > 0
        if self._chunks is not None:
            self._chunks.append((rec, gene_ptr))
            return None
        if self._files is None:
            self._files = [tuple(open(p, "ab") for p in self._paths(i))
                           for i in range(self.n_slabs)]
        for s in np.flatnonzero(per_slab):     # file writes: a full disk raises ENOSPC
            g0, g1 = self.bounds[s], self.bounds[s + 1]
            self._files[s][0].write(rec[gene_ptr[g0]:gene_ptr[g1]])
            self._files[s][1].write(np.diff(gene_ptr[g0:g1 + 1]))
        return None

    def sync(self) -> None:
        """Flush spill files to disk (before a checkpoint records their lengths)."""
        if self._files is not None:
            for pair in self._files:
                for fh in pair:
                    fh.flush()
                    os.fsync(fh.fileno())

    def close(self) -> None:
        if self._files is not None:
            for pair in self._files:
                for fh in pair:
                    fh.close()
            self._files = None

    def truncate(self, nnz: np.ndarray, pieces: np.ndarray, gene_nnz: np.ndarray) -> bool:
        """Cut the spill files back to a checkpoint's record and piece counts (zeros empty
        them), and the per-gene record counts to the checkpoint's gene_nnz. Returns False,
        changing nothing, if a file is shorter than the checkpoint says (it never reached
        the disk whole): the read pass must then start again."""
        self.close()
        sizes = [(path, size) for s in range(self.n_slabs)
                 for path, size in zip(self._paths(s),
                                       (int(nnz[s]) * RECORD.itemsize,
                                        int(pieces[s]) * self._width(s) * 8), strict=True)]
        if any(size and not (os.path.exists(path) and os.path.getsize(path) >= size)
               for path, size in sizes):
            return False
        for path, size in sizes:
            if os.path.exists(path):
                os.truncate(path, size)
        self.nnz = np.asarray(nnz, dtype=np.int64).copy()
        self.pieces = np.asarray(pieces, dtype=np.int64).copy()
        self.gene_nnz = np.asarray(gene_nnz, dtype=np.int64).copy()
        return True

    def segments(self, s0: int, s1: int):
        """Every record of slabs s0..s1-1, in the order they were added within each gene, as
        (first gene, end gene, parts) of disjoint gene ranges; a part is (records: int32
        n x 2 of cell and count, runs: int64 record counts of consecutive runs of one gene,
        run_gene: int32 gene of each run). In memory this is one segment whose parts are
        views of the chunks' records (nothing is copied); spilled, one segment per slab
        (without parts if it is empty), read from its files only when the iteration reaches
        it."""
        g0, g1 = int(self.bounds[s0]), int(self.bounds[s1])
        if self._chunks is not None:
            genes = np.arange(g0, g1, dtype=np.int32)
            yield g0, g1, [(rec[gene_ptr[g0]:gene_ptr[g1]], np.diff(gene_ptr[g0:g1 + 1]),
                            genes)
                           for rec, gene_ptr in self._chunks if gene_ptr[g1] > gene_ptr[g0]]
            return
        self.close()
        for s in range(s0, s1):
            if self.nnz[s] == 0:
                yield int(self.bounds[s]), int(self.bounds[s + 1]), []
                continue
            rec_path, idx_path = self._paths(s)
            rec = np.fromfile(rec_path, dtype=np.int32, count=2 * int(self.nnz[s]))
            runs = np.fromfile(idx_path, dtype=np.int64,
                               count=int(self.pieces[s]) * self._width(s))
            slab_genes = np.arange(self.bounds[s], self.bounds[s + 1], dtype=np.int32)
            yield (int(self.bounds[s]), int(self.bounds[s + 1]),
                   [(rec.reshape(-1, 2), runs, np.tile(slab_genes, int(self.pieces[s])))])

    def blocks(self, max_nnz: int, max_slabs: int) -> list[tuple[int, int]]:
        """Consecutive slab ranges of at most max_slabs slabs holding at most max_nnz records
        each (a slab is never split: one larger than max_nnz forms its own block)."""
        out, s0, acc = [], 0, 0
        for s in range(self.n_slabs):
            if s > s0 and (acc + self.nnz[s] > max_nnz or s - s0 >= max_slabs):
                out.append((s0, s))
                s0, acc = s, 0
            acc += self.nnz[s]
        out.append((s0, self.n_slabs))
        return out


@njit(cache=True, parallel=True, nogil=True)
def _split(ptr, minor, data, first, by_cell, keep, n_genes, totals, logsum, want_logsum,
           bands):
    """Order the non-zeros of kept cells in a compressed slice by gene (slice order within a
    gene) as (cell, count) records, an int32 array n x 2 with gene_ptr giving each gene's
    range; add them to the cells' totals and, if want_logsum, their logs to the genes'
    logsum. The slice's rows are split into `bands` consecutive ranges counted and placed in
    parallel; the order, and every sum (of whole counts, or per gene in record order), do
    not depend on the split.

    Every entry is checked on the way, at the cost of a comparison or two: its value is a
    count, its index lies in the matrix, and no index appears twice in a row. A row whose
    indices are not increasing (CSR does not require sorted rows) is checked again with a
    stamp per index of the last row that used it (allocated by a band at its first such
    row). Returns (records, gene_ptr, problem, row, index): problem is OK or the first
    problem found (NOT_COUNT, OUT_OF_RANGE, DUPLICATE) in the first band that has one, row
    its row in the slice and index the index concerned; nothing is filed then."""
    n_rows = ptr.shape[0] - 1
    n_minor = n_genes if by_cell else totals.shape[0]
    cut = np.zeros(bands + 1, dtype=np.int64)
    for t in range(1, bands + 1):
        cut[t] = np.searchsorted(ptr, ptr[0] + (ptr[n_rows] - ptr[0]) * t // bands)
    cut[bands] = n_rows
    counts = np.zeros((bands, n_genes + 1), dtype=np.int64)
    part_totals = np.zeros((1 if by_cell else bands, totals.shape[0]))
    problem = np.zeros((bands, 3), dtype=np.int64)      # per band: problem, row, index
    for t in prange(bands):
        stamp = np.empty(0, dtype=np.int32)
        for r in range(cut[t], cut[t + 1]):
            last = np.int64(-1)
            increasing = True
            for e in range(ptr[r], ptr[r + 1]):
                j = np.int64(minor[e])
                v = data[e]
                if j < 0 or j >= n_minor:
                    problem[t, 0], problem[t, 1], problem[t, 2] = OUT_OF_RANGE, r, j
                    break
                if not (v >= 0.0 and v < 2147483648.0 and v == math.floor(v)):
                    problem[t, 0], problem[t, 1], problem[t, 2] = NOT_COUNT, r, j
                    break
                increasing &= j > last
                last = j
                cell = first + r if by_cell else j
                gene = j if by_cell else first + r
                if by_cell:
                    totals[cell] += v
                else:
                    part_totals[t, cell] += v
                if v > 0.0 and keep[cell]:
                    counts[t, gene + 1] += 1
            if problem[t, 0] != OK:
                break
            if not increasing:
                if stamp.size == 0:
                    stamp = np.full(n_minor, -1, dtype=np.int32)
                for e in range(ptr[r], ptr[r + 1]):
                    j = np.int64(minor[e])
                    if stamp[j] == r:
                        problem[t, 0], problem[t, 1], problem[t, 2] = DUPLICATE, r, j
                        break
                    stamp[j] = r
                if problem[t, 0] != OK:
                    break
    gene_ptr = np.zeros(n_genes + 1, dtype=np.int64)
    for t in range(bands):
        if problem[t, 0] != OK:
            return (np.empty((0, 2), dtype=np.int32), gene_ptr, problem[t, 0], problem[t, 1],
                    problem[t, 2])
    if not by_cell:
        for t in range(bands):
            totals += part_totals[t]
    for g in range(n_genes):
        gene_ptr[g + 1] = gene_ptr[g]
        for t in range(bands):
            c = counts[t, g + 1]
            counts[t, g] = gene_ptr[g + 1]
            gene_ptr[g + 1] += c
    rec = np.empty((gene_ptr[n_genes], 2), dtype=np.int32)
    for t in prange(bands):
        pos = counts[t]
        for r in range(cut[t], cut[t + 1]):
            for e in range(ptr[r], ptr[r + 1]):
                v = data[e]
                cell = first + r if by_cell else minor[e]
                gene = minor[e] if by_cell else first + r
                if v > 0.0 and keep[cell]:
                    rec[pos[gene], 0] = cell
                    rec[pos[gene], 1] = int(v)
                    pos[gene] += 1
    if want_logsum:
        for g in prange(n_genes):
            for e in range(gene_ptr[g], gene_ptr[g + 1]):
                logsum[g] += math.log(rec[e, 1])
    return rec, gene_ptr, OK, 0, 0


@dataclass
class Atoms:
    """Per-group size-factor summaries shared by all genes, and per-cell offsets."""

    G: int
    group_n: np.ndarray
    atom_ptr: np.ndarray
    atom_stats: np.ndarray    # atoms x (mean log size factor, cells, squared deviations)
    atom_z: np.ndarray
    cell_rank: np.ndarray     # per cell: its place in group order (-1: not analysed)
    cell_logs: np.ndarray     # per analysed cell, in group order: log size factor
    cell_atom: np.ndarray     # ... and its atom
    tables: tuple         # zero_terms.build: (ptr, R, const); empty with covariates


BlockData = namedtuple("BlockData", [
    "G", "atom_ptr", "atom_stats", "atom_z", "cell_logs", "cell_atom",
    "tab_ptr", "tab_R", "tab_const", "nz_ptr", "nz"])
BlockData.__doc__ = "What the compiled kernels read of a gene block (layout: kernels.py)."


@dataclass
class GeneBlock:
    """The kernels' view of genes g0..g1-1 (see the layout note in kernels.py)."""

    g0: int
    atoms: Atoms
    nz_ptr: np.ndarray
    nz: np.ndarray        # non-zeros x (cell, count), as the store's records

    @property
    def n_genes(self) -> int:
        return (self.nz_ptr.shape[0] - 1) // self.atoms.G

    def kernel_args(self) -> BlockData:
        a = self.atoms
        return BlockData(a.G, a.atom_ptr, a.atom_stats, a.atom_z,
                         a.cell_logs, a.cell_atom, *a.tables, self.nz_ptr, self.nz)


def _stratum_atoms(logs: np.ndarray):
    """Atoms of one stratum (cells sharing a covariate row): one per cell when few, else
    equal-width bins in log size factor. Returns each atom's mean log size factor, cell
    count and sum of squared deviations, and each cell's atom."""
    if logs.size <= EXACT_UP_TO:
        return logs, np.ones(logs.size), np.zeros(logs.size), np.arange(logs.size)
    edges = np.linspace(logs.min(), logs.max(), ATOM_BINS + 1)
    idx = np.clip(np.searchsorted(edges, logs, side="right") - 1, 0, ATOM_BINS - 1)
    used = np.bincount(idx, minlength=ATOM_BINS) > 0
    idx = (np.cumsum(used) - 1)[idx]
    w = np.bincount(idx).astype(np.float64)
    mean = np.bincount(idx, weights=logs) / w
    w2 = np.bincount(idx, weights=(logs - mean[idx]) ** 2)
    return mean, w, w2, idx


def atoms(cell_group: np.ndarray, size_factors: np.ndarray, covariates: np.ndarray,
          categorical_only: bool, G: int) -> Atoms:
    """The groups' size-factor atoms (one stratum per covariate row) and the per-cell arrays.
    Analysed cells are numbered in group order (file order within a group): gene blocks
    refer to cells by that number, so that the cells of one (gene, group) lie close together
    in the per-cell arrays (on M: gene-wise searches 0.40 -> 0.36 s, stage B 0.58 ->
    0.55 s)."""
    cells = np.flatnonzero(cell_group >= 0)
    cell_logs = np.zeros(cell_group.shape[0])
    cell_logs[cells] = np.log(size_factors[cells])
    cell_atom = np.full(cell_group.shape[0], -1, dtype=np.int64)
    q = covariates.shape[1]
    atom_ptr = [0]
    a_logs, a_w, a_w2, a_z = [], [], [], []
    n_atoms = 0
    by_group = np.argsort(cell_group, kind="stable")   # unanalysed cells (-1) first
    counts_k = np.bincount(cell_group[cells], minlength=G)
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
            lg, w, w2, idx = _stratum_atoms(cell_logs[cells_s])
            cell_atom[cells_s] = n_atoms + idx
            a_logs.append(lg)
            a_w.append(w)
            a_w2.append(w2)
            a_z.append(np.broadcast_to(covariates[cells_s[:1]], (lg.size, q)))
            n_atoms += lg.size
        atom_ptr.append(n_atoms)
    atom_ptr = np.asarray(atom_ptr, dtype=np.int64)
    order = by_group[cell_group.size - cells.size:]
    cell_rank = np.full(cell_group.shape[0], -1, dtype=np.int32)
    cell_rank[order] = np.arange(order.size, dtype=np.int32)
    stats = np.column_stack([np.concatenate(a) for a in (a_logs, a_w, a_w2)])
    if q == 0:
        tables = zero_terms.build(atom_ptr, stats)
    else:
        tables = (np.zeros(0, np.int64), np.zeros((4, 0)), np.zeros((0, 6)))
    return Atoms(G=G, group_n=counts_k.astype(np.float64), atom_ptr=atom_ptr,
                 atom_stats=stats,
                 atom_z=np.ascontiguousarray(np.concatenate(a_z, axis=0)),
                 cell_rank=cell_rank, cell_logs=cell_logs[order], cell_atom=cell_atom[order],
                 tables=tables)


@njit(cache=True, parallel=True)
def _sort_part(rec, runs, run_gene, g0, ga, gb, cell_group, cell_rank, G, pos, out, place,
               bands):
    """One part of the counting sort by (gene, group) (see `build_block`), its genes within
    ga..gb-1: place=False adds its records to the key counts pos[key + 1], place=True moves
    them to out at pos[key] (keys count from gene g0), each cell as its rank. Genes are
    split into `bands` (one per thread), each walking the part in order, so every key is
    filled in record order whatever the number of bands."""
    start = np.zeros(runs.shape[0] + 1, dtype=np.int64)
    for t in range(runs.shape[0]):
        start[t + 1] = start[t] + runs[t]
    width = (gb - ga + bands - 1) // bands
    for band in prange(bands):
        lo = ga + band * width
        for t in range(runs.shape[0]):
            if run_gene[t] < lo or run_gene[t] >= lo + width:
                continue
            base = (run_gene[t] - g0) * G
            for e in range(start[t], start[t + 1]):
                k = base + cell_group[rec[e, 0]]
                if place:
                    out[pos[k], 0] = cell_rank[rec[e, 0]]
                    out[pos[k], 1] = rec[e, 1]
                    pos[k] += 1
                else:
                    pos[k + 1] += 1


@njit(cache=True)
def _records(n):
    """n records (int32 n x 2), allocated by numba: numpy asks the kernel for transparent huge
    pages on large arrays, whose first touch can stall for compaction (0.2-0.6 s per 256 MB
    measured on this project's 2-core VMs, against 0.08 s for ordinary pages)."""
    return np.empty((n, 2), dtype=np.int32)


def build_block(store: Store, s0: int, s1: int, cell_group: np.ndarray,
                at: Atoms) -> GeneBlock:
    """The block of slabs s0..s1-1 of `store`, by a stable counting sort by (gene, group):
    O(records), nothing copied before it, and (spilled) one slab's records read at a time."""
    g0, g1 = int(store.bounds[s0]), int(store.bounds[s1])
    ptr = np.zeros((g1 - g0) * at.G + 1, dtype=np.int64)
    nz = _records(int(store.nnz[s0:s1].sum()))
    pos = np.empty_like(ptr)
    empty = np.empty((0, 2), dtype=np.int32)
    bands = get_num_threads()
    for ga, gb, parts in store.segments(s0, s1):
        k0, k1 = (ga - g0) * at.G, (gb - g0) * at.G
        for rec, runs, run_gene in parts:
            _sort_part(rec, runs, run_gene, g0, ga, gb, cell_group, at.cell_rank, at.G, ptr,
                       empty, False, bands)
        np.cumsum(ptr[k0:k1 + 1], out=ptr[k0:k1 + 1])
        pos[k0:k1 + 1] = ptr[k0:k1 + 1]
        for rec, runs, run_gene in parts:
            _sort_part(rec, runs, run_gene, g0, ga, gb, cell_group, at.cell_rank, at.G, pos,
                       nz, True, bands)
    return GeneBlock(g0=g0, atoms=at, nz_ptr=ptr, nz=nz)
