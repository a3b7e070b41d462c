"""Read-only access to an on-disk .h5ad: the count matrix in cell chunks, obs and var.

The matrix is read straight from the HDF5 datasets with h5py (DESIGN.md section 3: a slice of
`data`/`indices` per chunk of cells), never loaded whole. obs columns are read with h5py in
their common encodings and anndata's element reader otherwise. Values are validated chunk
by chunk as they stream past.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
from typing import NamedTuple

from .errors import InputError


def _decode(x):
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass
class CountSource:
    """Where the counts live in the file and how they are stored."""

    path: str
    key: str          # "X", "layers/NAME" or "raw/X"
    layout: str       # "csr", "csc" or "dense"
    n_cells: int
    n_genes: int


class Compressed(NamedTuple):
    """A slice of the matrix in compressed form: rows are cells (CSR) or genes (CSC). The
    scan needs nothing more of it, which spares importing scipy.sparse (0.12 s). shape is
    (rows, columns) of the slice."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, block: np.ndarray) -> "Compressed":
        """The non-zero (and NaN) entries of a dense cells x genes block."""
        stored = block != 0
        indptr = np.concatenate([[0], np.cumsum(stored.sum(axis=1))]).astype(np.int64)
        return cls(indptr, np.nonzero(stored)[1], block[stored], block.shape)


def open_h5ad(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file; give the path of an .h5ad screen")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty; give a complete .h5ad screen")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5/.h5ad file ({exc}); "
                         "check the file is complete (not truncated) and is an AnnData .h5ad"
                         ) from None


def locate_counts(f: h5py.File, layer: str | None) -> CountSource:
    """Find the count matrix: X, layers/NAME or raw/X (layer='raw')."""
    if layer is None:
        key = "X"
    elif layer in ("raw", "raw.X", "raw/X"):
        key = "raw/X"
    else:
        key = f"layers/{layer}"
    if key not in f:
        there = sorted(f["layers"].keys()) if "layers" in f else []
        extra = " and 'raw'" if "raw/X" in f else ""
        raise InputError(f"no count matrix at '{key}'; layers in this file: "
                         f"{there or 'none'}{extra}; pass --layer with one of them")
    node = f[key]
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise InputError(f"'{key}' is not a 2-d matrix; give a cells x genes count matrix")
        return CountSource(f.filename, key, "dense", int(node.shape[0]), int(node.shape[1]))
    enc = _decode(node.attrs.get("encoding-type", ""))
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(f"'{key}' has encoding '{enc}', not a CSR/CSC/dense matrix")
    shape = tuple(int(s) for s in node.attrs["shape"])
    return CountSource(f.filename, key, enc[:3], shape[0], shape[1])


def read_var_names(f: h5py.File, src: CountSource) -> np.ndarray:
    var = f["raw/var"] if src.key == "raw/X" else f["var"]
    index_key = _decode(var.attrs.get("_index", "_index"))
    names = np.array([_decode(x) for x in var[index_key][:]], dtype=object)
    if names.shape[0] != src.n_genes:
        raise InputError(f"var has {names.shape[0]} genes but the matrix has {src.n_genes}")
    return names


