"""The options of an analysis, their defaults and their checks: the one place where they are
defined. The command line (cli.py) and perturbglm.de (api.py) take their defaults from here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

from . import design as design_mod
from . import size_factors as sf_mod
from .errors import InputError
from .io import memory

CHOICES = {   # options that name one of a few methods, and DESeq2's counterpart of each
    "dispersion": ("per-comparison", "global"),
    "test": ("wald", "lrt"),
    "outliers": ("filter", "off"),
    "shrink": ("none", "apeglm"),
}


@dataclass
class Options:
    groupby: str
    control: str | list[str] | tuple[str, ...]   # as given; see control_labels
    covariates: list[str] = field(default_factory=list)
    contrasts: list = field(default_factory=list)   # "A:B" or (A, B); see contrast_pairs
    layer: str | None = None
    size_factors: str = "library"
    min_cells: int = 3
    min_mu: float = 1e-6
    dispersion: str = "per-comparison"
    test: str = "wald"
    outliers: str = "filter"
    shrink: str = "none"
    max_memory: str | int | None = None
    chunk_cells: int | None = None
    threads: int | None = None
    fdr: float = 0.1
    independent_filtering: bool = False
    min_base_mean: float = 0.0
    min_pct: float = 0.0

    def check(self):
        """Refuse option values the analysis cannot use, naming the option as both the
        command line (--min-cells) and Python (min_cells=) spell it; whole numbers given as
        floats (3.0) become ints."""
        self.control_labels()
        self.contrast_pairs()
        if self.outliers == "replace":
            raise InputError("--outliers / outliers='replace' (DESeq()'s replacement of outlier "
                             "counts and refit) is not implemented; use filter (the default, "
                             "DESeq2's single-cell advice) or off")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"--{name} / {name}={getattr(self, name)!r}: use "
                                 f"{', '.join(allowed[:-1])} or {allowed[-1]}")
        if not (_is_real(self.min_mu) and math.isfinite(self.min_mu) and self.min_mu > 0):
            raise InputError(f"--min-mu / min_mu={self.min_mu!r}: give a positive finite "
                             "number (1e-6 by default, 0.5 for classic DESeq2)")
        self.min_cells = _whole("min_cells", self.min_cells)
        if self.chunk_cells is not None:
            self.chunk_cells = _whole("chunk_cells", self.chunk_cells)
        if self.threads is not None:
            self.threads = _whole("threads", self.threads)
        if not (_is_real(self.fdr) and 0 < self.fdr < 1):
            raise InputError(f"--fdr / fdr={self.fdr!r}: give a number between 0 and 1")
        if not isinstance(self.independent_filtering, (bool, np.bool_)):
            raise InputError("--independent-filtering / independent_filtering="
                             f"{self.independent_filtering!r}: give True or False (on the "
                             "command line the flag alone turns it on)")
        self.independent_filtering = bool(self.independent_filtering)
        if not (_is_real(self.min_base_mean) and math.isfinite(self.min_base_mean)
                and self.min_base_mean >= 0):
            raise InputError(f"--min-base-mean / min_base_mean={self.min_base_mean!r}: give a "
                             "non-negative finite number (0, the default, drops no gene)")
        self.min_base_mean = float(self.min_base_mean)
        if not (_is_real(self.min_pct) and 0 <= self.min_pct <= 100):
            raise InputError(f"--min-pct / min_pct={self.min_pct!r}: give a percent of cells "
                             "between 0 and 100 (0, the default, drops no gene)")
        self.min_pct = float(self.min_pct)
        sf_mod.parse(self.size_factors)
        memory.parse(self.max_memory)

    def control_labels(self) -> list[str]:
        """The labels pooled as the control (design.control_labels)."""
        return design_mod.control_labels(self.control)

    def contrast_pairs(self) -> list[tuple[str, str]]:
        """The contrasts as (A, B) label pairs (design.contrast_pairs)."""
        return design_mod.contrast_pairs(self.contrasts)

    def fingerprint(self) -> dict:
        """The options that change the numbers (not memory, chunking or threads). The
        control as its labels, so that "A,B", ["A", "B"] and ("A", "B") resume each other's
        run; one label stays the string it was. The contrasts as label pairs ("A:B" and
        ("A", "B") resume each other's run), left out when there are none (a run without
        contrasts keeps the fingerprint it had before they existed)."""
        skip = ("max_memory", "chunk_cells", "threads", "contrasts")
        labels = self.control_labels()
        pairs = self.contrast_pairs()
        return {k: v for k, v in asdict(self).items() if k not in skip} | {
            "control": labels[0] if len(labels) == 1 else labels} | (
            {"contrasts": [list(p) for p in pairs]} if pairs else {})


def defaults() -> dict:
    """Every option's default, by its Python name (required options are left out)."""
    out = {}
    for f in fields(Options):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _is_real(value) -> bool:
    """A number (int, float or numpy scalar), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _whole(name: str, value) -> int:
    """`value` of option `name` as an int, refused unless it is a whole number >= 1."""
    if not (_is_real(value) and math.isfinite(value) and value == int(value) and value >= 1):
        raise InputError(f"--{name.replace('_', '-')} / {name}={value!r}: give a whole number "
                         "of at least 1")
    return int(value)
