"""OUT.partial: the folder a run works in before its results are renamed into place.

It holds the spilled counts, the pass checkpoint and every finished stage of every gene
block, each written atomically (temporary name, fsync, rename), so that a run killed at any
moment can continue with --resume and produce the table an uninterrupted run would. A
fingerprint of the input file and of the options guards against resuming a different run.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from .errors import InputError


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FORMAT = 5  # what the workspace holds; raised whenever a stage's saved arrays change


def fingerprint(path: str, options: dict) -> dict:
    """What a workspace belongs to: the input file, the options and the workspace format (a
    workspace left by a version that saved other arrays is not resumed)."""
    st = os.stat(path)
    return {"input": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "options": options, "workspace format": FORMAT}


class Workspace:
    def __init__(self, path: str, print_: dict, resume: bool, overwrite: bool):
        self.path = path
        mark = os.path.join(path, "fingerprint.json")
        if os.path.exists(path):
            if resume and os.path.exists(mark):
                with open(mark) as fh:
                    old = json.load(fh)
                if old.get("workspace format") != FORMAT:
                    raise InputError(
                        f"cannot resume from '{path}': it was left by another version of "
                        "perturbglm (a different workspace format); pass --overwrite to "
                        "start again")
                if old != print_:
                    changed = sorted(k for k in set(old) | set(print_)
                                     if old.get(k) != print_.get(k))
                    raise InputError(
                        f"cannot resume from '{path}': it belongs to a run with a different "
                        f"{' and '.join(changed)}; rerun with the same input and options, "
                        "or pass --overwrite to start again")
                self.resumed = True
                return
            if not overwrite:
                raise InputError(
                    f"'{path}' holds an interrupted run; pass --resume to continue it or "
                    "--overwrite to start again")
            shutil.rmtree(path)
        self.resumed = False
        os.makedirs(path)
        self.save_json("fingerprint", print_)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.exists(self.file(name))

    def save_json(self, name: str, obj) -> None:
        tmp = self.file(name + ".json.tmp")
        with open(tmp, "w") as fh:
            json.dump(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.file(name + ".json"))
        _fsync_dir(self.path)

    def load_json(self, name: str):
        with open(self.file(name + ".json")) as fh:
            return json.load(fh)

    def save_arrays(self, name: str, **arrays) -> None:
        """A folder of .npy files, renamed into place once complete."""
        final = self.file(name)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for key, arr in arrays.items():
            with open(os.path.join(tmp, key + ".npy"), "wb") as fh:
                np.save(fh, np.asarray(arr))
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.path)

    def load(self, name: str, key: str, rows: slice | None = None,
             cols: slice | None = None) -> np.ndarray:
        """One array of a saved folder, or a slice of its rows and/or columns (read through a
        short-lived memory map, so only that slice is brought into memory)."""
        path = os.path.join(self.file(name), key + ".npy")
        if rows is None and cols is None:
            return np.load(path)
        mm = np.load(path, mmap_mode="r")
        out = np.array(mm[rows or slice(None)] if cols is None
                       else mm[rows or slice(None), cols])
        del mm
        return out

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
