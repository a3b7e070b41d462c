"""The passes over the file.

Pass 1 (always): reads the matrix once, sequentially, in cell chunks (CSR, dense) or gene
slices (CSC), each read while the one before is processed; validates the values; sums each
cell's counts (library size factors) and, for poscounts and ratio, each gene's log counts;
files the non-zeros of analysed cells into the `Store` (which counts them per gene).
When the store spills to disk, the pass checkpoints every CHECKPOINT_SECONDS, so --resume
continues from the last checkpoint rather than from the first cell.

Pass 2 (size factors "poscounts" and "ratio" only, CSR or dense files): each cell's median
ratio to the gene geometric means, which needs the means of pass 1 first.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .. import size_factors as sf_mod
from ..errors import InputError
from . import summaries
from .reader import check_counts, iter_cell_chunks, iter_gene_slices, malformed_matrix, read_ahead

CHECKPOINT_SECONDS = 20.0


def _checkpoint(ws, store, position, totals, logsum, done=False):
    store.sync()
    ws.save_arrays("scan", position=np.array([position]), slab_nnz=store.nnz,
                   slab_pieces=store.pieces, gene_nnz=store.gene_nnz, totals=totals,
                   logsum=logsum,
                   done=np.array([done]))


def _restore(ws, store, totals, logsum):
    """(position, totals, logsum, done) of the read pass at the workspace's last checkpoint,
    with the spill files cut back to it (a kill or a full disk leaves records past it). With
    no checkpoint, or spill files shorter than it says, the spill files are emptied and the
    pass starts from the first cell with the given (zero) totals and logsum."""
    if ws.has("scan"):
        if store.truncate(ws.load("scan", "slab_nnz"), ws.load("scan", "slab_pieces"),
                          ws.load("scan", "gene_nnz")):
            return (int(ws.load("scan", "position")[0]), ws.load("scan", "totals"),
                    ws.load("scan", "logsum"), bool(ws.load("scan", "done")[0]))
        warnings.warn(f"the spilled counts in '{ws.path}' are shorter than its read "
                      "checkpoint says; reading the file again from the first cell",
                      stacklevel=3)
        ws.remove("scan")
    empty = np.zeros(store.n_slabs, dtype=np.int64)
    store.truncate(empty, empty, np.zeros(store.n_genes, dtype=np.int64))
    return 0, totals, logsum, False


def first_pass(f, src, cell_group, store, chunk_nnz, chunk_cells, ws=None,
               want_logsum=False, progress=None):
    """Returns (per-cell totals, per-gene sum of log counts over analysed cells or None).
    ws: the workspace to checkpoint into (spilled stores only)."""
    keep = cell_group >= 0
    totals = np.zeros(src.n_cells)
    logsum = np.zeros(src.n_genes)
    position = 0
    if ws is not None:
        position, totals, logsum, done = _restore(ws, store, totals, logsum)
        if done:
            return totals, (logsum if want_logsum else None)
    last = time.perf_counter()
    csc = src.layout == "csc"
    total, unit = (src.n_genes, "genes") if csc else (src.n_cells, "cells")
    if progress:
        progress("reading", position, total, unit)
    pieces = (iter_gene_slices(f, src, chunk_nnz, position) if csc
              else iter_cell_chunks(f, src, chunk_cells, position))
    for first, part in read_ahead(pieces):
        problem = store.add(part.indptr, part.indices, part.data, first, not csc, keep, totals,
                            logsum if want_logsum else None)
        if problem is not None:
            _refuse(problem, part, first, src)
        position = first + part.shape[0]
        if progress:
            progress("reading", position, total, unit)
        if ws is not None and time.perf_counter() - last > CHECKPOINT_SECONDS:
            _checkpoint(ws, store, position, totals, logsum)
            last = time.perf_counter()
    if ws is not None:
        _checkpoint(ws, store, position, totals, logsum, done=True)
    return totals, (logsum if want_logsum else None)


def _refuse(problem, part, first, src):
    """The one-line refusal of a malformed slice (summaries.Problem) read from `first`."""
    csc = src.layout == "csc"
    unit = "genes" if csc else "cells"
    if problem.kind == summaries.NOT_COUNT:
        check_counts(part.data, f"{unit} from {first}", src.key)
        raise InputError(f"'{src.key}' holds values that are not counts ({unit} from "
                         f"{first}); give raw counts")
    row, index = first + problem.row, problem.index
    where = f"gene {row}, cell {index}" if csc else f"cell {row}, gene {index}"
    if problem.kind == summaries.OUT_OF_RANGE:
        n_minor = src.n_cells if csc else src.n_genes
        raise malformed_matrix(src.key, src.layout, f"an entry ({where}) lies outside its "
                                             f"{n_minor} {'cells' if csc else 'genes'}")
    raise InputError(f"'{src.key}' stores an entry twice ({where}); anndata and scipy would add "
                     "the two, perturbglm does not guess: if they are to be added, run "
                     f"{_python_name(src.key)}.sum_duplicates() and write the file again")


def _python_name(key: str) -> str:
    """The AnnData attribute holding the matrix at `key` (X, raw/X or layers/NAME)."""
    if key.startswith("layers/"):
        return f"adata.layers['{key[len('layers/'):]}']"
    return "adata." + key.replace("/", ".")


def median_ratio_pass(f, src, kind, cell_group, logsum, positive, chunk_cells,
                      progress=None):
    """DESeq2's size factors of type `kind` ("poscounts" or "ratio"; see
    size_factors.log_geometric_means) of the analysed cells, 0 for the others.
    logsum, positive: per gene, the sum of log counts over analysed cells and the number of
    analysed cells with a non-zero count (pass 1)."""
    if src.layout == "csc":
        raise InputError(f"--size-factors {kind} needs cell-major storage, and '{src.key}' "
                         "is CSC; use library or obs:COLUMN, or rewrite the file with a CSR "
                         "matrix (adata.X = adata.X.tocsr())")
    keep = cell_group >= 0
    log_geo = sf_mod.log_geometric_means(kind, logsum, positive, int(keep.sum()))
    sf = np.zeros(src.n_cells)
    if progress:
        progress(kind, 0, src.n_cells, "cells")
    for start, chunk in iter_cell_chunks(f, src, chunk_cells):
        stop = start + chunk.shape[0]
        sf[start:stop] = sf_mod.median_ratios(chunk, log_geo)
        if progress:
            progress(kind, stop, src.n_cells, "cells")
    sf[~keep] = 0.0
    return sf_mod.normalise(sf) if kind == "poscounts" else sf
