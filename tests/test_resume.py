"""--resume after a kill -9 at any point, a damaged checkpoint, a full disk, or an input
changed in place. Runs go through the command line in child processes that kill themselves
at a chosen call (tests/killpoints.py), with the counts spilled to OUT.partial. A resumed
run must give the table an uninterrupted run gives, bit for bit (every per-gene computation
runs the same operations in the same order however the run was split, see test_scale.py),
or refuse."""

import os

import h5py
import numpy as np
import pandas as pd
import pytest
from killpoints import killed, run_killed

from perturbglm import pipeline, simulate

SPILL = ("from perturbglm.io import memory\nfrom perturbglm.io import scan\n"
         "memory.RECORD_BYTES, memory.BLOCK_BYTES = 10**9, 10**6\n"    # spill; 5 gene blocks
         "memory.MIN_CHUNK_NNZ, memory.MIN_CHUNK_PER_GENE = 1, 0\n")    # chunks as asked
CHECKPOINT_EVERY_CHUNK = "scan.CHECKPOINT_SECONDS = 0.0\n"
NEVER = ("perturbglm.io.summaries:Store.add", 10**9)       # a kill point that is not reached
FINAL = "perturbglm.steps.dispersion:final_dispersions"     # a kill point late in the run
N_CHUNKS = 8                                            # 3,000 cells read 400 at a time


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("resume") / "screen.h5ad")
    simulate.simulate(3_000, 300, 8, seed=11)[0].write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def reference(screen, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    opts = pipeline.Options(groupby="perturbation", control=simulate.CONTROL)
    pipeline.run(screen, opts, str(out))
    return pd.read_parquet(out / "results.parquet")


def argv(screen, out):
    return ["de", screen, "--groupby", "perturbation", "--control", simulate.CONTROL,
            "--out", str(out), "--quiet", "--chunk-cells", "400"]


def assert_identical(out, reference):
    table = pd.read_parquet(os.path.join(out, "results.parquet"))
    assert table["log2fc"].notna().sum() > 0.5 * len(table)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)
    assert not os.path.exists(str(out) + ".partial")


def kill(screen, out, target, nth, when="after", setup=SPILL):
    proc = run_killed(argv(screen, out), target, nth, when, setup)
    assert killed(proc), proc.stderr
    assert os.path.isdir(str(out) + ".partial") and not os.path.exists(out)


def resume(screen, out, setup=SPILL):
    """--resume to completion (spilled, as the interrupted run was: the plan is kept)."""
    proc = run_killed(argv(screen, out) + ["--resume"], *NEVER, setup=setup)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("nth", [1, 2, 5])
def test_kill_while_reading_before_any_checkpoint(screen, reference, tmp_path, nth):
    """Spill files hold records that no checkpoint covers: they are emptied and the read
    pass starts again (appending to them made every later --resume crash)."""
    out = tmp_path / "o"
    kill(screen, out, "perturbglm.io.summaries:Store.add", nth)
    assert not os.path.exists(os.path.join(str(out) + ".partial", "scan"))
    resume(screen, out)
    assert_identical(out, reference)


def test_kill_while_reading_after_checkpoints(screen, reference, tmp_path):
    out = tmp_path / "o"
    kill(screen, out, "perturbglm.io.summaries:Store.add", 5,
         setup=SPILL + CHECKPOINT_EVERY_CHUNK)
    position = np.load(os.path.join(str(out) + ".partial", "scan", "position.npy"))
    assert position[0] == 1600                           # 4 chunks checkpointed, 5th past
    resume(screen, out, SPILL + CHECKPOINT_EVERY_CHUNK)
    assert_identical(out, reference)


