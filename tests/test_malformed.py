"""Files that are not what they claim: a count matrix whose structure is broken or whose
values are of a type that holds no counts is refused in one line, writing nothing; obs
written in any encoding anndata reads, the anndata 0.7 layout among them, gives the groups
and covariates anndata would. Malformed files are valid screens (test_refusals.write_screen)
edited with h5py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from test_refusals import (
    BASE,
    LABELS,
    N_CELLS,
    N_GENES,
    base_obs,
    counts,
    refuse,
    succeed,
    write_screen,
)

# ---------------------------------------------------------------- helpers


def edited(tmp_path, name, edit, layout="csr"):
    """A valid screen written by anndata, then changed by edit(X group) with h5py."""
    path = write_screen(tmp_path / f"{name}.h5ad", layout=layout)
    with h5py.File(path, "r+") as f:
        edit(f["X"])
    return path


def replace(group, name, values):
    """Replace dataset `name` of group (any length or dtype)."""
    del group[name]
    group.create_dataset(name, data=values)


def table(out) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


def run_json(out) -> dict:
    with open(out / "run.json") as fh:
        return json.load(fh)


@pytest.fixture
def reference(tmp_path, capsys):
    """The results of the unedited screen (with --covariates batch)."""
    path = write_screen(tmp_path / "reference.h5ad")
    _, out = succeed(tmp_path, capsys, path, [*BASE, "--covariates", "batch"], "o_reference")
    return table(out)


# ---------------------------------------------------------------- indices within rows

def row_with(group, n: int) -> tuple[int, int]:
    """(row, position of its first entry) of the first row holding at least n entries."""
    ptr = group["indptr"][:]
    r = int(np.flatnonzero(np.diff(ptr) >= n)[0])
    return r, int(ptr[r])


def test_duplicate_index_adjacent(tmp_path, capsys):
    where = []

    def edit(x):
        ind = x["indices"][:]
        r, e = row_with(x, 3)
        ind[e + 1] = ind[e]
        x["indices"][:] = ind
        where.append(f"cell {r}, gene {ind[e]}")

    path = edited(tmp_path, "dup", edit)
    refuse(tmp_path, capsys, path, BASE, "'X' stores an entry twice", where[0],
           "adata.X.sum_duplicates()")


def test_duplicate_index_in_unsorted_row_of_later_chunk(tmp_path, capsys):
    """A row whose indices are not increasing is checked with stamps; the cell is named by
    its place in the file, not in its chunk."""
    def edit(x):
        ind = x["indices"][:]
        ptr = x["indptr"][:]
        _, b, c = ind[ptr[25]:ptr[25] + 3]
        ind[ptr[25]:ptr[25] + 3] = [c, b, c]            # c twice, not adjacent
        x["indices"][:] = ind

    path = edited(tmp_path, "dup_unsorted", edit)
    refuse(tmp_path, capsys, path, [*BASE, "--chunk-cells", "10", "--quiet"],
           "stores an entry twice", "cell 25, gene")


def test_duplicate_index_csc(tmp_path, capsys):
    def edit(x):
        ind = x["indices"][:]
        ptr = x["indptr"][:]
        ind[ptr[3] + 2] = ind[ptr[3]]
        x["indices"][:] = ind

    path = edited(tmp_path, "dup_csc", edit, layout="csc")
    refuse(tmp_path, capsys, path, BASE, "stores an entry twice", "gene 3, cell",
           ".sum_duplicates()")


def test_duplicate_in_layer_names_the_layer(tmp_path, capsys):
    path = write_screen(tmp_path / "layer.h5ad", layers={"counts": counts()})
    with h5py.File(path, "r+") as f:
        ind = f["layers/counts/indices"][:]
        ind[1] = ind[0]
        f["layers/counts/indices"][:] = ind
    refuse(tmp_path, capsys, path, [*BASE, "--layer", "counts"],
           "'layers/counts' stores an entry twice", "adata.layers['counts'].sum_duplicates()")


def test_unsorted_rows_are_read(tmp_path, capsys, reference):
    """CSR does not require sorted indices: every row reversed gives the same table, bit for
    bit (each cell adds one entry per gene, in the same order)."""
    def edit(x):
        ptr, ind, data = x["indptr"][:], x["indices"][:], x["data"][:]
        for r in range(N_CELLS):
            ind[ptr[r]:ptr[r + 1]] = ind[ptr[r]:ptr[r + 1]][::-1]
            data[ptr[r]:ptr[r + 1]] = data[ptr[r]:ptr[r + 1]][::-1]
        x["indices"][:], x["data"][:] = ind, data

    path = edited(tmp_path, "unsorted", edit)
    _, out = succeed(tmp_path, capsys, path, [*BASE, "--covariates", "batch"])
    pd.testing.assert_frame_equal(table(out), reference, check_exact=True)


@pytest.mark.parametrize("bad, layout, needles", [
    (-1, "csr", ("cell 0, gene -1", "outside its 8 genes")),
    (N_GENES, "csr", ("cell 0, gene 8", "outside its 8 genes")),
    (N_CELLS, "csc", ("gene 0, cell 60", "outside its 60 cells")),
], ids=["negative", "n_genes", "csc_n_cells"])
def test_index_out_of_range(tmp_path, capsys, bad, layout, needles):
    def edit(x):
        ind = x["indices"][:].astype(np.int64)
        ind[0] = bad
        replace(x, "indices", ind)

    path = edited(tmp_path, "range", edit, layout)
    refuse(tmp_path, capsys, path, BASE, f"not a valid {layout.upper()} matrix", *needles,
           "write it again from its source")


def test_index_out_of_range_does_not_crash_the_process(tmp_path):
    """An index far beyond the matrix once wrote past an array and killed the process
    (SIGSEGV): run in a child process, so that a relapse fails this test, not the session."""
    def edit(x):
        ind = x["indices"][:]
        ind[5] = 10**9
        x["indices"][:] = ind

    path = edited(tmp_path, "segv", edit)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "perturbglm", "de", path, *BASE, "--out",
                           str(out), "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "gene 1000000000" in proc.stderr, proc.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()


# ---------------------------------------------------------------- indptr and lengths

def _indptr_decreasing(x):
    ptr = x["indptr"][:]
    ptr[6], ptr[7] = ptr[7], ptr[6]
    x["indptr"][:] = ptr


def _indptr_from_one(x):
    ptr = x["indptr"][:]
    ptr[0] = 1
    x["indptr"][:] = ptr


def _indptr_past_data(x):
    ptr = x["indptr"][:]
    ptr[-1] += 4
    x["indptr"][:] = ptr


@pytest.mark.parametrize("edit, needle", [
    (_indptr_decreasing, "'indptr' decreases at cell 6"),
    (_indptr_from_one, "'indptr' starts at 1, not 0"),
    (_indptr_past_data, "'indptr' ends at"),
    (lambda x: replace(x, "indptr", x["indptr"][:-1]), "'indptr' has 60 entries, not 61"),
    (lambda x: replace(x, "data", x["data"][:-5]), "'indices' has"),
    (lambda x: replace(x, "indices", x["indices"][:].astype(np.float64)),
     "'indices' holds float64, not integers"),
    (lambda x: x.attrs.__delitem__("shape"), "'shape' attribute"),
    (lambda x: x.__delitem__("indptr"), "'indptr' is missing"),
], ids=["decreasing", "from_one", "past_data", "indptr_short", "data_short",
        "float_indices", "no_shape", "no_indptr"])
def test_broken_structure(tmp_path, capsys, edit, needle):
    path = edited(tmp_path, "structure", edit)
    refuse(tmp_path, capsys, path, BASE, "'X' is not a valid CSR matrix", needle)


def test_decreasing_indptr_csc(tmp_path, capsys):
    path = edited(tmp_path, "csc", _indptr_decreasing, layout="csc")
    refuse(tmp_path, capsys, path, BASE, "not a valid CSC matrix", "decreases at gene 6")


# ---------------------------------------------------------------- value types

@pytest.mark.parametrize("dtype, named", [
    (np.float16, "float16"), (np.complex64, "complex64"), (np.bool_, "bool"),
    ("S8", "text"),
])
@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_value_type_refused(tmp_path, capsys, dtype, named, layout):
    def edit_csr(x):
        replace(x, "data", x["data"][:].astype(dtype))

    path = write_screen(tmp_path / "typed.h5ad", layout=layout)
    with h5py.File(path, "r+") as f:
        if layout == "dense":
            x = f["X"][:]
            del f["X"]
            f.create_dataset("X", data=x.astype(dtype))
        else:
            edit_csr(f["X"])
    refuse(tmp_path, capsys, path, BASE, f"'X' stores its values as {named}", "float32")


def test_integer_storage_is_read(tmp_path, capsys, reference):
    """Counts stored as int16 with uint32 indices give the float32 file's table."""
    def edit(x):
        replace(x, "data", x["data"][:].astype(np.int16))
        replace(x, "indices", x["indices"][:].astype(np.uint32))

    path = edited(tmp_path, "int16", edit)
    _, out = succeed(tmp_path, capsys, path, [*BASE, "--covariates", "batch"])
    pd.testing.assert_frame_equal(table(out), reference, check_exact=True)


