"""What every step of every block shares: the design, the options, the size-factor atoms,
the comparisons and the bounds of the dispersion searches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..design import Design
from ..io.summaries import Atoms
from ..nb import cooks, stages, trend
from ..options import Options

ALPHA_INIT = 0.5     # dispersion at which the initial means are fitted (DESeq2's alphaInit)
MIN_DISP = trend.MIN_DISP


@dataclass
class Context:
    des: Design
    opts: Options
    atoms: Atoms
    comps: np.ndarray        # tested groups (in label order against the control)
    dcomps: np.ndarray       # dispersion comparisons, as the kernels take them: comps, or
                             # [-1] (all groups together) when the dispersion is shared
    m_cells: np.ndarray      # cells behind each dispersion comparison
    n_coef: int              # coefficients of a dispersion comparison's design
    lo: float
    theta_lo: float
    n_prof: int
    n_wald: int

    @property
    def shared(self) -> bool:
        """One dispersion per gene for every comparison (dispersion="global")."""
        return self.opts.dispersion == "global"

    @property
    def max_disp(self) -> np.ndarray:
        """DESeq2's upper bound on a comparison's dispersion: max(10, its cells)."""
        return np.maximum(10.0, self.m_cells)

    @property
    def hi(self) -> np.ndarray:
        return np.log(self.max_disp)

    @property
    def search(self) -> stages.Search:
        return stages.Search(self.lo, self.hi, self.theta_lo, float(self.opts.min_mu),
                             self.des.control)

    @cached_property
    def strata(self) -> cooks.Layout:
        """The design's strata (a group and a covariate row) of every cell, shared by all
        genes (made once: it sorts every cell)."""
        return cooks.layout(self.atoms)

    def without_covariates(self, table: np.ndarray) -> np.ndarray | None:
        """A table the kernels take only without covariates (the control's MLE table); None
        with them, which selects the joint Wald fit."""
        return None if self.des.covariates.shape[1] else table


def context(des: Design, opts: Options, at: Atoms, comps=None) -> Context:
    """The Context of an analysis of design `des` on atoms `at`: its groups `comps` (every
    perturbation by default) each against group `des.control` (the control, or a contrast's
    reference, `Design.with_reference`)."""
    comps = np.array(des.perturbations if comps is None else comps, dtype=np.int64)
    n_total = at.group_n.sum()
    cells_cmp = at.group_n[des.control] + at.group_n[comps]
    lo = math.log(MIN_DISP / 10)
    theta_lo = lo - 0.5
    theta_hi = math.log(max(10.0, n_total)) + 0.5
    q = des.covariates.shape[1]
    glob = opts.dispersion == "global"
    return Context(
        des=des, opts=opts, atoms=at, comps=comps,
        dcomps=np.array([-1], dtype=np.int64) if glob else comps,
        m_cells=np.array([n_total]) if glob else cells_cmp,
        n_coef=(des.n_groups + q) if glob else (2 + q), lo=lo, theta_lo=theta_lo,
        n_prof=int(math.ceil((theta_hi - theta_lo) / stages.PROFILE_STEP)) + 1,
        n_wald=int(math.ceil((theta_hi - theta_lo) / stages.WALD_STEP)) + 1)
