"""--out is safe: --overwrite replaces only a perturbglm results folder (never the input, the
current folder, a parent of either, or a folder holding anyone else's files), the swap of
the new results into place survives a kill -9 at every step, one run at a time per --out
(an flock in OUT.partial), results folders follow the umask, and the messages after an
interruption advise --resume only when it was not given."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from killpoints import killed, run_cli, run_killed
from test_refusals import BASE, snapshot, write_screen

from perturbglm.cli import main
from perturbglm.errors import InputError
from perturbglm.io import outdir
from perturbglm.result import Result
from perturbglm.steps import dispersion

NEW, OLD = ".out.perturbglm-new", ".out.perturbglm-old"
FINAL = "perturbglm.steps.dispersion:final_dispersions"     # a kill point late in the run


@pytest.fixture
def screen(tmp_path) -> str:
    return write_screen(tmp_path / "screen.h5ad")


def de(screen_path, out, *extra) -> list[str]:
    return ["de", str(screen_path), *BASE, "--out", str(out), "--quiet", *extra]


def results(tmp_path, screen_path, fdr: str = "0.1", name: str = "out"):
    """A real results folder at tmp_path/NAME, written with --fdr FDR (to tell runs apart)."""
    assert main(de(screen_path, tmp_path / name, "--fdr", fdr)) == 0
    return tmp_path / name


def fdr_of(folder) -> float:
    with open(os.path.join(folder, "run.json")) as fh:
        return json.load(fh)["parameters"]["fdr"]


def refused(capsys, root, argv, *needles) -> str:
    """`perturbglm ARGV` is a one-line refusal (exit 2) that changed nothing under ROOT."""
    before = snapshot(root)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("perturbglm: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert snapshot(root) == before, "files appeared, vanished or changed"
    return err


# ---------------------------------------------------------------- what --overwrite replaces

def test_out_is_the_input(tmp_path, capsys, screen):
    refused(capsys, tmp_path, de(screen, screen, "--overwrite"), "is the input file")


def test_out_holds_the_input_and_notes(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    path = write_screen(proj / "screen.h5ad")
    (proj / "notes.txt").write_text("my notes\n")
    refused(capsys, tmp_path, de(path, proj, "--overwrite"), "holds the input file")


def test_out_is_the_current_folder(tmp_path, capsys, screen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "./", str(tmp_path)):
        refused(capsys, tmp_path, de(screen, out, "--overwrite"), "the current folder")
    assert not os.path.exists(tmp_path / "..partial")


def test_out_is_a_parent_of_the_input_or_the_current_folder(tmp_path, capsys, monkeypatch):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    path = write_screen(deep / "screen.h5ad")
    refused(capsys, tmp_path, de(path, tmp_path / "a", "--overwrite"), "holds the input file")
    monkeypatch.chdir(deep)
    refused(capsys, tmp_path, de("screen.h5ad", "..", "--overwrite"), "the current folder")


def test_folder_without_marker_refused(tmp_path, capsys, screen):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("a,b\n")
    refused(capsys, tmp_path, de(screen, out, "--overwrite"),
            "not a perturbglm results folder", "data.csv", "move those files away")


def test_results_folder_with_a_user_file_refused(tmp_path, capsys, screen):
    out = results(tmp_path, screen)
    (out / "notes.txt").write_text("keep me\n")
    refused(capsys, tmp_path, de(screen, out, "--overwrite", "--fdr", "0.05"),
            "notes.txt", "which no perturbglm run wrote")
    assert fdr_of(out) == 0.1


def test_results_folder_replaced(tmp_path, capsys, screen):
    out = results(tmp_path, screen)
    assert main(de(screen, out, "--overwrite", "--fdr", "0.05")) == 0
    assert fdr_of(out) == 0.05
    with open(out / outdir.MARKER) as fh:
        marker = json.load(fh)
    assert marker["files"] == ["results.parquet", "run.json", "summary.csv"]
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


def test_results_folder_of_an_earlier_version_replaced(tmp_path, capsys, screen):
    """No marker, but exactly the three files an earlier version wrote: ours."""
    out = results(tmp_path, screen)
    os.unlink(out / outdir.MARKER)
    assert main(de(screen, out, "--overwrite", "--fdr", "0.05")) == 0
    assert fdr_of(out) == 0.05
    # the same three names, but run.json is not a run record: not ours
    os.unlink(out / outdir.MARKER)
    (out / "run.json").write_text("{}")
    refused(capsys, tmp_path, de(screen, out, "--overwrite"), "not a perturbglm results")


def test_file_or_link_at_out_refused(tmp_path, capsys, screen):
    """A file, or a link to a results folder (replacing it would swap the link, not the
    folder), is not replaced."""
    (tmp_path / "notes.txt").write_text("keep me\n")
    refused(capsys, tmp_path, de(screen, tmp_path / "notes.txt", "--overwrite"),
            "not a folder")
    os.symlink(results(tmp_path, screen), tmp_path / "link")
    refused(capsys, tmp_path, de(screen, tmp_path / "link", "--overwrite"), "not a folder")


def test_partial_that_is_not_a_workspace_refused(tmp_path, capsys, screen):
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("keep me\n")
    for extra in ([], ["--overwrite"], ["--resume"]):
        refused(capsys, tmp_path, de(screen, tmp_path / "out", *extra),
                "not a perturbglm workspace", "notes.txt")


def test_overwrite_empties_an_interrupted_workspace(tmp_path, capsys, screen, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(dispersion, "final_dispersions", _raise(KeyboardInterrupt))
        assert main(de(screen, out)) == 130
    assert os.path.exists(tmp_path / "out.partial" / "fingerprint.json")
    assert main(de(screen, out, "--overwrite")) == 0
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


def test_result_write_refuses_a_foreign_folder(tmp_path, screen):
    res = Result.read(str(results(tmp_path, screen)))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    with pytest.raises(InputError, match="not a perturbglm results folder"):
        res.write(str(mine), overwrite=True)
    assert os.listdir(mine) == ["notes.txt"]
    res.write(str(tmp_path / "copy"))
    res.write(str(tmp_path / "copy"), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["copy", "mine", "out", "screen.h5ad"]
    assert os.path.exists(tmp_path / "copy" / outdir.MARKER)


# ---------------------------------------------------------------- the swap, killed

FALLBACK = "import perturbglm.io.outdir as o; o._exchange = lambda a, b: False"

# (where the kill falls, swap used) -> what is at OUT afterwards
KILLS = {
    "before exchange": ("perturbglm.io.outdir:_exchange", 1, "before", "", "old"),
    "after exchange": ("perturbglm.io.outdir:_exchange", 1, "after", "", "new"),
    "fallback, before first rename": ("perturbglm.io.outdir:_move", 1, "before", FALLBACK, "old"),
    "fallback, between renames": ("perturbglm.io.outdir:_move", 1, "after", FALLBACK, None),
    "fallback, after second rename": ("perturbglm.io.outdir:_move", 2, "after", FALLBACK, "new"),
}


@pytest.mark.parametrize("case", list(KILLS))
def test_swap_killed(tmp_path, capsys, screen, case):
    """kill -9 at each step of the swap leaves the old (fdr 0.1) or the new (fdr 0.05)
    results at OUT; between the fallback's two renames the old ones sit at a fixed name and
    the next run puts them back. The next run on OUT removes every leftover."""
    target, nth, when, setup, at_out = KILLS[case]
    out = results(tmp_path, screen)
    proc = run_killed(de(screen, out, "--overwrite", "--fdr", "0.05"), target, nth, when,
                      setup)
    assert killed(proc), proc.stderr
    if at_out is None:
        assert not os.path.exists(out)
        assert fdr_of(tmp_path / OLD) == 0.1
        # the next run, even a refused one, restores the old results
        refused_rc = main(de(screen, out))
        assert refused_rc == 2 and "exists" in capsys.readouterr().err
        assert fdr_of(out) == 0.1
    else:
        assert fdr_of(out) == {"old": 0.1, "new": 0.05}[at_out]
        assert os.path.exists(tmp_path / NEW) or os.path.exists(tmp_path / OLD)
    assert main(de(screen, out, "--overwrite", "--fdr", "0.2")) == 0
    assert fdr_of(out) == 0.2
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


def test_killed_while_writing_the_results(tmp_path, screen):
    """Killed while the new folder is being written (no marker yet): the next run removes
    it."""
    out = tmp_path / "out"
    proc = run_killed(de(screen, out), "perturbglm.io.output:write_summary")
    assert killed(proc), proc.stderr
    assert not os.path.exists(out) and os.path.exists(tmp_path / NEW)
    assert main(de(screen, out, "--resume")) == 0
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


def test_fallback_swap_completes(tmp_path, screen, monkeypatch):
    out = results(tmp_path, screen)
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)
    assert main(de(screen, out, "--overwrite", "--fdr", "0.05")) == 0
    assert fdr_of(out) == 0.05
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("")
    (b / "y").write_text("")
    if not outdir._exchange(str(a), str(b)):
        pytest.skip("renameat2(RENAME_EXCHANGE) not available here")
    assert os.listdir(a) == ["y"] and os.listdir(b) == ["x"]


# ---------------------------------------------------------------- one run per --out

def test_second_run_refused_while_the_lock_is_held(tmp_path, capsys, screen):
    out = results(tmp_path, screen)
    with outdir.lock(str(out)):
        for extra in ([], ["--overwrite"], ["--resume"], ["--overwrite", "--resume"]):
            refused(capsys, tmp_path, de(screen, out, *extra, "--fdr", "0.05"),
                    f"pid {os.getpid()}", socket.gethostname(), "another perturbglm run")
    assert fdr_of(out) == 0.1
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


HOLDER = """
import sys
from perturbglm.io import outdir
with outdir.lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_second_run_refused_while_another_process_runs(tmp_path, screen):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        proc = run_cli(de(screen, out, "--overwrite"))
    finally:
        holder.communicate("")
    assert proc.returncode == 2, proc.stderr
    assert f"pid {holder.pid} on host {socket.gethostname()}" in proc.stderr
    assert not os.path.exists(out)
    assert holder.returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["screen.h5ad"]     # the holder cleaned up