# ---------------------------------------------------------------- obs and var encodings

BATCH3 = ["b1", "b2", "b3"] * (N_CELLS // 3)
PERTURBATIONS = ["NT", "A", "B"]


def write_anndata_07(path, strings: str) -> str:
    """The screen as anndata 0.7 wrote it: obs and var groups of plain datasets, a
    categorical as integer codes whose attribute `categories` is an object reference to
    obs/__categories/NAME; strings variable-length ("vlen") or fixed-length bytes."""
    x = counts()
    obs = base_obs()
    text = h5py.string_dtype() if strings == "vlen" else None

    def strings_ds(group, name, values):
        values = np.asarray(values, dtype=object)
        if text is None:
            return group.create_dataset(name, data=values.astype("S"))
        return group.create_dataset(name, data=values, dtype=text)

    def categorical(group, name, codes, categories):
        cats = strings_ds(group.require_group("__categories"), name, categories)
        ds = group.create_dataset(name, data=np.asarray(codes, dtype=np.int8))
        ds.attrs["categories"] = cats.ref

    with h5py.File(path, "w") as f:
        X = f.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array(x.shape)})
        nz = np.nonzero(x)
        X["data"] = x[nz]
        X["indices"] = nz[1].astype(np.int32)
        X["indptr"] = np.concatenate([[0], np.cumsum((x != 0).sum(1))]).astype(np.int32)
        o = f.create_group("obs")
        o.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.1.0",
                        "_index": "_index",
                        "column-order": np.array(["perturbation", "batch3", "depth"],
                                                 dtype=object)})
        strings_ds(o, "_index", obs.index)
        categorical(o, "perturbation", [PERTURBATIONS.index(v) for v in LABELS],
                    PERTURBATIONS)
        categorical(o, "batch3", [int(b[1]) - 1 for b in BATCH3], ["b1", "b2", "b3"])
        o["depth"] = obs["depth"].to_numpy()
        v = f.create_group("var")
        v.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.1.0",
                        "_index": "_index"})
        v.attrs.create("column-order", np.array([], dtype=object), dtype=h5py.string_dtype())
        strings_ds(v, "_index", [f"g{j}" for j in range(N_GENES)])
    return str(path)


