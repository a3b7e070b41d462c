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
from dataclasses import asdict, dataclass

import numpy as np

from . import outdir

COLUMNS = [  # output column <- array name in the chunks
    ("base_mean", "base_mean"), ("log2fc", "lfc"), ("lfc_se", "se"), ("stat", "stat"),
    ("pvalue", "pvalue"), ("padj", "padj"), ("dispersion", "disp"),
    ("dispersion_gene", "disp_gene"), ("dispersion_trend", "disp_trend"),
    ("pct_perturbed", "pct_perturbed"), ("pct_control", "pct_control")]
SHRINK_COLUMNS = [("log2fc_shrunk", "lfc_shrunk"), ("lfc_se_shrunk", "se_shrunk")]  # --shrink


def columns(opts) -> list:
    """The table's float columns (output name, array name) for a run's options."""
    return COLUMNS + (SHRINK_COLUMNS if opts.shrink != "none" else [])


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


def _schema(float_columns):
    import pyarrow as pa
    return pa.schema([("perturbation", pa.string()), ("gene", pa.string())]
                     + [(name, pa.float64()) for name, _ in float_columns])


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


def _summary_rows(labels, cols, code, n_cells, control_cells, genes_index, fdr):
    for j, label in enumerate(labels):
        g = genes_index.get(label)
        yield {
            "perturbation": label,
            "cells": int(n_cells[code[label]]),
            "control_cells": control_cells,
            "genes_tested": int(np.isfinite(cols["pvalue"][j]).sum()),
            "de_genes": int((cols["padj"][j] < fdr).sum()),
            "target_measured": g is not None,
            "target_log2fc": float(cols["lfc"][j, g]) if g is not None else np.nan,
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


def write(out_dir: str, overwrite: bool, chunks, design, genes, info, opts, path,
          t0: float, run: str) -> Written:
    """Stream (labels, arrays) chunks into OUT_DIR/results.parquet, then the summary and the
    run record; swap the folder into place, marked as the results of `run` (the digest of
    the run's fingerprint). Call under outdir.lock(out_dir)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    float_columns = columns(opts)
    schema = _schema(float_columns)
    genes_pa = _arrow_strings(genes)
    genes_index = {}
    for i, g in enumerate(genes):
        genes_index.setdefault(g, i)
    code = {label: k for k, label in enumerate(design.labels)}
    n_cells = np.bincount(design.cell_group[design.cell_group >= 0],
                          minlength=design.n_groups)
    control_cells = int(n_cells[design.control])
    rows = []
    with outdir.staged(out_dir, overwrite, run) as tmp:
        t1 = time.perf_counter()
        with pq.ParquetWriter(os.path.join(tmp, "results.parquet"), schema,
                              compression="zstd", use_dictionary=False) as writer:
            for labels, cols in chunks:
                n, G = cols["lfc"].shape
                arrays = [_arrow_strings(labels).take(
                              _arrow_numbers(np.repeat(np.arange(n), G), "int64")),
                          genes_pa.take(_arrow_numbers(np.tile(np.arange(G), n), "int64"))]
                arrays += [_arrow_numbers(cols[key].ravel(), "float64")
                           for _, key in float_columns]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema),
                                   row_group_size=max(n * G, 1))
                rows.extend(_summary_rows(labels, cols, code, n_cells, control_cells,
                                          genes_index, opts.fdr))
        write_summary(os.path.join(tmp, "summary.csv"), rows)
        info["timings"]["write"] = time.perf_counter() - t1
        info["timings"]["total"] = time.perf_counter() - t0
        record = run_record(path, opts, info)
        write_record(tmp, record)
    return Written(out_dir, rows, record)
