"""The Python entry point: perturbglm.de(...)."""

from __future__ import annotations

import os
import tempfile

from . import pipeline
from .progress import Progress
from .result import Result


def de(data, groupby: str, control, covariates=(), layer=None, size_factors="library",
       min_cells: int = 3, min_mu: float = 1e-6, dispersion: str = "per-comparison",
       max_memory=None, threads=None, fdr: float = 0.1, out: str | None = None,
       overwrite: bool = False, resume: bool = False, progress: bool = False,
       chunk_cells: int | None = None, shrink: str = "none") -> Result:
    """Test every perturbation of `groupby` against the `control` cells, per gene.

    control: a label, or several (a list or tuple, or one string separated by commas as on
    the command line) whose cells are pooled into one control group.

    data: path of an .h5ad file (streamed from disk, opened read-only) or an AnnData (written
    to a temporary .h5ad first). With `out`, the result folder is written there and the
    returned result reads its table from it when needed (large screens); without, the table
    is returned in memory. See the README for the meaning of every option.

    shrink: "apeglm" adds log2fc_shrunk and lfc_se_shrunk (DESeq2's
    lfcShrink(type="apeglm")); "none" (default) leaves the table as it is.
    """
    if isinstance(covariates, str):
        covariates = [c for c in covariates.split(",") if c]
    opts = pipeline.Options(groupby=groupby, control=control, covariates=list(covariates),
                            layer=layer, size_factors=size_factors, min_cells=min_cells,
                            min_mu=min_mu, dispersion=dispersion, max_memory=max_memory,
                            chunk_cells=chunk_cells, threads=threads, fdr=fdr, shrink=shrink)
    bar = Progress() if progress else None
    with tempfile.TemporaryDirectory(prefix="perturbglm-") as tmp:
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
        else:
            path = os.path.join(tmp, "input.h5ad")
            data.write_h5ad(path)
        folder = out if out is not None else os.path.join(tmp, "result")
        written = pipeline.run(path, opts, folder, overwrite=overwrite, resume=resume,
                               progress=bar)
        if bar:
            bar.close()
        if out is not None:
            return Result(written.summary, written.run_info, folder)
        import pandas as pd

        table = pd.read_parquet(os.path.join(folder, "results.parquet"))
        return Result(written.summary, written.run_info, table=table)