@pytest.mark.parametrize("strings", ["vlen", "fixed"])
def test_anndata_07_obs(tmp_path, capsys, strings):
    """Groups, a categorical covariate (one-hot, not its codes) and gene names of an
    anndata 0.7 file give the table of the same screen written by today's anndata."""
    modern = write_screen(tmp_path / "modern.h5ad",
                          batch3=pd.Categorical(BATCH3, categories=["b1", "b2", "b3"]))
    old = write_anndata_07(tmp_path / "old.h5ad", strings)
    args = [*BASE, "--covariates", "batch3"]
    _, want = succeed(tmp_path, capsys, modern, args, "o_modern")
    _, got = succeed(tmp_path, capsys, old, args, "o_old")
    assert run_json(got)["covariate_columns"] == ["batch3[b2]", "batch3[b3]"]
    assert sorted(set(table(got)["gene"])) == [f"g{j}" for j in range(N_GENES)]
    pd.testing.assert_frame_equal(table(got), table(want), check_exact=True)


def test_anndata_06_layout_refused(tmp_path, capsys):
    path = write_screen(tmp_path / "old.h5ad")
    with h5py.File(path, "r+") as f:
        del f["obs"]
        rec = np.array([(f"c{i}".encode(), k) for i, k in enumerate([0] * N_CELLS)],
                       dtype=[("index", "S8"), ("perturbation", "i1")])
        f.create_dataset("obs", data=rec)
    refuse(tmp_path, capsys, path, BASE, "'obs'", "before 0.7",
           "anndata.read_h5ad(old).write_h5ad(new)")