def make_unique(names: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """Repeated gene names get a suffix, as anndata's var_names_make_unique does: the second
    'X' becomes 'X-1', the third 'X-2' (skipping names already taken). Returns the names and
    {new name: original name} for every renamed gene."""
    taken = set(names.tolist())
    if len(taken) == names.size:
        return names, {}
    out = names.copy()
    seen: set[str] = set()
    renamed = {}
    for i, name in enumerate(names):
        if name in seen:
            k = 1
            while f"{name}-{k}" in taken:
                k += 1
            out[i] = f"{name}-{k}"
            taken.add(out[i])
            renamed[out[i]] = name
        seen.add(name)
    return out, renamed


def obs_columns(f: h5py.File) -> list[str]:
    return [_decode(c) for c in f["obs"].attrs.get("column-order", [])]


def _read_column(node) -> np.ndarray | pd.Categorical:
    """One obs column. The common encodings (categorical, numeric array, string array) are
    read with h5py directly, which spares importing anndata (0.2 s, a third of a small
    screen's analysis); any other goes to anndata's element reader."""
    kind = _decode(node.attrs.get("encoding-type", ""))
    if kind == "categorical" and isinstance(node, h5py.Group):
        categories = _read_column(node["categories"])
        return pd.Categorical.from_codes(node["codes"][:], categories,
                                         ordered=bool(node.attrs.get("ordered", False)))
    if kind == "array" and isinstance(node, h5py.Dataset) and node.dtype.kind in "biuf":
        return node[:]
    if kind == "string-array" and isinstance(node, h5py.Dataset):
        return node.asstr()[:].astype(object)
    from anndata.io import read_elem

    return read_elem(node)


def read_obs(f: h5py.File, wanted: list[str]) -> pd.DataFrame:
    """The obs columns in `wanted` that exist, and nothing else."""
    present = set(obs_columns(f))
    return pd.DataFrame({c: _read_column(f["obs"][c]) for c in dict.fromkeys(wanted)
                         if c in present})


def iter_cell_chunks(f: h5py.File, src: CountSource, chunk_cells: int, first: int = 0):
    """Yield (start, `Compressed` chunk of counts, as stored) over consecutive cell ranges
    from `first` (CSR or dense storage)."""
    node = f[src.key]
    if src.layout == "csr":
        indptr = node["indptr"][:].astype(np.int64)
        data_ds, ind_ds = node["data"], node["indices"]
        for start in range(first, src.n_cells, chunk_cells):
            stop = min(start + chunk_cells, src.n_cells)
            lo, hi = indptr[start], indptr[stop]
            yield start, Compressed(indptr[start:stop + 1] - lo, ind_ds[lo:hi], data_ds[lo:hi],
                                    (stop - start, src.n_genes))
    else:
        for start in range(first, src.n_cells, chunk_cells):
            stop = min(start + chunk_cells, src.n_cells)
            yield start, Compressed.from_dense(node[start:stop])


def iter_gene_slices(f: h5py.File, src: CountSource, chunk_nnz: int, first: int = 0):
    """CSC storage: yield (g0, `Compressed` slice of genes g0.. as stored) over
    consecutive gene ranges from `first` holding about chunk_nnz non-zeros each: sequential
    reads, never the whole matrix."""
    node = f[src.key]
    indptr = node["indptr"][:].astype(np.int64)
    data_ds, ind_ds = node["data"], node["indices"]
    g0 = first
    while g0 < src.n_genes:
        g1 = int(np.searchsorted(indptr, indptr[g0] + chunk_nnz, side="right")) - 1
        g1 = min(max(g1, g0 + 1), src.n_genes)
        lo, hi = indptr[g0], indptr[g1]
        yield g0, Compressed(indptr[g0:g1 + 1] - lo, ind_ds[lo:hi], data_ds[lo:hi],
                             (g1 - g0, src.n_cells))
        g0 = g1


def stored_nnz(f: h5py.File, src: CountSource) -> int:
    """Stored entries of the matrix (all cells x genes for dense storage)."""
    if src.layout == "dense":
        return src.n_cells * src.n_genes
    return int(f[src.key]["data"].shape[0])


def check_counts(d: np.ndarray, where: str, key: str) -> None:
    """Refuse values that are not raw counts: NaN/Inf, negative, non-integer or beyond int32.
    `where` names the part of the matrix (e.g. "cells from 20000")."""
    if d.size == 0:
        return
    if not np.all(np.isfinite(d)):
        raise InputError(f"'{key}' holds NaN or infinite values ({where}); give raw UMI counts")
    if d.min() < 0:
        raise InputError(f"'{key}' holds negative values ({where}); it looks normalised or "
                         "scaled; give raw counts (e.g. --layer counts)")
    if d.max() >= 2**31:
        raise InputError(f"'{key}' holds values of 2^31 or more ({where}); these are not UMI "
                         "counts; give raw counts")
    if np.any(d != np.floor(d)):
        raise InputError(f"'{key}' holds non-integer values ({where}); it looks normalised "
                         "or log-transformed; give raw counts (e.g. --layer counts or "
                         "--layer raw)")
