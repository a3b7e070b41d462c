"""Read-only access to an on-disk .h5ad: the count matrix in cell chunks, obs and var.

The matrix is read straight from the HDF5 datasets with h5py (DESIGN.md section 3: a slice of
`data`/`indices` per chunk of cells), never loaded whole. obs columns are read with h5py in
their common encodings and anndata's element reader otherwise. The matrix's datasets, types
and `indptr` are checked here before it is read; its entries are checked chunk by chunk as
they stream past (summaries._split).
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import InputError
from .memory import min_chunk_nnz


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
    def from_dense(cls, block: np.ndarray) -> Compressed:
        """The non-zero (and NaN) entries of a dense cells x genes block."""
        stored = block != 0
        indptr = np.concatenate([[0], np.cumsum(stored.sum(axis=1))]).astype(np.int64)
        return cls(indptr, np.nonzero(stored)[1], block[stored], block.shape)


def open_h5ad(path: str) -> h5py.File:
    if os.path.isdir(path):
        zarr = any(os.path.exists(os.path.join(path, m)) for m in (".zgroup", "zarr.json"))
        raise InputError(
            f"{path} is a zarr store; perturbglm reads .h5ad files: convert it with "
            f"anndata.read_zarr('{path}').write_h5ad('screen.h5ad')" if zarr else
            f"{path} is a folder; give the path of an .h5ad screen")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file; give the path of an .h5ad screen")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty; give a complete .h5ad screen")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if f"unable to lock file, errno = {errno.EAGAIN}," in str(exc):
            raise InputError(f"{path}: another process has the file open for writing (HDF5 "
                             "file lock); wait for it to finish, then run again") from None
        reason = " ".join(str(exc).split())
        raise InputError(f"{path}: not a readable HDF5/.h5ad file ({reason}); "
                         "check the file is complete (not truncated) and is an AnnData .h5ad"
                         ) from None


def _check_values_dtype(ds: h5py.Dataset, key: str) -> None:
    """Counts are stored as integers, float32 or float64; any other type is refused, float16
    too (it holds whole numbers exactly only up to 2048, and the compiled scan does not read
    it)."""
    dt = ds.dtype
    if dt.kind in "iu" or dt in (np.float32, np.float64):
        return
    kind = "text" if h5py.check_string_dtype(dt) is not None else str(dt)
    raise InputError(f"'{key}' stores its values as {kind}, not as counts; store raw counts as "
                     "integers or float32 (e.g. adata.X = adata.X.astype('float32') on the "
                     "counts) and write the file again")


def malformed_matrix(key: str, layout: str, what: str) -> InputError:
    """The refusal of a CSR/CSC matrix whose structure is broken (`what`)."""
    return InputError(f"'{key}' is not a valid {layout.upper()} matrix: {what}; the file is "
                      "damaged or was written by a faulty tool; write it again from its source")


def locate_counts(f: h5py.File, layer: str | None) -> CountSource:
    """Find the count matrix: X, layers/NAME or raw/X (layer='raw'), and check what can be
    checked without reading it: its datasets, their types and lengths (the contents of
    `indptr` are checked where they are read, `_read_indptr`; each entry by the scan)."""
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
        _check_values_dtype(node, key)
        return CountSource(f.filename, key, "dense", int(node.shape[0]), int(node.shape[1]))
    enc = _decode(node.attrs.get("encoding-type", ""))
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(f"'{key}' has encoding '{enc}', not a CSR/CSC/dense matrix")
    layout = enc[:3]

    def broken(what):
        return malformed_matrix(key, layout, what)

    parts = {}
    for name in ("data", "indices", "indptr"):
        ds = node.get(name)
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
            raise broken(f"'{name}' is missing or not a 1-d array")
        parts[name] = ds
    shape = np.asarray(node.attrs.get("shape", []))
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or shape.min() < 0:
        raise broken(f"its 'shape' attribute ({shape.tolist()}) is not two sizes")
    _check_values_dtype(parts["data"], key)
    for name in ("indices", "indptr"):
        if parts[name].dtype.kind not in "iu":
            raise broken(f"'{name}' holds {parts[name].dtype}, not integers")
    n_major = int(shape[0] if layout == "csr" else shape[1])
    if parts["indptr"].shape[0] != n_major + 1:
        raise broken(f"'indptr' has {parts['indptr'].shape[0]} entries, not {n_major + 1} "
                     f"(one more than its {'cells' if layout == 'csr' else 'genes'})")
    if parts["indices"].shape[0] != parts["data"].shape[0]:
        raise broken(f"'indices' has {parts['indices'].shape[0]} entries and 'data' "
                     f"{parts['data'].shape[0]}")
    return CountSource(f.filename, key, layout, int(shape[0]), int(shape[1]))


def _read_indptr(node: h5py.Group, src: CountSource) -> np.ndarray:
    """The `indptr` of a CSR/CSC matrix as int64, checked: it starts at 0, never decreases
    and ends at the number of stored entries (its length is checked by locate_counts)."""
    indptr = node["indptr"][:].astype(np.int64)
    unit = "cell" if src.layout == "csr" else "gene"
    n_stored = node["data"].shape[0]
    down = np.flatnonzero(indptr[1:] < indptr[:-1])
    if indptr[0] != 0:
        what = f"'indptr' starts at {indptr[0]}, not 0"
    elif down.size:
        what = f"'indptr' decreases at {unit} {down[0]}"
    elif indptr[-1] != n_stored:
        what = f"'indptr' ends at {indptr[-1]} but 'data' holds {n_stored} entries"
    else:
        return indptr
    raise malformed_matrix(src.key, src.layout, what)


def _frame(f: h5py.File, key: str) -> h5py.Group:
    """obs, var or raw/var: a group (anndata 0.7 on); the record array of older files is
    refused."""
    node = f.get(key)
    if isinstance(node, h5py.Group):
        return node
    if node is None:
        raise InputError(f"the file has no '{key}'; give an AnnData .h5ad")
    raise InputError(f"'{key}' is in the layout of anndata before 0.7 (a record array), which "
                     "perturbglm does not read; rewrite the file with a current anndata: "
                     "anndata.read_h5ad(old).write_h5ad(new)")


def read_var_names(f: h5py.File, src: CountSource) -> np.ndarray:
    var = _frame(f, "raw/var" if src.key == "raw/X" else "var")
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
    return [_decode(c) for c in _frame(f, "obs").attrs.get("column-order", [])]


class Categorical(NamedTuple):
    """A categorical obs column: codes into categories, -1 where missing."""

    codes: np.ndarray
    categories: np.ndarray
    ordered: bool = False


def _read_column(node) -> np.ndarray | Categorical:
    """One obs column, as a numpy array (text as str objects) or a `Categorical`. Read with
    h5py directly, which spares importing anndata and pandas (0.45 s together): a categorical
    group; anndata 0.7's categorical, integer codes whose attribute `categories` refers to
    a dataset of categories (obs/__categories/NAME); numbers, bools and text (variable- or
    fixed-length, as anndata 0.7 wrote them too). Any other encoding (nullable integers,
    bools and strings...) goes to anndata's element reader and is converted."""
    kind = _decode(node.attrs.get("encoding-type", ""))
    if kind == "categorical" and isinstance(node, h5py.Group):
        categories = _read_column(node["categories"])
        return Categorical(node["codes"][:].astype(np.int64), np.asarray(categories),
                           bool(node.attrs.get("ordered", False)))
    if isinstance(node, h5py.Dataset) and node.ndim == 1 and kind in ("", "array",
                                                                       "string-array"):
        if "categories" in node.attrs:
            categories = node.parent[node.attrs["categories"]]
            return Categorical(node[:].astype(np.int64), np.asarray(_read_column(categories)),
                               bool(categories.attrs.get("ordered", False)))
        if h5py.check_string_dtype(node.dtype) is not None:
            return node.asstr("utf-8")[:].astype(object)
        if node.dtype.kind in "biuf":
            return node[:]
    from anndata.io import read_elem

    return _from_pandas(read_elem(node))


