"""OUT.partial: the folder a run works in before its results are renamed into place.

It holds the spilled counts, the pass checkpoint and every finished stage of every gene
block, each written atomically (temporary name, fsync, rename) with checksums of what it
holds, so that a run killed at any moment, or stopped by a full disk, can continue with
--resume and produce the table an uninterrupted run would. A resumed run checks each saved
step once against its checksums and computes a damaged one again. A fingerprint of the input
file (including a sample of its content) and of the options guards against resuming a
different run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
import zlib

import h5py
import numpy as np

from ..errors import InputError
from . import outdir

FORMAT = 7  # what the workspace holds; raised whenever a step's saved arrays change
MANIFEST = "manifest.json"   # in each saved folder: every file's size and CRC-32
SAMPLES = 64                 # slices of a large dataset's stored bytes hashed by the fingerprint
SAMPLE_BYTES = 4096          # bytes per slice
WHOLE_BYTES = 8 * 2**20      # datasets up to this size are hashed whole


def _stored_extents(ds: h5py.Dataset) -> list[tuple[int, int]] | None:
    """(file offset, bytes) of each piece of a dataset's storage in its file (one for
    contiguous storage, one per chunk), or None when it is not stored there plainly
    (compact, external or virtual storage)."""
    layout = ds.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        return None if offset is None else [(offset, ds.id.get_storage_size())]
    if layout == h5py.h5d.CHUNKED:
        extents = []
        ds.id.chunk_iter(lambda chunk: extents.append((chunk.byte_offset, chunk.size)))
        return extents
    return None


def _dataset_digest(h, ds: h5py.Dataset, fd: int) -> None:
    """Feed a dataset's name, shape, type and content to hash `h`. Its stored bytes are read
    from the file (fd) as they are, without HDF5's decoding (which for a compressed matrix
    costs more than the rest of a small run's set-up): whole for a small dataset (indptr,
    obs columns of up to a million cells), and for a large one (data, indices) SAMPLES
    slices of SAMPLE_BYTES at evenly spaced places (an evenly spaced chunk each, at a
    position that moves through the chunks), which any rewrite of the counts touches.
    Variable-length strings (whose stored bytes are references) and datasets not stored
    plainly are read through HDF5."""
    h.update(f"{ds.name}|{ds.shape}|{ds.dtype}".encode())
    extents = _stored_extents(ds) if ds.dtype.kind != "O" else None
    if extents is not None and sum(size for _, size in extents) <= WHOLE_BYTES:
        for offset, size in extents:
            h.update(os.pread(fd, size, offset))
        return
    if extents:
        last = SAMPLES - 1
        for k in range(SAMPLES):
            offset, size = extents[k * (len(extents) - 1) // last]
            h.update(os.pread(fd, min(size, SAMPLE_BYTES),
                              offset + max(size - SAMPLE_BYTES, 0) * k // last))
        return
    nbytes = ds.size * ds.dtype.itemsize
    if ds.ndim == 0:
        h.update(repr(ds[()]).encode())
        return
    rows = max(1, WHOLE_BYTES * ds.shape[0] // max(nbytes, 1))
    for a in range(0, ds.shape[0], rows):
        part = ds[a:a + rows]
        if part.dtype.kind == "O":          # variable-length strings
            h.update(b"\0".join(x if isinstance(x, bytes) else str(x).encode()
                                 for x in part.reshape(-1)))
        else:
            h.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))


def content_digest(f: h5py.File, keys: list[str]) -> str:
    """blake2b over the datasets under the given keys of an open file (a dataset, or every
    dataset of a group in name order), each hashed whole or sampled (_dataset_digest)."""
    h = hashlib.blake2b(digest_size=16)
    fd = os.open(f.filename, os.O_RDONLY)
    try:
        for key in keys:
            node = f[key]
            if isinstance(node, h5py.Dataset):
                _dataset_digest(h, node, fd)
            else:
                node.visititems(lambda _, obj: _dataset_digest(h, obj, fd)
                                if isinstance(obj, h5py.Dataset) else None)
    finally:
        os.close(fd)
    return h.hexdigest()


def fingerprint(f: h5py.File, counts_key: str, obs_keys: list[str], options: dict) -> dict:
    """What a workspace belongs to: the input file (path, size, modification time, and a
    sampled hash of the count matrix and of the obs columns the run reads, so that content
    rewritten in place is noticed even with size and time restored), the options and the
    workspace format (a workspace left by a version that saved other arrays is not
    resumed)."""
    st = os.stat(f.filename)
    return {"input": {"path": os.path.abspath(f.filename), "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns,
                      "counts": content_digest(f, [counts_key]),
                      "obs": content_digest(f, [f"obs/{k}" for k in obs_keys])},
            "options": options, "workspace format": FORMAT}


def digest(print_: dict) -> str:
    """A fingerprint as one string: recorded in the marker of the results a run writes, so
    that --resume can tell they are this run's (outdir.results_run)."""
    return hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()


def _json_checksum(obj: dict) -> int:
    return zlib.crc32(json.dumps(obj, sort_keys=True).encode())


