"""The local runner: executes a list of steps (steps/base.py) in this process, saving every
output in the workspace, so that --resume skips what is saved.

Consecutive block steps run block by block (a block's counts are ordered once for all of
them, and what a step writes is handed to the next in memory); a comparison step runs
chunk by chunk over all genes, reading its inputs from every block. Workspace entries are
STEP.BLOCK (e.g. initial.00003) and STEP.FIRST_ROW (trend.0000000).
"""

from __future__ import annotations

import time

import numpy as np

from ..io import summaries
from ..io.workspace import Workspace
from ..steps.base import BLOCK, DISPERSIONS, Step
from ..steps.context import Context


class Blocks:
    """Gene blocks of the store, loaded (and ordered) on demand; the last one is kept so
    that a screen held in one block is not rebuilt by later steps."""

    def __init__(self, store, ranges, cell_group, at):
        self.store, self.ranges, self.cell_group, self.at = store, ranges, cell_group, at
        self._last = (None, None)

    def __len__(self) -> int:
        return len(self.ranges)

    def genes(self, i: int) -> slice:
        s0, s1 = self.ranges[i]
        return slice(int(self.store.bounds[s0]), int(self.store.bounds[s1]))

    def get(self, i: int) -> summaries.GeneBlock:
        if self._last[0] != i:
            self._last = (None, None)
            self._last = (i, summaries.build_block(self.store, *self.ranges[i],
                                                   self.cell_group, self.at))
        return self._last[1]


class Runner:
    """Runs `steps` over `blocks` with context `cx`, comparison steps `chunk` comparisons at
    a time, in workspace `ws` under entry names starting with `prefix`; `progress(stage,
    done, total, unit)` is told of each step of each block or chunk."""

    def __init__(self, steps: list[Step], ws: Workspace, blocks: Blocks, cx: Context,
                 chunk: int, progress=None, prefix: str = "", stage: str = "fitting"):
        self.steps, self.ws, self.blocks, self.cx = steps, ws, blocks, cx
        self.chunk, self.progress = chunk, progress
        self.prefix, self.stage = prefix, stage
        self.producer = {key: s for s in steps for key in s.writes}
        self.per_dispersion = {key for s in steps for key in s.per_dispersion}

    def n_rows(self, step: Step) -> int:
        return (self.cx.dcomps if step.rows == DISPERSIONS else self.cx.comps).size

    def _entry(self, step: Step, i: int) -> str:
        return (f"{self.prefix}{step.name}.{i:05d}" if step.scope == BLOCK
                else f"{self.prefix}{step.name}.{i:07d}")

    def _chunks(self, step: Step) -> list[tuple[int, int]]:
        n = self.n_rows(step)
        return [(c0, min(c0 + self.chunk, n)) for c0 in range(0, n, self.chunk)]

    def _phases(self) -> list[list[Step]]:
        """The steps as run: consecutive block steps together, a comparison step alone."""
        phases: list[list[Step]] = []
        for s in self.steps:
            if phases and s.scope == BLOCK and phases[-1][0].scope == BLOCK:
                phases[-1].append(s)
            else:
                phases.append([s])
        return phases

    def count(self) -> int:
        """The units of work `run` reports: a step of a block, or a chunk of comparisons."""
        return sum(len(self.blocks) * len(p) if p[0].scope == BLOCK
                   else len(self._chunks(p[0])) for p in self._phases())

    def run(self, timings: dict, done: int = 0, total: int | None = None) -> None:
        """Every step, in order, skipping what the workspace holds; progress counts from
        `done` of `total` (several runners may share one stage of progress)."""
        total = self.count() if total is None else total
        if self.progress and done == 0:
            self.progress(self.stage, 0, total, "steps")
        for phase in self._phases():
            t0 = time.perf_counter()
            if phase[0].scope == BLOCK:
                for i in range(len(self.blocks)):
                    done += self._run_block(phase, i, done, total)
            else:
                done += self._run_comparisons(phase[0], done, total)
            key = "+".join(s.name for s in phase)
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0

    def _tick(self, done: int, total: int) -> None:
        if self.progress:
            self.progress(self.stage, done, total, "steps")

    def _run_block(self, phase: list[Step], i: int, done: int, total: int) -> int:
        kept: dict[str, np.ndarray] = {}       # this block's outputs of earlier steps
        for n, step in enumerate(phase):
            name = self._entry(step, i)
            if not self.ws.has(name):
                inputs = {k: self._repeated(k, step, kept[k] if k in kept
                                            else self.block_input(k, i))
                          for k in step.reads}
                out = step.run(self.blocks.get(i), inputs, self.cx)
                self.ws.save_arrays(name, **out)
                kept.update(out)
            self._tick(done + n + 1, total)
        return len(phase)

    def _run_comparisons(self, step: Step, done: int, total: int) -> int:
        chunks = self._chunks(step)
        for n, (c0, c1) in enumerate(chunks):
            name = self._entry(step, c0)
            if not self.ws.has(name):
                rows = slice(c0, c1)
                inputs = {k: self.rows_input(k, rows) for k in step.reads}
                self.ws.save_arrays(name, **step.run(inputs, self.cx, rows))
            self._tick(done + n + 1, total)
        return len(chunks)

    def _repeated(self, key: str, step: Step, arr: np.ndarray) -> np.ndarray:
        """`arr` with its single row repeated for every test, when `key` has one row per
        dispersion comparison, one dispersion serves them all, and `step` runs over tests."""
        if key in self.per_dispersion and self.cx.shared and step.rows != DISPERSIONS:
            return np.repeat(arr[:1], self.cx.comps.size, axis=0)
        return arr

    def block_input(self, key: str, i: int) -> np.ndarray:
        """Array `key` over block i's genes: a block step's output as saved, a comparison
        step's per-pair output cut to the block's genes, or its per-comparison vector."""
        step = self.producer[key]
        if step.scope == BLOCK:
            return self.ws.load(self._entry(step, i), key)
        names = [self._entry(step, c0) for c0, _ in self._chunks(step)]
        if len(self.ws.shape(names[0], key)) == 1:
            return np.concatenate([self.ws.load(n, key) for n in names])
        # only the block's columns are read (a memory map): a chunk's whole array is
        # comparisons x all genes, too large to load once per block on a genome-wide screen
        genes = self.blocks.genes(i)
        return np.concatenate([self.ws.load(n, key, cols=genes) for n in names], axis=0)

    def rows_input(self, key: str, rows: slice) -> np.ndarray:
        """Array `key` for comparisons `rows` over all genes (a per-gene vector whole). A
        per-dispersion array read for tests while one dispersion serves every comparison has
        one row, repeated."""
        step = self.producer[key]
        n = rows.stop - rows.start
        shared = key in self.per_dispersion and self.cx.shared
        if shared:
            rows = slice(0, 1)
        if step.scope == BLOCK:
            if len(self.ws.shape(self._entry(step, 0), key)) == 1:
                return np.concatenate([self.ws.load(self._entry(step, i), key)
                                       for i in range(len(self.blocks))])
            out = np.concatenate([self.ws.load(self._entry(step, i), key, rows)
                                  for i in range(len(self.blocks))], axis=1)
        else:
            out = np.concatenate(
                [self.ws.load(self._entry(step, c0), key,
                              slice(max(rows.start, c0) - c0, min(rows.stop, c1) - c0))
                 for c0, c1 in self._chunks(step) if c0 < rows.stop and c1 > rows.start],
                axis=0)
        return np.repeat(out, n, axis=0) if shared and out.shape[0] == 1 else out