def _from_pandas(col) -> np.ndarray | Categorical:
    """A column anndata read (a pandas Categorical, extension array or numpy array)."""
    import pandas as pd

    if isinstance(col, pd.Categorical):
        return Categorical(np.asarray(col.codes, dtype=np.int64),
                           np.asarray(col.categories.to_numpy()), bool(col.ordered))
    if isinstance(col, np.ndarray):
        return col
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(col.to_numpy(dtype=object, na_value=None), dtype=object)


def read_obs(f: h5py.File, wanted: list[str]) -> dict:
    """The obs columns in `wanted` that exist (name -> numpy array or `Categorical`), and
    nothing else."""
    present = set(obs_columns(f))
    return {c: _read_column(f["obs"][c]) for c in dict.fromkeys(wanted) if c in present}


def length(col) -> int:
    """Cells in an obs column."""
    return (col.codes if isinstance(col, Categorical) else col).shape[0]


def is_numeric(col) -> bool:
    """Numbers (not bools, not categories): what a numeric covariate or size factor is."""
    return isinstance(col, np.ndarray) and col.dtype.kind in "iuf"


_none_or_nan = np.frompyfunc(lambda v: v is None or (isinstance(v, float) and v != v), 1, 1)


def missing(col) -> np.ndarray:
    """Per cell: the column has no value (NaN, None, or a categorical code -1)."""
    if isinstance(col, Categorical):
        return col.codes < 0
    if col.dtype.kind == "f":
        return np.isnan(col)
    if col.dtype.kind == "O":
        return _none_or_nan(col).astype(bool)
    return np.zeros(col.shape[0], dtype=bool)