def _write_json(path: str, obj: dict) -> None:
    """`obj` and a checksum entry over it, written through to the disk."""
    with open(path, "w") as fh:
        json.dump({**obj, "checksum": _json_checksum(obj)}, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _read_json(path: str) -> dict | None:
    """A saved JSON object with its checksum entry, or None if missing or unparsable."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _intact_json(obj: dict | None) -> bool:
    """Whether a read JSON object matches the checksum it was saved with."""
    if obj is None or "checksum" not in obj:
        return False
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return obj["checksum"] == _json_checksum(body)


def _file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while piece := fh.read(16 * 2**20):
            crc = zlib.crc32(piece, crc)
    return crc


def _intact_folder(path: str) -> bool:
    """Whether a saved folder holds every file its manifest lists, with the listed size and
    CRC-32 (sizes are checked first, so a truncated file costs no reading)."""
    manifest = _read_json(os.path.join(path, MANIFEST))
    if not _intact_json(manifest):
        return False
    files = [(os.path.join(path, name), size, crc)
             for name, (size, crc) in manifest["files"].items()]
    if not all(os.path.isfile(p) and os.path.getsize(p) == size for p, size, _ in files):
        return False
    return all(_file_crc(p) == crc for p, _, crc in files)


def _write_npy(fh, arr: np.ndarray) -> tuple[int, int]:
    """Write `arr` as np.save would (same bytes) through the file object's own write, which
    reports a full disk as OSError(ENOSPC) (numpy's tofile says only how many bytes were
    written). Returns the bytes written and their CRC-32."""
    arr = np.asanyarray(arr)
    header = io.BytesIO()
    info = np.lib.format.header_data_from_array_1_0(arr)
    np.lib.format.write_array_header_1_0(header, info)
    body = arr.T if info["fortran_order"] else np.ascontiguousarray(arr)
    raw = body.reshape(-1).view(np.uint8) if body.size else b""
    head = header.getvalue()
    fh.write(head)
    fh.write(raw)
    return len(head) + len(raw), zlib.crc32(raw, zlib.crc32(head))


class Workspace:
    def __init__(self, path: str, print_: dict, resume: bool, overwrite: bool):
        """Continue (resume=True) or start the workspace at PATH, which the run's lock
        (outdir.lock) has created: a fingerprint in it means an interrupted run."""
        self.path = path
        self._checked: set[str] = set()     # steps saved, or found intact, by this run
        mark = os.path.join(path, outdir.FINGERPRINT)
        if os.path.exists(mark):
            if resume:
                old = _read_json(mark)
                if old is not None and old.get("workspace format") != FORMAT:
                    raise InputError(
                        f"cannot resume from '{path}': it was left by another version of "
                        "perturbglm (a different workspace format); pass --overwrite to "
                        "start again")
                if _intact_json(old):
                    del old["checksum"]
                    if old != print_:
                        changed = sorted(k for k in set(old) | set(print_)
                                         if old.get(k) != print_.get(k))
                        raise InputError(
                            f"cannot resume from '{path}': it belongs to a run with a "
                            f"different {' and '.join(changed)}; rerun with the same input "
                            "and options, or pass --overwrite to start again")
                    self.resumed = True
                    return
                warnings.warn(f"'{mark}' is damaged, so the interrupted run "
                              "cannot be continued; starting it again", stacklevel=2)
            elif not overwrite:
                raise InputError(
                    f"'{path}' holds an interrupted run; pass --resume to continue it or "
                    "--overwrite to start again")
            outdir.empty_workspace(path)
        self.resumed = False
        self.save_json("fingerprint", print_)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        """Whether step `name` (a folder of arrays, or NAME.json) is saved. A resumed run
        checks each step once against the checksums it was saved with: one that is missing
        a file, truncated or altered, or a JSON file that does not parse, is removed with a
        note and counts as not done, to be computed again."""
        if name in self._checked:
            return True
        path = self.file(name)
        if not self.resumed or not os.path.exists(path):
            return False
        if (_intact_json(_read_json(path)) if name.endswith(".json")
                else _intact_folder(path)):
            self._checked.add(name)
            return True
        warnings.warn(f"the saved step '{path}' is damaged or incomplete; computing it "
                      "again", stacklevel=2)
        self.remove(name)
        return False

    def remove(self, name: str) -> None:
        """Delete a saved step (it will be computed again)."""
        path = self.file(name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        self._checked.discard(name)

    def clear(self) -> None:
        """Remove every saved step but the fingerprint, for a run that starts again in
        place (its steps are tied to a plan that is lost)."""
        outdir.empty_workspace(self.path, keep=(outdir.FINGERPRINT,))
        self._checked.intersection_update({outdir.FINGERPRINT})

    def save_json(self, name: str, obj: dict) -> None:
        """NAME.json holding `obj` and a checksum entry over it."""
        tmp = self.file(name + ".json.tmp")
        _write_json(tmp, obj)
        os.replace(tmp, self.file(name + ".json"))
        outdir.fsync_dir(self.path)
        self._checked.add(name + ".json")

    def load_json(self, name: str) -> dict:
        obj = _read_json(self.file(name + ".json"))
        del obj["checksum"]
        return obj

    def save_arrays(self, name: str, **arrays) -> None:
        """A folder of .npy files and a manifest of their sizes and CRC-32s, renamed into
        place once complete."""
        final = self.file(name)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        files = {}
        for key, arr in arrays.items():
            with open(os.path.join(tmp, key + ".npy"), "wb") as fh:
                files[key + ".npy"] = _write_npy(fh, arr)
                fh.flush()
                os.fsync(fh.fileno())
        _write_json(os.path.join(tmp, MANIFEST), {"files": files})
        outdir.fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        outdir.fsync_dir(self.path)
        self._checked.add(name)

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

    def shape(self, name: str, key: str) -> tuple[int, ...]:
        """The shape of one array of a saved folder (read from its header only)."""
        return np.load(os.path.join(self.file(name), key + ".npy"), mmap_mode="r").shape

    def discard(self) -> None:
        outdir.empty_workspace(self.path)      # the run's lock removes the folder
