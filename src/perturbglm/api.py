"""The Python entry point: perturbglm.de(...)."""

from __future__ import annotations

import os
import tempfile

from . import pipeline
from .options import Options, defaults
from .progress import Progress
from .result import Result


def de(data, groupby: str, control, *, out: str | None = None, overwrite: bool = False,
       resume: bool = False, progress: bool = False, **options) -> Result:
    """Test every perturbation of `groupby` against the `control` cells, per gene.

    data: path of an .h5ad file (streamed from disk, opened read-only) or an AnnData (written
    to a temporary .h5ad first). control: a label, or several (a list or tuple, or one
    string separated by commas as on the command line) whose cells are pooled into one
    control group. With `out`, the result folder is written there and the returned result
    reads its table from it when needed (large screens); without, the table is returned in
    memory.

    options: any field of `perturbglm.options.Options`, with its default there (and in
    `perturbglm.options.defaults()`): contrasts (pairs (A, B), or "A:B" strings: A against
    B as extra rows "A vs B"), covariates, layer, size_factors, min_cells, min_mu,
    dispersion, test, outliers, shrink, max_memory, chunk_cells, threads, fdr,
    independent_filtering, min_base_mean, min_pct. The README gives the meaning of each and
    its DESeq2 counterpart. padj is by default BH over the tested genes of each perturbation
    (DESeq2's results(independentFiltering = FALSE)); independent_filtering=True gives
    results()' default instead, leaving genes of low baseMean out of BH (padj NaN) at the
    cutoff DESeq2 would choose for the most rejections at `fdr`, recorded per perturbation in
    run_info["independent_filtering"]. min_base_mean and min_pct (percent of cells with a
    non-zero count, in the arm where it is larger) leave genes out of the tests and the FDR
    (pvalue and padj NaN) without changing size factors or dispersions.
    """
    if isinstance(options.get("covariates"), str):
        options["covariates"] = [c for c in options["covariates"].split(",") if c]
    elif "covariates" in options:
        options["covariates"] = list(options["covariates"])
    unknown = sorted(set(options) - set(defaults()))
    if unknown:
        raise TypeError(f"de() got unknown option(s) {', '.join(unknown)}; the options are "
                        f"{', '.join(defaults())}")
    opts = Options(groupby=groupby, control=control, **options)
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
