"""The steps of the analysis, one module per DESeq2 step, and the list a run executes.

    initial -> gene_dispersions -> trend -> final_dispersions -> lfc -> wald | lrt
            -> [cooks] -> [shrink_scale -> shrink] -> pvalues -> table

Each step is a `base.Step`: a pure function over a gene block or a chunk of comparisons,
with the arrays it reads and writes named; pipeline/runner.py executes the list. A new
statistic is a new module here and a line in `for_options`. The modules make their Step
when asked (`step()`), looking up their function then, so that a test can stand in for it.
"""

from __future__ import annotations

from ..options import Options
from . import cooks, dispersion, initial, lfc, lrt, pvalues, shrink, wald
from .base import Step

COLUMNS = [  # output column <- array, in table order; optional columns after the core
    ("base_mean", "base_mean"), ("log2fc", "lfc"), ("lfc_se", "se"), ("stat", "stat"),
    ("pvalue", "pvalue"), ("padj", "padj"), ("dispersion", "disp"),
    ("dispersion_gene", "disp_gene"), ("dispersion_trend", "disp_trend"),
    ("pct_perturbed", "pct_perturbed"), ("pct_control", "pct_control"),
    ("max_cooks", "max_cooks"), ("log2fc_shrunk", "lfc_shrunk"), ("lfc_se_shrunk", "se_shrunk")]


def for_options(opts: Options) -> list[Step]:
    """The steps an analysis with these options runs, in order."""
    steps = [initial.step(), dispersion.gene_step(), dispersion.trend_step(),
             dispersion.final_step(), lfc.step(),
             lrt.step() if opts.test == "lrt" else wald.step()]
    if opts.outliers == "filter":
        steps.append(cooks.step())
    if opts.shrink == "apeglm":
        steps += [shrink.scale_step(), shrink.step()]
    steps.append(pvalues.step(opts))
    return steps


def columns(steps: list[Step]) -> list[tuple[str, str]]:
    """The output columns the steps provide, in table order."""
    written = {key for s in steps for key in s.writes}
    return [(col, key) for col, key in COLUMNS if key in written]
