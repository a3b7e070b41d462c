"""The Python entry point: perturbglm.de(...)."""

from __future__ import annotations

import os
import tempfile

from . import pipeline
from .result import Result, run_record, summarise


def de(data, groupby: str, control: str, covariates=(), layer=None, size_factors="library",
       min_cells: int = 3, min_mu: float = 1e-6, dispersion: str = "per-comparison",
       chunk_cells: int = 10_000, threads=None, fdr: float = 0.1, progress=None) -> Result:
    """Test every perturbation of `groupby` against the `control` cells, per gene.

    data: path of an .h5ad file (streamed from disk, opened read-only) or an AnnData (written
    to a temporary .h5ad first). See the README for the meaning of every option.
    """
    if isinstance(covariates, str):
        covariates = [c for c in covariates.split(",") if c]
    opts = pipeline.Options(groupby=groupby, control=control, covariates=list(covariates),
                            layer=layer, size_factors=size_factors, min_cells=min_cells,
                            min_mu=min_mu, dispersion=dispersion, chunk_cells=chunk_cells,
                            threads=threads, fdr=fdr)
    if isinstance(data, (str, os.PathLike)):
        out = pipeline.run(os.fspath(data), opts, progress)
    else:
        with tempfile.TemporaryDirectory(prefix="perturbglm-") as tmp:
            path = os.path.join(tmp, "input.h5ad")
            data.write_h5ad(path)
            out = pipeline.run(path, opts, progress)
    summary = summarise(out["table"], out["design"], fdr)
    return Result(out["table"], summary, run_record(data, opts, out["info"]))
