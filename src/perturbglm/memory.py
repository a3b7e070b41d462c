"""The memory budget (--max-memory) and how it is spent.

What is already resident when planning starts (interpreter, compiled kernels, obs) is
measured, per-cell arrays are reserved, and the rest sets: the read chunk, whether the
non-zero counts stay in memory or are spilled to disk, how many of them a gene block holds,
and how many comparisons are gathered at a time when the table is assembled. Memory the
work cannot use is left free: read chunks and gene blocks have a ceiling.
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass

from .errors import InputError

DEFAULT = "4G"
RECORD_BYTES = 8        # a stored non-zero (summaries.RECORD)
BLOCK_BYTES = 12        # a non-zero of a gene block being fitted: its ordered copy, slack
MAX_BLOCK_NNZ = 8_000_000   # larger gene blocks fit no faster (BENCHMARKS.md)
CHUNK_BYTES = 64        # a non-zero of a read chunk: value and index as read (twice: the next
                        # chunk is read ahead, reader.read_ahead), its record, slack
CELL_BYTES = 96         # per-cell arrays: totals, group, size factor, offsets, obs codes
PAIR_BYTES = 160        # per (gene, comparison) of a block: ~20 float64 statistics
ROW_BYTES = 400         # per output row while a comparison chunk is assembled and written


def parse(text: str | int | None) -> int:
    """'4G', '512M', '1.5GB', or a number of bytes."""
    if text is None:
        text = DEFAULT
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", str(text))
    if not m:
        raise InputError(f"--max-memory '{text}': give a size such as 4G, 1500M or 0.5T")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def resident() -> int:
    """Peak resident memory of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Plan:
    budget: int
    available: int
    chunk_nnz: int          # non-zeros per read chunk
    in_memory: bool         # keep the non-zero counts in memory (else spill them)
    block_nnz: int          # non-zeros per gene block
    comps_chunk: int        # comparisons gathered at a time for the trend and the table

    def chunk_cells(self, n_cells: int, nnz: int) -> int:
        return max(1, int(self.chunk_nnz * n_cells / max(nnz, 1)))

    def block_genes(self, n_comps: int) -> int:
        return max(1, int(self.available * 0.25 / (PAIR_BYTES * max(n_comps, 1))))


def plan(budget: int, n_cells: int, n_genes: int, nnz: int, n_comps: int) -> Plan:
    """nnz: stored non-zeros of the matrix (an upper bound on what is kept)."""
    base = resident()
    avail = budget - base - CELL_BYTES * n_cells
    floor = 64 * 2**20 + PAIR_BYTES * n_comps * 64
    if avail < floor:
        need = (budget - avail + floor) / 2**30
        raise InputError(f"--max-memory {budget / 2**30:.2f} GiB is too small for this screen "
                         f"({n_cells:,} cells, {n_comps:,} comparisons): give at least "
                         f"{need:.2f}G")
    chunk_nnz = int(min(max(avail / 8 / CHUNK_BYTES, 100_000), 8_000_000))
    in_memory = nnz * RECORD_BYTES + min(nnz, MAX_BLOCK_NNZ) * BLOCK_BYTES <= 0.6 * avail
    kept = nnz * RECORD_BYTES if in_memory else 0
    room = int((0.6 * avail - kept) / BLOCK_BYTES)
    # Stage B orders a block again unless it is the only one: a screen is one block when
    # there is room for it; otherwise blocks stop where they stop paying.
    block_nnz = nnz if room >= nnz else min(room, MAX_BLOCK_NNZ)
    comps_chunk = max(1, int(0.25 * avail / (ROW_BYTES * max(n_genes, 1))))
    return Plan(budget, int(avail), chunk_nnz, in_memory, max(block_nnz, 1), comps_chunk)