def test_kill_while_a_checkpoint_replaces_the_last(screen, reference, tmp_path):
    """Killed between removing the old checkpoint and renaming the new one into place (the
    5th os.replace: fingerprint, plan, checkpoints 1 and 2, then the 3rd): no checkpoint is
    left but three chunks are spilled."""
    out = tmp_path / "o"
    kill(screen, out, "os:replace", 5, when="before", setup=SPILL + CHECKPOINT_EVERY_CHUNK)
    partial = str(out) + ".partial"
    assert not os.path.exists(os.path.join(partial, "scan"))
    assert os.path.getsize(os.path.join(partial, "store", "slab00000.rec")) > 0
    resume(screen, out)
    assert_identical(out, reference)


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_after_the_results_are_in_place(screen, reference, tmp_path, when):
    """Killed after the results were swapped into OUT, before (or while) the workspace was
    removed: --resume recognises OUT as that workspace's results (its marker names the
    workspace's fingerprint, which goes last), assembles the same table again and replaces
    them; without --resume OUT is not touched."""
    out = tmp_path / "o"
    proc = run_killed(argv(screen, out), "perturbglm.io.workspace:Workspace.discard", 1,
                      when, SPILL)
    assert killed(proc), proc.stderr
    assert os.path.isdir(str(out) + ".partial")
    before = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(before, reference, check_exact=True)
    again = run_killed(argv(screen, out), *NEVER, setup=SPILL)
    assert again.returncode == 2 and "exists" in again.stderr
    other = run_killed(argv(screen, out) + ["--resume", "--fdr", "0.05"], *NEVER, setup=SPILL)
    assert other.returncode == 2 and "results of another run" in other.stderr
    done = resume(screen, out)
    assert ("nothing to resume" in done.stderr) == (when == "after")
    assert_identical(out, reference)


