"""The result folder: results.parquet, summary.csv, run.json.

The table is streamed to parquet a chunk of perturbations at a time (one row group each,
zstd, key columns as plain strings, rows sorted by perturbation), into a folder beside the
destination that is swapped into place once complete (outdir.staged): an interrupted run
never leaves a half-written result, and an existing results folder is replaced only with
overwrite=True.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from collections import namedtuple
from dataclasses import asdict, dataclass

import numpy as np

from . import outdir

ROWS_PER_GROUP = 1_000_000    # rows per parquet row group
SUMMARY_COLUMNS = ["perturbation", "cells", "control_cells", "genes_tested", "de_genes",
                   "target_measured", "target_log2fc", "target_padj"]


def _arrow_numbers(values: np.ndarray, kind: str):
    """An arrow array over a numpy array's memory (float64 or int64). pa.array would do it
    too, but imports pandas on the way (0.25 s), which the command line never needs."""
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=kind)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), values.size,
                                 [None, pa.py_buffer(values)])


def _arrow_strings(items) -> object:
    """An arrow string array of items (see _arrow_numbers)."""
    import pyarrow as pa

    data = [str(x).encode() for x in items]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(data),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
                                 ).cast(pa.string())


def _schema(columns: list[str]):
    import pyarrow as pa
    return pa.schema([("perturbation", pa.string()), ("gene", pa.string())]
                     + [(name, pa.float64()) for name in columns])


Rows = namedtuple("Rows", ["names", "targets", "cells", "control_cells", "cols"])
Rows.__doc__ = """A chunk of the table: per comparison its name (the perturbation column), the
label whose own gene is its target (the summary's target columns), its cells and its
reference's (the control's, or a contrast's B's), and {column: comparisons x genes array}."""


@dataclass
class Written:
    out_dir: str
    summary: list[dict]       # one row (SUMMARY_COLUMNS) per perturbation
    run_info: dict


def write_summary(path: str, rows: list[dict]) -> None:
    """summary.csv as pandas writes it (NaN empty), without importing pandas."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(SUMMARY_COLUMNS)
        for row in rows:
            out.writerow(["" if isinstance(v, float) and v != v else str(v)
                          for v in (row[c] for c in SUMMARY_COLUMNS)])


def _version(name: str) -> str:
    """A loaded library's version: its module's own __version__ where it sets one (looking
    up installed metadata scans sys.path, ~0.01 s a library), else the metadata."""
    from importlib.metadata import version

    return sys.modules[name].__dict__.get("__version__") or version(name)


def run_record(path, opts, info) -> dict:
    """run.json: the input, the parameters, the versions of the libraries this run loaded
    and what the pipeline reports (`info`)."""
    from .. import __version__
    deps = ("numpy", "scipy", "numba", "h5py", "anndata", "pandas", "pyarrow")
    return {
        "input": os.path.abspath(path),
        "parameters": asdict(opts),
        "versions": {"perturbglm": __version__, "python": platform.python_version(),
                     **{d: _version(d) for d in deps if d in sys.modules}},
        **info,
    }


def _summary_rows(rows: Rows, genes_index, fdr):
    cols = rows.cols
    for j, name in enumerate(rows.names):
        g = genes_index.get(rows.targets[j])
        yield {
            "perturbation": name,
            "cells": int(rows.cells[j]),
            "control_cells": int(rows.control_cells[j]),
            "genes_tested": int(np.isfinite(cols["pvalue"][j]).sum()),
            "de_genes": int((cols["padj"][j] < fdr).sum()),
            "target_measured": g is not None,
            "target_log2fc": float(cols["log2fc"][j, g]) if g is not None else np.nan,
            "target_padj": float(cols["padj"][j, g]) if g is not None else np.nan,
        }


def read_written(out_dir: str) -> Written:
    """A finished results folder as `write` returned it: the summary rows (typed as
    _summary_rows makes them) and the run record."""
    ints = ("cells", "control_cells", "genes_tested", "de_genes")
    with open(os.path.join(out_dir, "summary.csv"), newline="") as fh:
        rows = [{**row, **{k: int(row[k]) for k in ints},
                 "target_measured": row["target_measured"] == "True",
                 **{k: float(row[k]) if row[k] else np.nan
                    for k in ("target_log2fc", "target_padj")}}
                for row in csv.DictReader(fh)]
    with open(os.path.join(out_dir, "run.json")) as fh:
        return Written(out_dir, rows, json.load(fh))


def write_record(folder: str, record: dict) -> None:
    with open(os.path.join(folder, "run.json"), "w") as fh:
        json.dump(record, fh, indent=2, default=str)


def write(out_dir: str, overwrite: bool, columns: list[str], chunks, genes, info,
          opts, path, t0: float, run: str) -> Written:
    """Stream `Rows` chunks into OUT_DIR/results.parquet (the float columns `columns`, in
    that order, after perturbation and gene), then the summary and the run record; swap the
    folder into place, marked as the results of `run` (the digest of the run's
    fingerprint). Call under outdir.lock(out_dir)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(columns)
    genes_pa = _arrow_strings(genes)
    genes_index = {}
    for i, g in enumerate(genes):
        genes_index.setdefault(g, i)
    rows = []
    with outdir.staged(out_dir, overwrite, run) as tmp:
        t1 = time.perf_counter()
        with pq.ParquetWriter(os.path.join(tmp, "results.parquet"), schema,
                              compression="zstd", use_dictionary=False) as writer:
            for chunk in chunks:
                cols = chunk.cols
                n, G = cols["log2fc"].shape
                arrays = [_arrow_strings(chunk.names).take(
                              _arrow_numbers(np.repeat(np.arange(n), G), "int64")),
                          genes_pa.take(_arrow_numbers(np.tile(np.arange(G), n), "int64"))]
                arrays += [_arrow_numbers(cols[c].ravel(), "float64") for c in columns]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema),
                                   row_group_size=max(n * G, 1))
                rows.extend(_summary_rows(chunk, genes_index, opts.fdr))
        write_summary(os.path.join(tmp, "summary.csv"), rows)
        info["timings"]["write"] = time.perf_counter() - t1
        info["timings"]["total"] = time.perf_counter() - t0
        record = run_record(path, opts, info)
        write_record(tmp, record)
    return Written(out_dir, rows, record)
