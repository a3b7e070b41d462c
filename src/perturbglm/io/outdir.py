"""The output folder OUT and what lives next to it: which folders a run may replace, the lock
that allows one run per OUT, and the crash-safe replacement of OUT by a run's results.

- Every results folder holds a marker, `.perturbglm` (JSON: the version and the files the
  run wrote). `--overwrite` replaces only such a folder (or one of an earlier version, which
  held exactly results.parquet, summary.csv and a run.json with "parameters"), never one
  holding anything else (but its `report` folder, when `perturbglm report` wrote it),
  never the input, the current folder or a parent of either.
- A run holds an exclusive flock on OUT.partial/lock (its pid and host as JSON) from the
  moment it writes anything until it ends; a second run on the same OUT is refused. The
  kernel releases the lock of a process that dies, so a stale lock file is simply taken over.
- Results are written to `.NAME.perturbglm-new` beside OUT and swapped with OUT in one
  atomic renameat2(RENAME_EXCHANGE); where the file system refuses that call, OUT is first
  renamed to `.NAME.perturbglm-old`. A kill at any point leaves the old or the new results
  at OUT (or, between the two renames of the fallback, the old ones at the -old name); the
  next run on OUT restores or removes what a killed run left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import sys

from ..errors import InputError

MARKER = ".perturbglm"      # in every results folder: {"version", "files"}
RESULT_FILES = ("results.parquet", "summary.csv", "run.json")
REPORT_DIR = "report"       # `perturbglm report`'s default folder, inside a results folder
LOCK = "lock"               # in OUT.partial: {"pid", "host"} of the run holding it
FINGERPRINT = "fingerprint.json"    # what makes OUT.partial a workspace (workspace.py)


def partial_path(out_dir: str) -> str:
    """The workspace of a run writing OUT_DIR."""
    return out_dir.rstrip("/") + ".partial"


def _staging_paths(out_dir: str) -> tuple[str, str]:
    """(folder the new results are written to, name the old results take in the fallback
    swap): fixed names beside OUT_DIR, so that the next run on it finds them."""
    parent, name = os.path.split(os.path.abspath(out_dir))
    return (os.path.join(parent, f".{name}.perturbglm-new"),
            os.path.join(parent, f".{name}.perturbglm-old"))


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _inside(path: str, folder: str) -> bool:
    """Whether PATH is FOLDER or inside it (both real paths)."""
    return os.path.commonpath([path, folder]) == folder


def check_paths(out_dir: str, input_path: str | None = None) -> None:
    """Refuse an OUT (or OUT.partial) that is the input file, the current folder, or a folder
    holding either: replacing it would destroy them."""
    cwd = os.path.realpath(os.getcwd())
    src = os.path.realpath(input_path) if input_path is not None else None
    for path in (out_dir, partial_path(out_dir)):
        real = os.path.realpath(path)
        if real == src:
            raise InputError(f"--out '{path}' is the input file; choose another --out")
        if _inside(cwd, real):
            raise InputError(f"--out '{path}' is the current folder or one of its parents; "
                             "choose a new folder for the results")
        if src is not None and _inside(src, real):
            raise InputError(f"--out '{path}' holds the input file '{input_path}'; choose a "
                             "new folder for the results")


def _foreign_entries(folder: str) -> list[str] | None:
    """The entries of FOLDER no perturbglm run wrote ([] for a results folder), or None if
    FOLDER is not a directory."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return None
    entries = set(os.listdir(folder))
    if MARKER in entries:
        try:
            with open(os.path.join(folder, MARKER)) as fh:
                written = set(json.load(fh)["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return sorted(entries)
        foreign = entries - written - {MARKER}
        if REPORT_DIR in foreign and _foreign_entries(os.path.join(folder, REPORT_DIR)) == []:
            foreign.discard(REPORT_DIR)      # the results' own report, replaced with them
        return sorted(foreign)
    if entries == set(RESULT_FILES):       # a results folder of a version without the marker
        try:
            with open(os.path.join(folder, "run.json")) as fh:
                if "parameters" in json.load(fh):
                    return []
        except (OSError, ValueError, TypeError):
            pass
    return sorted(entries)


def check_destination(out_dir: str, overwrite: bool) -> None:
    """Refuse to write OUT_DIR if it exists, unless overwrite=True and it is a results
    folder (its marker lists every file in it)."""
    if not os.path.lexists(out_dir):
        return
    if not overwrite:
        raise InputError(f"output folder '{out_dir}' exists; pass --overwrite to replace it "
                         "or choose another --out")
    foreign = _foreign_entries(out_dir)
    if foreign is None:
        raise InputError(f"--out '{out_dir}' is a file or a link, not a folder; --overwrite "
                         "replaces only a perturbglm results folder: choose another --out")
    if foreign:
        raise InputError(
            f"--out '{out_dir}' is not a perturbglm results folder (it holds "
            f"{_listing(foreign)}, which no perturbglm run wrote); --overwrite replaces only "
            "a results folder: move those files away or choose another --out")


def _check_workspace(partial: str) -> None:
    """Refuse an OUT.partial that is not a perturbglm workspace: a run writes in it and
    --overwrite empties it."""
    if not os.path.lexists(partial):
        return
    if os.path.islink(partial) or not os.path.isdir(partial):
        raise InputError(f"'{partial}' is not a folder, and a run needs that name for its "
                         "workspace; move it away or choose another --out")
    entries = set(os.listdir(partial))
    if FINGERPRINT not in entries and not entries <= {LOCK, FINGERPRINT + ".tmp"}:
        raise InputError(f"'{partial}' is not a perturbglm workspace (it holds "
                         f"{_listing(entries - {LOCK})}), and a run needs that name for its "
                         "workspace; move it away or choose another --out")


def empty_workspace(partial: str, keep: tuple[str, ...] = ()) -> None:
    """Remove everything in OUT.partial but the lock file (and the entries named in
    `keep`); the fingerprint last, so that a kill on the way leaves a folder still
    recognisably a workspace."""
    for name in sorted(os.listdir(partial), key=lambda n: n == FINGERPRINT):
        path = os.path.join(partial, name)
        if name == LOCK or name in keep:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _holder(fd: int) -> str:
    """'pid P on host H' from a lock file's content."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"


def _acquire(out_dir: str) -> int:
    """An open descriptor of OUT.partial/lock, flocked by this process, with this process's
    pid and host written in it."""
    partial = partial_path(out_dir)
    path = os.path.join(partial, LOCK)
    while True:
        try:
            os.makedirs(partial, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:        # the holder removed the folder in between
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(f"another perturbglm run ({holder}) is writing --out "
                             f"'{out_dir}'; wait for it to end, or choose another --out") \
                from None
        # the holder may have removed the file between our open and flock: then we locked
        # an unlinked file, and the next run would lock a new one beside us
        st = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
                      .encode(), 0)
            return fd
        os.close(fd)


def _release(out_dir: str, fd: int) -> bool:
    """Remove OUT.partial if it holds only our lock file, then unlock. Whether OUT.partial
    is gone."""
    partial = partial_path(out_dir)
    path = os.path.join(partial, LOCK)
    try:
        st = os.fstat(fd)
        with contextlib.suppress(OSError):
            now = os.stat(path)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev) \
                    and os.listdir(partial) == [LOCK]:
                os.unlink(path)
                os.rmdir(partial)
    finally:
        os.close(fd)
    return not os.path.lexists(partial)


def _missing_parents(path: str) -> list[str]:
    """The folders above PATH that do not exist, outermost first."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        missing.insert(0, parent)
        parent = os.path.dirname(parent)
    return missing


@contextlib.contextmanager
def lock(out_dir: str):
    """Hold the lock on OUT_DIR for the block: refuse if another run holds it, then restore
    or remove what a killed run left beside OUT_DIR. On exit OUT.partial is removed if it
    holds nothing but the lock file (a completed or refused run), and so are the folders
    above it that the lock created and nothing else used (a refused run writes nothing)."""
    _check_workspace(partial_path(out_dir))
    created = _missing_parents(partial_path(out_dir))
    fd = _acquire(out_dir)
    try:
        _recover(out_dir)
        yield
    finally:
        if _release(out_dir, fd):
            for folder in reversed(created):
                with contextlib.suppress(OSError):      # not empty: in use
                    os.rmdir(folder)


def _recover(out_dir: str) -> None:
    """After a killed swap: put the old results back at OUT_DIR if the fallback swap was
    killed between its renames, and remove the staging folders. Called under the lock, so
    no live run uses them."""
    new, old = _staging_paths(out_dir)
    for path in (old, new):
        if not os.path.lexists(path):
            continue
        foreign = _foreign_entries(path)
        if path == new and foreign:        # killed while writing: no marker yet
            foreign = sorted(set(foreign) - set(RESULT_FILES))
        if foreign != []:
            raise InputError(f"'{path}' is in the way of the results (it is not a folder "
                             "perturbglm left); move it away")
        if path == old and not os.path.lexists(out_dir):
            _move(old, out_dir)
        else:
            shutil.rmtree(path)


def fsync_dir(path: str) -> None:
    """Make the renames and new entries of folder PATH durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move(src: str, dst: str) -> None:
    """Rename SRC to DST and make the rename durable."""
    os.rename(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap the paths A and B in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system or the file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:             # a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        fsync_dir(os.path.dirname(os.path.abspath(b)))
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def results_run(out_dir: str) -> str | None:
    """The run (workspace.digest of its fingerprint) whose results OUT_DIR holds, from its
    marker; None if it has none."""
    try:
        with open(os.path.join(out_dir, MARKER)) as fh:
            run = json.load(fh).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) else None


def _write_marker(folder: str, run: str | None) -> None:
    from .. import __version__

    files = sorted(os.listdir(folder))
    with open(os.path.join(folder, MARKER), "w") as fh:
        json.dump({"version": __version__, "files": files, "run": run}, fh)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def staged(out_dir: str, overwrite: bool, run: str | None = None):
    """A new folder beside OUT_DIR to write the results in; when the block completes it is
    marked as the results of `run` (see results_run) and swapped into place, and removed if
    the block fails. Call under lock(out_dir)."""
    check_destination(out_dir, overwrite)
    new, old = _staging_paths(out_dir)
    os.makedirs(os.path.dirname(new), exist_ok=True)
    os.mkdir(new)                      # permissions from the umask, like any user folder
    try:
        yield new
        _write_marker(new, run)
        fsync_dir(new)
        check_destination(out_dir, overwrite)   # files may have appeared during the run
        if not os.path.lexists(out_dir):
            _move(new, out_dir)
        elif _exchange(new, out_dir):
            shutil.rmtree(new, ignore_errors=True)     # now the old results
        else:
            _move(out_dir, old)
            _move(new, out_dir)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(OSError, InputError):   # else the next run cleans up
            _recover(out_dir)
        raise


def has_workspace(out_dir: str) -> bool:
    """Whether OUT.partial holds an interrupted run that --resume can continue."""
    return os.path.exists(os.path.join(partial_path(out_dir), FINGERPRINT))