def test_lock_held_through_the_whole_run(tmp_path, screen):
    """The lock file survives every step of a run (a step that emptied the workspace once
    removed it, letting a second run in): killed in the final dispersions, OUT.partial still
    holds it."""
    out = tmp_path / "out"
    proc = run_killed(de(screen, out), FINAL, 1, "before")
    assert killed(proc), proc.stderr
    with open(os.path.join(outdir.partial_path(str(out)), outdir.LOCK)) as fh:
        assert json.load(fh)["host"] == socket.gethostname()


def test_stale_lock_taken_over(tmp_path, screen):
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / outdir.LOCK).write_text(json.dumps({"pid": 2**22 + 1, "host": "gone"}))
    assert main(de(screen, tmp_path / "out")) == 0
    assert sorted(os.listdir(tmp_path)) == ["out", "screen.h5ad"]


def test_lock_file_removed_between_open_and_flock(tmp_path, monkeypatch):
    """The holder ends (removing OUT.partial) after we opened its lock file but before we
    locked it: we must not keep a lock on the removed file, but lock a new one."""
    import fcntl

    out = str(tmp_path / "out")
    partial = outdir.partial_path(out)
    path = os.path.join(partial, outdir.LOCK)
    real = fcntl.flock
    calls = []

    def holder_leaves_first(fd, op):
        if not calls and op & fcntl.LOCK_EX:
            os.unlink(path)
            os.rmdir(partial)
        calls.append(op)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", holder_leaves_first)
    with outdir.lock(out):
        monkeypatch.undo()
        assert len(calls) == 2
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not os.path.exists(partial)


# ---------------------------------------------------------------- permissions, messages

@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o027, 0o750)])
def test_results_folder_follows_the_umask(tmp_path, screen, umask, mode):
    before = os.umask(umask)
    try:
        assert main(de(screen, tmp_path / "out")) == 0
    finally:
        os.umask(before)
    assert os.stat(tmp_path / "out").st_mode & 0o777 == mode


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc,rc", [(KeyboardInterrupt, 130),
                                    (OSError(28, "No space left on device"), 1)])
def test_messages_advise_resume_only_when_not_given(tmp_path, capsys, screen, monkeypatch,
                                                    exc, rc):
    out = tmp_path / "out"
    monkeypatch.setattr(dispersion, "final_dispersions", _raise(exc))
    assert main(de(screen, out)) == rc
    err = capsys.readouterr().err
    assert "rerun with --resume" in err and "out.partial" in err, err
    assert main(de(screen, out, "--resume")) == rc
    err = capsys.readouterr().err
    assert "--resume" not in err and "rerun the same command" in err, err