def levels(col) -> tuple[np.ndarray, np.ndarray]:
    """(codes, categories) of a column taken as categorical, codes -1 where missing: a
    `Categorical` keeps its order, other columns get their distinct values sorted."""
    if isinstance(col, Categorical):
        return col.codes, col.categories
    gone = missing(col)
    values = col[~gone]
    try:
        categories, inverse = np.unique(values, return_inverse=True)
    except TypeError:                       # values of mixed types: in order of appearance
        categories = np.array(list(dict.fromkeys(values.tolist())), dtype=object)
        index = {v: i for i, v in enumerate(categories.tolist())}
        inverse = np.array([index[v] for v in values.tolist()], dtype=np.int64)
    codes = np.full(col.shape[0], -1, dtype=np.int64)
    codes[~gone] = inverse.ravel()
    return codes, categories


class _Slicer:
    """Reads ds[lo:hi] of a 1-d dataset into two buffers kept from slice to slice, in turn,
    so that a slice stays whole while the next one is read (`read_ahead`): a fresh array per
    chunk costs page faults (and numpy's huge-page advice, compaction stalls) on every
    chunk, more than the read itself on this project's VMs."""

    def __init__(self, ds: h5py.Dataset):
        self.ds = ds
        self.bufs = [np.empty(0, dtype=ds.dtype), np.empty(0, dtype=ds.dtype)]
        self.turn = 0

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        self.turn ^= 1
        if hi - lo > self.bufs[self.turn].size:
            self.bufs[self.turn] = np.empty(hi - lo, dtype=self.ds.dtype)
        buf = self.bufs[self.turn]
        if hi > lo:
            self.ds.read_direct(buf, np.s_[lo:hi], np.s_[0:hi - lo])
        return buf[:hi - lo]


def read_ahead(pieces):
    """Yield the items of the iterator `pieces` while a thread reads the next one (h5py
    lets go of the GIL while it reads, and the compiled kernels that consume a chunk do
    too), so that reading overlaps the work on the previous chunk. The readers below keep a
    chunk's arrays until the one after next."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(next, pieces, None)
        while (item := ahead.result()) is not None:
            ahead = pool.submit(next, pieces, None)
            yield item


def iter_cell_chunks(f: h5py.File, src: CountSource, chunk_cells: int, first: int = 0):
    """Yield (start, `Compressed` chunk of counts, as stored) over consecutive cell ranges
    from `first` (CSR or dense storage): chunk_cells cells, or more where they hold fewer
    than `memory.min_chunk_nnz` stored values. A chunk's arrays are reused by the one after
    next."""
    node = f[src.key]
    least = min_chunk_nnz(src.n_genes)
    if src.layout == "csr":
        indptr = _read_indptr(node, src)
        data, indices = _Slicer(node["data"]), _Slicer(node["indices"])
        start = first
        while start < src.n_cells:
            stop = max(start + chunk_cells,
                       int(np.searchsorted(indptr, indptr[start] + least, side="left")))
            stop = min(stop, src.n_cells)
            lo, hi = indptr[start], indptr[stop]
            yield start, Compressed(indptr[start:stop + 1] - lo, indices(lo, hi), data(lo, hi),
                                    (stop - start, src.n_genes))
            start = stop
    else:
        step = max(chunk_cells, -(-least // max(src.n_genes, 1)))
        for start in range(first, src.n_cells, step):
            stop = min(start + step, src.n_cells)
            yield start, Compressed.from_dense(node[start:stop])


def iter_gene_slices(f: h5py.File, src: CountSource, chunk_nnz: int, first: int = 0):
    """CSC storage: yield (g0, `Compressed` slice of genes g0.. as stored) over
    consecutive gene ranges from `first` holding about chunk_nnz non-zeros each: sequential
    reads, never the whole matrix. A slice's arrays are reused by the one after next."""
    node = f[src.key]
    indptr = _read_indptr(node, src)
    data, indices = _Slicer(node["data"]), _Slicer(node["indices"])
    g0 = first
    while g0 < src.n_genes:
        g1 = int(np.searchsorted(indptr, indptr[g0] + chunk_nnz, side="right")) - 1
        g1 = min(max(g1, g0 + 1), src.n_genes)
        lo, hi = indptr[g0], indptr[g1]
        yield g0, Compressed(indptr[g0:g1 + 1] - lo, indices(lo, hi), data(lo, hi),
                             (g1 - g0, src.n_cells))
        g0 = g1


def stored_nnz(f: h5py.File, src: CountSource) -> int:
    """Stored entries of the matrix (all cells x genes for dense storage)."""
    if src.layout == "dense":
        return src.n_cells * src.n_genes
    return int(f[src.key]["data"].shape[0])


def stored_dtypes(f: h5py.File, src: CountSource) -> tuple[np.dtype, np.dtype]:
    """The dtypes of the values and the indices of the chunks the readers above yield."""
    node = f[src.key]
    if src.layout == "dense":
        return node.dtype, np.dtype(np.intp)
    return node["data"].dtype, node["indices"].dtype


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
