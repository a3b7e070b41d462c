"""The result object and its files: results.parquet, summary.csv, run.json.

Files are written into a temporary folder beside the destination and renamed into place, so
an interrupted run never leaves a half-written result; an existing folder is replaced only
with overwrite=True.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError


@dataclass
class Result:
    """Per (perturbation, gene) statistics, a per-perturbation summary and the run record."""

    table: pd.DataFrame
    summary: pd.DataFrame
    run_info: dict

    def perturbation(self, label: str) -> pd.DataFrame:
        return self.table[self.table["perturbation"] == label].reset_index(drop=True)

    def write(self, out_dir: str, overwrite: bool = False) -> None:
        write(self, out_dir, overwrite)

    def __repr__(self) -> str:
        n_de = int(self.summary["de_genes"].sum()) if len(self.summary) else 0
        return (f"Result({self.summary.shape[0]} perturbations x "
                f"{self.table['gene'].nunique()} genes, {n_de} DE pairs at FDR "
                f"{self.run_info['parameters']['fdr']})")


def summarise(table: pd.DataFrame, design, fdr: float) -> pd.DataFrame:
    """One row per perturbation: cells, genes tested, DE genes at the FDR, and the target
    gene's own log2fc and padj when the perturbation label is a measured gene."""
    n_cells = np.bincount(design.cell_group[design.cell_group >= 0], minlength=design.n_groups)
    code = {label: k for k, label in enumerate(design.labels)}
    rows = []
    for label, sub in table.groupby("perturbation", sort=False):
        k = code[label]
        target = sub[sub["gene"] == label]
        rows.append({
            "perturbation": label,
            "cells": int(n_cells[k]),
            "control_cells": int(n_cells[design.control]),
            "genes_tested": int(sub["pvalue"].notna().sum()),
            "de_genes": int((sub["padj"] < fdr).sum()),
            "target_measured": bool(len(target)),
            "target_log2fc": float(target["log2fc"].iloc[0]) if len(target) else np.nan,
            "target_padj": float(target["padj"].iloc[0]) if len(target) else np.nan,
        })
    return pd.DataFrame(rows)


def run_record(path, opts, info) -> dict:
    from importlib.metadata import version

    from . import __version__
    deps = ("numpy", "scipy", "numba", "h5py", "anndata", "pandas", "pyarrow")
    return {
        "input": os.path.abspath(path) if isinstance(path, str) else "<AnnData>",
        "parameters": dict(vars(opts)),
        "versions": {"perturbglm": __version__, "python": platform.python_version(),
                     **{d: version(d) for d in deps}},
        **info,
    }


def check_destination(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not overwrite:
        raise InputError(f"output folder '{out_dir}' exists; pass --overwrite to replace it "
                         "or choose another --out")


def write(result: Result, out_dir: str, overwrite: bool = False) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_destination(out_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".perturbglm-", dir=parent)
    try:
        table = pa.Table.from_pandas(result.table, preserve_index=False)
        pq.write_table(table, os.path.join(tmp, "results.parquet"), compression="zstd",
                       use_dictionary=False, row_group_size=1_000_000)
        result.summary.to_csv(os.path.join(tmp, "summary.csv"), index=False)
        with open(os.path.join(tmp, "run.json"), "w") as fh:
            json.dump(result.run_info, fh, indent=2, default=str)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".perturbglm-old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
