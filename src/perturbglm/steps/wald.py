"""Step `wald` (per gene block): DESeq2's Wald statistic, stat = log2fc / SE; its p-value
is two-sided normal (pvalues.py)."""

from __future__ import annotations

from ..io.summaries import GeneBlock
from .base import BLOCK, Step
from .context import Context


def wald(block: GeneBlock, inputs: dict, cx: Context) -> dict:
    return {"stat": inputs["lfc"] / inputs["se"]}


def step() -> Step:
    return Step("wald", BLOCK, wald, reads=("lfc", "se"), writes=("stat",))
