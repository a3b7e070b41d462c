"""The result object: the table (loaded when first used), the summary and the run record."""

from __future__ import annotations

import json
import os
import shutil

from .io import outdir, output


class Result:
    """Per (perturbation, gene) statistics, a per-perturbation summary and the run record.

    A result read from a folder loads its table only when `.table` is first used;
    `.perturbation(label)` reads just that perturbation's rows. Tables are pandas
    DataFrames, made when first used (the command line never imports pandas)."""

    def __init__(self, summary, run_info: dict, folder: str | None = None, table=None):
        self._summary = summary       # a DataFrame, or the rows of output.Written
        self.run_info = run_info
        self.folder = folder
        self._table = table

    @property
    def summary(self):
        """One row per perturbation: cells, genes tested, DE genes, the target's own change."""
        import pandas as pd

        if not isinstance(self._summary, pd.DataFrame):
            self._summary = pd.DataFrame(self._summary, columns=output.SUMMARY_COLUMNS)
        return self._summary

    @classmethod
    def read(cls, folder: str, in_memory: bool = False) -> Result:
        """The result in FOLDER (results.parquet, summary.csv, run.json)."""
        import pandas as pd

        summary = pd.read_csv(os.path.join(folder, "summary.csv"), dtype={"perturbation": str})
        with open(os.path.join(folder, "run.json")) as fh:
            info = json.load(fh)
        table = pd.read_parquet(os.path.join(folder, "results.parquet")) if in_memory else None
        return cls(summary, info, None if in_memory else folder, table)

    @property
    def table(self):
        """Every (perturbation, gene) row of results.parquet."""
        import pandas as pd

        if self._table is None:
            self._table = pd.read_parquet(os.path.join(self.folder, "results.parquet"))
        return self._table

    def perturbation(self, label: str):
        """The rows of one perturbation."""
        import pandas as pd

        if self._table is None:
            return pd.read_parquet(os.path.join(self.folder, "results.parquet"),
                                   filters=[("perturbation", "==", label)])
        return self._table[self._table["perturbation"] == label].reset_index(drop=True)

    def write(self, out_dir: str, overwrite: bool = False) -> None:
        """Write results.parquet, summary.csv and run.json to OUT_DIR (atomically); a result
        read from a folder is copied file by file, without loading its table."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        outdir.check_paths(out_dir)
        with outdir.lock(out_dir), outdir.staged(out_dir, overwrite) as tmp:
            if self._table is None:
                shutil.copy2(os.path.join(self.folder, "results.parquet"), tmp)
            else:
                pq.write_table(pa.Table.from_pandas(self.table, preserve_index=False),
                               os.path.join(tmp, "results.parquet"), compression="zstd",
                               use_dictionary=False, row_group_size=output.ROWS_PER_GROUP)
            self.summary.to_csv(os.path.join(tmp, "summary.csv"), index=False)
            output.write_record(tmp, self.run_info)

    def report(self, out: str | None = None, perturbations=None,
               overwrite: bool = False) -> str:
        """Write the report (PNG figures and index.html, see perturbglm.report) to OUT, by
        default the folder `report` inside the result's folder; PERTURBATIONS: labels to
        show besides the top ones. Needs matplotlib (`pip install 'perturbglm[plot]'`).
        Returns the report folder."""
        from . import report
        from .errors import InputError

        if out is None:
            if self.folder is None:
                raise InputError("this result is in memory, not in a folder: pass "
                                 "out= for the report")
            out = os.path.join(self.folder, outdir.REPORT_DIR)
        report.write(self, out, perturbations, overwrite)
        return out

    def __repr__(self) -> str:
        n_de = int(self.summary["de_genes"].sum()) if len(self.summary) else 0
        return (f"Result({self.summary.shape[0]} perturbations x "
                f"{self.run_info.get('n_genes', '?')} genes, {n_de} DE pairs at FDR "
                f"{self.run_info['parameters']['fdr']})")