def test_spill_file_shorter_than_its_checkpoint(screen, reference, tmp_path):
    """A spill file that lost its tail (written but not on disk when the machine went down)
    cannot be continued from: the read pass starts again from the first cell."""
    out = tmp_path / "o"
    kill(screen, out, "perturbglm.io.summaries:Store.add", 4,
         setup=SPILL + CHECKPOINT_EVERY_CHUNK)
    rec = os.path.join(str(out) + ".partial", "store", "slab00002.rec")
    os.truncate(rec, os.path.getsize(rec) // 2)
    proc = resume(screen, out, SPILL + CHECKPOINT_EVERY_CHUNK)
    assert "reading the file again from the first cell" in proc.stderr
    assert_identical(out, reference)


def _truncate(path):
    os.truncate(path, os.path.getsize(path) - 8)


def _flip_last_byte(path):
    with open(path, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        byte = fh.read(1)[0]
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([byte ^ 0x10]))


def _invalid_json(path):
    with open(path, "w") as fh:
        fh.write('{"ranges": [[0, 1], [1')


DAMAGE = {
    "truncated npy": ("gene_dispersions.00001/disp_gene.npy", _truncate),
    "flipped byte": ("lfc.00000/lfc.npy", _flip_last_byte),     # still loads: values change
    "missing file": ("trend.0000000/disp_trend.npy", os.remove),
    "invalid blocks json": ("blocks.json", _invalid_json),
    "invalid plan json": ("plan.json", _invalid_json),
    "flipped byte in plan": ("plan.json", lambda p: _replace_in(p, '"in_memory": false',
                                                                '"in_memory": true')),
    "invalid read checkpoint": ("scan/manifest.json", _invalid_json),
}


def _replace_in(path, old, new):
    with open(path) as fh:
        text = fh.read()
    assert old in text
    with open(path, "w") as fh:
        fh.write(text.replace(old, new))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_step_is_computed_again(screen, reference, tmp_path, damage):
    """Killed in the final dispersions (2 of 5 blocks done), a saved step damaged, then
    --resume: the step is noted, removed and computed again; the table is unchanged."""
    out = tmp_path / "o"
    kill(screen, out, FINAL, 3, when="before")
    name, harm = DAMAGE[damage]
    harm(os.path.join(str(out) + ".partial", name))
    proc = resume(screen, out)
    assert "perturbglm: warning:" in proc.stderr and "Traceback" not in proc.stderr
    assert_identical(out, reference)


def test_damaged_fingerprint_starts_again(screen, reference, tmp_path):
    out = tmp_path / "o"
    kill(screen, out, FINAL, 2, when="before")
    _invalid_json(os.path.join(str(out) + ".partial", "fingerprint.json"))
    proc = resume(screen, out)
    assert "cannot be continued; starting it again" in proc.stderr
    assert_identical(out, reference)


@pytest.mark.parametrize("hashed", ["whole", "sampled"])
def test_counts_changed_in_place_are_refused(screen, tmp_path, hashed):
    """The counts rewritten in place (doubled) with the file's size and modification time
    restored: the content hash tells the runs apart, whether it reads this small screen's
    datasets whole or, as for a large screen, samples their stored bytes."""
    path = str(tmp_path / "copy.h5ad")
    with open(screen, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    out = tmp_path / "o"
    setup = ("from perturbglm.io import workspace\nworkspace.WHOLE_BYTES = 0\n"
             * (hashed == "sampled"))
    kill(path, out, FINAL, 2, when="before", setup=SPILL + setup)
    before = os.stat(path)
    with h5py.File(path, "r+") as f:
        f["X/data"][...] = 2 * f["X/data"][...]
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    proc = run_killed(argv(path, out) + ["--resume"], *NEVER, setup=SPILL + setup)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "belongs to a run with a different input" in proc.stderr


FULL_WHILE_SPILLING = SPILL + """
import errno
from perturbglm.io import summaries
room = [150_000]          # bytes the disk takes before it is full

class FillingFile:
    '''A spill file on a disk with `room` bytes left: a write past them is cut short and
    raises ENOSPC, as a real one does.'''
    def __init__(self, path, mode):
        self.fh = open(path, mode)
    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > room[0]:
            self.fh.write(data[:room[0]])
            self.fh.flush()
            room[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        room[0] -= len(data)
        return self.fh.write(data)
    def __getattr__(self, name):
        return getattr(self.fh, name)

summaries.open = FillingFile
"""

FULL_IN_FIRST_STEPS = SPILL + """
import errno
from perturbglm.io import workspace
write_npy, npy_writes = workspace._write_npy, [0]     # (killpoints' names: real, calls)

def filling(fh, arr):
    npy_writes[0] += 1
    if npy_writes[0] == 20:  # an array of the 2nd stage-A step (after the read checkpoint)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write_npy(fh, arr)

workspace._write_npy = filling
"""


@pytest.mark.parametrize("where", ["spilling", "first steps"])
def test_disk_full_then_resume(screen, reference, tmp_path, where):
    out = tmp_path / "o"
    setup = FULL_WHILE_SPILLING if where == "spilling" else FULL_IN_FIRST_STEPS
    proc = run_killed(argv(screen, out), *NEVER, setup=setup)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert line.splitlines() == [line]
    partial = str(out) + ".partial"
    assert line.startswith(f"perturbglm: error: the disk holding '{partial}' is full")
    assert "MB free there" in line and "--resume" in line
    assert os.path.isdir(partial) and not os.path.exists(out)
    resume(screen, out)            # space freed
    assert_identical(out, reference)



@pytest.fixture(scope="module")
def shrunk_reference(screen, tmp_path_factory):
    out = tmp_path_factory.mktemp("shrunk") / "out"
    opts = pipeline.Options(groupby="perturbation", control=simulate.CONTROL, shrink="apeglm")
    pipeline.run(screen, opts, str(out))
    return pd.read_parquet(out / "results.parquet")


@pytest.mark.parametrize("target,nth", [
    ("perturbglm.steps.cooks:max_cooks", 3),          # Cook's, third of five gene blocks
    ("perturbglm.steps.shrink:prior_scale", 1),       # apeGLM's prior scale (across genes)
    ("perturbglm.steps.shrink:shrink", 3),            # apeGLM, third of five gene blocks
])
def test_kill_in_an_optional_statistic_then_resume(screen, shrunk_reference, tmp_path,
                                                   target, nth):
    """Killed (kill -9) in Cook's or apeGLM's steps, --resume gives the uninterrupted run's
    table, their columns included, bit for bit."""
    out = tmp_path / "o"
    shrink = ["--shrink", "apeglm"]
    proc = run_killed(argv(screen, out) + shrink, target, nth, "before", SPILL)
    assert killed(proc), proc.stderr
    proc = run_killed(argv(screen, out) + shrink + ["--resume"], *NEVER, setup=SPILL)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(os.path.join(out, "results.parquet"))
    assert table["log2fc_shrunk"].notna().sum() > 0.5 * len(table)
    assert table["max_cooks"].notna().sum() > 0.5 * len(table)
    pd.testing.assert_frame_equal(table, shrunk_reference, check_exact=True)
