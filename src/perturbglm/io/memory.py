"""The memory budget (--max-memory) and how it is spent.

What is already resident when planning starts (interpreter, libraries, obs) is measured;
what a run loads only later is reserved: numba's runtime and the compiled kernels (loaded
from numba's on-disk cache, or compiled on a first run, which takes several times more),
pyarrow and its parquet writer, and the per-cell arrays. The rest sets: the read chunk,
whether the non-zero counts stay in memory or are spilled to disk, how many of them a gene
block holds, and how many comparisons are gathered at a time when the table is assembled.
Memory the work cannot use is left free: read chunks and gene blocks have a ceiling.
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

DEFAULT = "4G"
RECORD_BYTES = 8        # a stored non-zero (summaries.RECORD)
BLOCK_BYTES = 13        # a non-zero of a gene block being fitted: its ordered copy, slack,
                        # the Cook's candidate mark (nb/cooks.control_summaries)
MAX_BLOCK_NNZ = 8_000_000   # larger gene blocks fit no faster (BENCHMARKS.md)
CHUNK_BYTES = 64        # a non-zero of a read chunk: value and index as read (twice: the next
                        # chunk is read ahead, reader.read_ahead), its record, slack
MIN_CHUNK_NNZ = 100_000     # stored values a read chunk holds, at least ...
MIN_CHUNK_PER_GENE = 16     # ... and per gene (see min_chunk_nnz)
CELL_BYTES = 120        # per-cell arrays: totals, group, size factor, offsets, obs codes,
                        # Cook's strata (nb/cooks.Layout: stratum, place, sorted log size)
PAIR_BYTES = 256        # per (gene, comparison) of a block: ~32 float64 statistics (the
                        # initial fit's, dispersions, the Wald fit's coefficients, Cook's,
                        # shrinkage, and the kernels' working copies)
ROW_BYTES = 400         # per output row while a comparison chunk is assembled and written
# Loaded after planning, measured as peak RSS growth over the run of a 300-cell screen
# (numba 0.68, pyarrow 26, 2 threads), with room for other versions:
KERNEL_BYTES = 112 * 2**20     # numba's runtime and the kernels loaded from its cache: 79 MiB
COMPILE_BYTES = 640 * 2**20    # ... compiled instead (the cache lacks them): 530 MiB
WRITER_BYTES = 64 * 2**20      # pyarrow and its parquet writer (zstd): 50 MiB


def min_chunk_nnz(n_genes: int) -> int:
    """The fewest stored values a read chunk holds (but the last), whatever --chunk-cells
    asks: every chunk costs a fixed time (two HDF5 reads, a hand-over between threads,
    parallel compiled calls whose threads must all be scheduled, several ms each on a busy
    machine) and the count store keeps 8 bytes per gene of every chunk."""
    return max(MIN_CHUNK_NNZ, MIN_CHUNK_PER_GENE * n_genes)


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
    """Peak resident memory of this process so far, in bytes: Linux's VmHWM, which starts
    afresh when the program starts (getrusage's maxrss, used elsewhere, keeps the peak of
    the process that launched it, e.g. a large Python process that ran the command)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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