def _modern(tmp_path, name, **columns):
    """A screen whose extra obs columns are written by anndata as they are given."""
    path = tmp_path / f"{name}.h5ad"
    adata = ad.AnnData(X=counts(), obs=base_obs(),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))
    for key, values in columns.items():
        adata.obs[key] = values
    with ad.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(path, convert_strings_to_categoricals=False)
    return str(path)


FLAGS = np.arange(N_CELLS) % 3 == 0


@pytest.mark.parametrize("flag", [
    FLAGS,
    pd.array(FLAGS, dtype="boolean"),
], ids=["bool", "nullable_boolean"])
def test_bool_covariate_is_categorical(tmp_path, capsys, flag):
    want_path = _modern(tmp_path, "want",
                        flag=pd.Categorical(np.where(FLAGS, "True", "False")))
    path = _modern(tmp_path, "bools", flag=flag)
    args = [*BASE, "--covariates", "flag"]
    _, want = succeed(tmp_path, capsys, want_path, args, "o_want")
    _, got = succeed(tmp_path, capsys, path, args, "o_got")
    assert run_json(got)["covariate_columns"] == ["flag[True]"]
    pd.testing.assert_frame_equal(table(got), table(want), check_exact=True)


def test_nullable_integer_covariate_is_numeric(tmp_path, capsys):
    reps = np.arange(N_CELLS) % 4
    want_path = _modern(tmp_path, "want", reps=reps.astype(np.float64))
    path = _modern(tmp_path, "ints", reps=pd.array(reps, dtype="Int64"))
    args = [*BASE, "--covariates", "reps"]
    _, want = succeed(tmp_path, capsys, want_path, args, "o_want")
    _, got = succeed(tmp_path, capsys, path, args, "o_got")
    assert run_json(got)["covariate_columns"] == ["reps"]
    pd.testing.assert_frame_equal(table(got), table(want), check_exact=True)


def test_nullable_integer_covariate_missing_refused(tmp_path, capsys):
    reps = pd.array(np.arange(N_CELLS) % 4, dtype="Int64")
    reps[7] = pd.NA
    path = _modern(tmp_path, "ints", reps=reps)
    refuse(tmp_path, capsys, path, [*BASE, "--covariates", "reps"], "'reps' has missing")


@pytest.mark.parametrize("dtype", ["string", object], ids=["nullable", "plain"])
def test_string_groupby_with_missing_labels(tmp_path, capsys, dtype):
    """Text labels (nullable strings may be missing: those cells are left out) give the
    table of the same labels as a categorical."""
    labels = np.array(LABELS, dtype=object)
    if dtype == "string":
        labels[[3, 40]] = None
    want_path = _modern(tmp_path, "want",
                        g=pd.Categorical(labels, categories=PERTURBATIONS))
    path = _modern(tmp_path, "text", g=pd.array(labels, dtype=dtype))
    args = ["--groupby", "g", "--control", "NT"]
    _, want = succeed(tmp_path, capsys, want_path, args, "o_want")
    _, got = succeed(tmp_path, capsys, path, args, "o_got")
    assert run_json(got)["cells_without_label"] == (2 if dtype == "string" else 0)
    pd.testing.assert_frame_equal(table(got), table(want), check_exact=True)


# ---------------------------------------------------------------- what is not an .h5ad

@pytest.mark.parametrize("marker", [".zgroup", "zarr.json"])
def test_zarr_store(tmp_path, capsys, marker):
    store = tmp_path / "screen.zarr"
    store.mkdir()
    (store / marker).write_text("{}")
    refuse(tmp_path, capsys, store, BASE, "screen.zarr is a zarr store",
           "reads .h5ad", ".write_h5ad(")


def test_folder(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    refuse(tmp_path, capsys, tmp_path / "folder", BASE, "is a folder")


def test_zarr_store_written_by_anndata(tmp_path, capsys):
    adata = ad.read_h5ad(write_screen(tmp_path / "s.h5ad"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # anndata's notice about zarr format versions
        adata.write_zarr(tmp_path / "s.zarr")
    refuse(tmp_path, capsys, tmp_path / "s.zarr", BASE, "zarr store",
           "anndata.read_zarr(")


def test_file_locked_by_a_writer(tmp_path, capsys):
    """Another process holding the file open for writing (HDF5 file locking)."""
    screen = write_screen(tmp_path / "screen.h5ad")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); "
         "print('open', flush=True); sys.stdin.read()", screen],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        refuse(tmp_path, capsys, screen, BASE, "another process has the file open for writing",
               "wait for it to finish")
    finally:
        holder.stdin.close()
        holder.wait()
