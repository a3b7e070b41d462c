"""The memory budget: a run under the smallest budget the plan accepts stays under it (peak
RSS of the command in its own process), a smaller budget is refused naming that smallest
budget, and tiny read chunks are coalesced so that --chunk-cells 1 is not a slow path."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from perturbglm import pipeline, simulate
from perturbglm.io import memory, summaries


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mem") / "s.h5ad")
    simulate.write(path, 20_000, 1_000, 50, seed=3)
    return path


PEAK = """
import sys
from perturbglm import cli
from perturbglm.io import memory
code = cli.main(sys.argv[1:])
print(memory.resident(), file=sys.stderr)
sys.exit(code)
"""


def _cli(screen, out, *extra):
    """Run `perturbglm de` in its own process: (exit status, its error line or "", peak RSS
    in bytes). The peak is the child's VmHWM (memory.resident): getrusage's maxrss of a
    child includes the peak of this (large) pytest process that forked it."""
    cmd = [sys.executable, "-c", PEAK, "de", screen, "--groupby", "perturbation",
           "--control", simulate.CONTROL, "--out", str(out), "--quiet", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    *err, peak = proc.stderr.splitlines()
    return proc.returncode, "".join(line + "\n" for line in err), int(peak)


def _smallest(screen, tmp_path) -> int:
    """The budget a too-small one's refusal names, in MiB; checks it is a clean refusal."""
    code, err, _ = _cli(screen, tmp_path / "refused", "--max-memory", "20M")
    assert code == 2 and err.startswith("perturbglm: error: --max-memory"), err
    assert "too small" in err and err.count("\n") == 1, err
    assert not os.listdir(tmp_path), "a refused run wrote something"
    size, unit = re.search(r"give at least ([0-9.]+)([MG])", err).groups()
    return math.ceil(float(size) * (1024 if unit == "G" else 1))


def test_smallest_accepted_budgets_hold(screen, tmp_path):
    """Peak RSS at or under the budget, no tolerance: the budget is a promise, and the plan
    reserves measured amounts with room to spare for what it cannot measure in advance
    (memory.KERNEL_BYTES, WRITER_BYTES). At the smallest budget the counts are spilled; 96
    MiB more keeps them in memory. A first run in a fresh source tree compiles the kernels,
    which the plan counts (COMPILE_BYTES): the smallest budget is then larger, and holds."""
    smallest = _smallest(screen, tmp_path)
    plans = set()
    for mib in (smallest, smallest + 96):
        out = tmp_path / f"out{mib}"
        code, err, peak = _cli(screen, out, "--max-memory", f"{mib}M")
        assert code == 0, err
        assert peak <= mib * 2**20, f"peak {peak / 2**20:.0f} MiB over --max-memory {mib}M"
        with open(out / "run.json") as fh:
            plans.add(json.load(fh)["memory"]["counts_in_memory"])
    assert plans == {False, True}


def test_a_budget_below_the_smallest_is_refused(screen, tmp_path):
    smallest = _smallest(screen, tmp_path)
    code, err, _ = _cli(screen, tmp_path / "o", "--max-memory", f"{smallest - 32}M")
    assert code == 2 and "too small" in err and f"give at least {smallest}M" in err
    assert not os.listdir(tmp_path)


def test_tiny_chunks_are_read_in_chunks_of_the_least_size(screen, tmp_path, monkeypatch):
    """--chunk-cells 1 asks for 20,000 chunks; every chunk but the last holds at least
    memory.min_chunk_nnz stored values instead (each chunk costs a fixed time and 8 bytes a
    gene in the count store). The tables do not depend on chunking (test_scale.py)."""
    sizes = []
    real = summaries.Store.add

    def add(self, ptr, *args):
        sizes.append(int(ptr[-1] - ptr[0]))
        return real(self, ptr, *args)
    monkeypatch.setattr(summaries.Store, "add", add)
    opts = pipeline.Options(groupby="perturbation", control=simulate.CONTROL, chunk_cells=1)
    pipeline.run(screen, opts, str(tmp_path / "o"))
    least = memory.min_chunk_nnz(1_000)
    assert len(sizes) > 1
    assert min(sizes[:-1]) >= least and np.sum(sizes) == sum(sizes)
    assert len(sizes) <= sum(sizes) // least + 1