def _entry_kernels(covariates: bool, data_dtype, index_dtype, statistics) -> dict:
    """The compiled kernels a run calls from Python, each with the argument types that
    differ between runs (a run without covariates passes the control's MLE table to the
    Wald test where one with them passes None; the read pass takes the file's value and
    index types), and those of the optional statistics it runs ("cooks", "lrt",
    "apeglm")."""
    from numba import from_dtype, types

    from ..nb import cooks, lrt, shrink, special, stages, zero_terms
    from . import summaries

    wald = {"wald_table": (lambda t: isinstance(t, types.NoneType)) if covariates
            else (lambda t: not isinstance(t, types.NoneType))}
    optional = {
        "cooks": {cooks.control_summaries: {}, cooks.max_cooks: wald},
        "lrt": {lrt.lr_statistics: wald, lrt.chi_square_1_p: {}},
        "apeglm": {shrink.shrink_block: {}},
    }
    return {k: v for name in statistics for k, v in optional[name].items()} | {
        summaries._split: {"minor": lambda t: t.dtype == from_dtype(np.dtype(index_dtype)),
                           "data": lambda t: t.dtype == from_dtype(np.dtype(data_dtype))},
        summaries._records: {}, summaries._sort_part: {}, zero_terms.build: {},
        stages.normalised_sums: {}, stages.initial_fit: {}, stages.control_tables: {},
        stages.control_optimum: {}, stages.dispersions: {},
        stages.final_dispersions: {}, stages.wald: wald, special.two_sided_p: {},
    }


def _has_overload(signatures, params, checks) -> bool:
    return any(all(check(sig[params.index(name)]) for name, check in checks.items())
               for sig in signatures)


def kernel_bytes(covariates: bool, data_dtype, index_dtype, statistics=()) -> int:
    """Memory the run's compiled kernels will add: none if this process has them already,
    KERNEL_BYTES if numba's on-disk cache holds them (for this source and these argument
    types), else COMPILE_BYTES. statistics: the optional ones the run computes ("cooks",
    "lrt", "apeglm"). The cache's index is read through numba's internals; if it cannot be
    read the kernels count as compiled."""
    import inspect

    kernels = _entry_kernels(covariates, data_dtype, index_dtype, statistics)
    params = {k: list(inspect.signature(k.py_func).parameters) for k in kernels}
    if all(_has_overload(k.signatures, params[k], c) for k, c in kernels.items()):
        return 0
    try:
        cached = {k: [key[0] for key in k._cache._cache_file._load_index()] for k in kernels}
    except Exception:       # another numba version's internals
        return COMPILE_BYTES
    if all(_has_overload(cached[k], params[k], c) for k, c in kernels.items()):
        return KERNEL_BYTES
    return COMPILE_BYTES


def plan(budget: int, n_cells: int, n_genes: int, nnz: int, n_comps: int,
         kernels: int = KERNEL_BYTES) -> Plan:
    """nnz: stored non-zeros of the matrix (an upper bound on what is kept). kernels: what
    loading the compiled kernels will add (`kernel_bytes`)."""
    base = resident() + kernels + WRITER_BYTES
    avail = budget - base - CELL_BYTES * n_cells
    least = min_chunk_nnz(n_genes)
    floor = 64 * 2**20 + PAIR_BYTES * n_comps * 64 + CHUNK_BYTES * least
    if avail < floor:
        need = -(-(budget - avail + floor) // 2**25) * 32   # MiB, up to a multiple of 32
        first = " (this first run compiles the kernels)" if kernels == COMPILE_BYTES else ""
        raise InputError(f"--max-memory {budget / 2**20:,.0f}M is too small for this screen"
                         f"{first} ({n_cells:,} cells, {n_comps:,} comparisons): give at "
                         f"least {need}M")
    chunk_nnz = int(min(max(avail / 8 / CHUNK_BYTES, least), max(least, 8_000_000)))
    in_memory = nnz * RECORD_BYTES + min(nnz, MAX_BLOCK_NNZ) * BLOCK_BYTES <= 0.6 * avail
    kept = nnz * RECORD_BYTES if in_memory else 0
    room = int((0.6 * avail - kept) / BLOCK_BYTES)
    # Stage B orders a block again unless it is the only one: a screen is one block when
    # there is room for it; otherwise blocks stop where they stop paying.
    block_nnz = nnz if room >= nnz else min(room, MAX_BLOCK_NNZ)
    comps_chunk = max(1, int(0.25 * avail / (ROW_BYTES * max(n_genes, 1))))
    return Plan(budget, int(avail), chunk_nnz, in_memory, max(block_nnz, 1), comps_chunk)
