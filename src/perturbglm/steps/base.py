"""What a step of the analysis is: a pure function over a gene block or over a chunk of
comparisons, and the names of the arrays it reads and writes.

Two scopes, as DESeq2's own steps fall:
- BLOCK: per gene block (every gene's fit is independent of the others'):
  `run(block, inputs, cx) -> outputs`, with `block` the block's counts
  (io.summaries.GeneBlock) and inputs/outputs arrays over the block's genes.
- COMPARISONS: across all genes of a chunk of comparisons (the dispersion trend and its
  prior, apeGLM's prior scale, Benjamini-Hochberg): `run(inputs, cx, rows) -> outputs`, with
  `rows` the chunk's slice of comparisons and inputs/outputs comparisons x genes.

Arrays by layout: per (comparison, gene) as comparisons x genes; per gene as a vector over
genes (block steps only write these); per comparison as a vector over comparisons
(comparison steps only). The runner (pipeline/runner.py) stores every output in the
workspace under the step's name, gives each step what it reads, and skips a step whose
outputs are saved (--resume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BLOCK = "block"
COMPARISONS = "comparisons"
TESTS = "tests"                  # rows: the tested comparisons (Context.comps)
DISPERSIONS = "dispersions"      # rows: the dispersion comparisons (Context.dcomps)


@dataclass(frozen=True)
class Step:
    """One step: `name` (its workspace entries), `scope` (BLOCK or COMPARISONS), `run`,
    the arrays it reads and writes, which rows its inputs have (TESTS or DISPERSIONS), and
    which of its outputs have a row per dispersion comparison rather than per test. The two
    differ with one dispersion for every comparison: a single row, which the runner repeats
    for a step over TESTS that reads it, and gives as stored to a step over DISPERSIONS."""

    name: str
    scope: str
    run: Callable
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    rows: str = TESTS
    per_dispersion: tuple[str, ...] = ()
