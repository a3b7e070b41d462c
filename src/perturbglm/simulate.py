"""A realistic simulated screen with known truth, for tests, the demo and benchmarks.

Genes: log-normal mean expression, mostly low (median ~0.1 counts per cell), NB dispersion
following DESeq2's trend a0 + a1/mean with log-normal scatter. Cells: log-normal sequencing
depth (recorded as obs["size_factor"]), a replicate label with a small per-gene effect, and
one perturbation each (or the non-targeting control), in random order unless `grouped`.
Each perturbation knocks its own target gene down (the first genes are the targets) and
changes a fraction of the other genes. The truth table holds every (perturbation, gene) true
log2 fold change.

Counts are drawn cell by cell in a compiled kernel (inverse-CDF negative binomial draws from
a per-cell seeded stream, so the screen does not depend on the thread count) and written to
the .h5ad in chunks: a million-cell screen never exists in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit, prange

CONTROL = "non-targeting"
CHUNK_CELLS = 5_000


@njit(cache=True)
def _draw_row(mean_row, r, out):
    """NB(mean, 1/r) draws for one cell's genes by inverse CDF; returns the non-zero count."""
    nnz = 0
    for j in range(mean_row.shape[0]):
        mu = mean_row[j]
        p = mu / (mu + r[j])
        prob = math.exp(-r[j] * math.log1p(mu / r[j]))
        u = np.random.random()  # noqa: NPY002 (numba: per-thread legacy stream)
        y = 0
        cdf = prob
        while u > cdf and prob > 0.0 and y < 10_000_000:
            prob *= (y + r[j]) / (y + 1.0) * p
            y += 1
            cdf += prob
        out[j] = y
        if y > 0:
            nnz += 1
    return nnz


@njit(parallel=True, cache=True)
def _draw_chunk(seed, first_cell, depth, effect, r, mean, buf, nnz):
    """Fill buf[i] with the counts of cell first_cell + i; each cell has its own seed."""
    for i in prange(buf.shape[0]):
        np.random.seed(seed * 1_000_003 + first_cell + i)  # noqa: NPY002 (numba)
        row = depth[i] * mean * effect[i]
        nnz[i] = _draw_row(row, r, buf[i])


@njit(parallel=True, cache=True)
def _compact(buf, indptr, data, indices):
    for i in prange(buf.shape[0]):
        t = indptr[i]
        for j in range(buf.shape[1]):
            if buf[i, j] > 0:
                data[t] = buf[i, j]
                indices[t] = j
                t += 1


@dataclass
class Screen:
    """The drawn parameters of a screen: everything but the counts."""

    genes: np.ndarray
    mean: np.ndarray
    disp: np.ndarray
    lfc: np.ndarray          # perturbations x genes, log2
    labels: np.ndarray       # group labels, control first
    group: np.ndarray        # per cell
    depth: np.ndarray
    replicate: np.ndarray
    rep_effect: np.ndarray   # replicates x genes, natural log

    def obs(self) -> pd.DataFrame:
        return pd.DataFrame({
            "perturbation": pd.Categorical(self.labels[self.group], categories=self.labels),
            "replicate": pd.Categorical([f"rep{r + 1}" for r in self.replicate]),
            "size_factor": self.depth,
        }, index=[f"cell{i}" for i in range(self.group.size)])

    def var(self) -> pd.DataFrame:
        return pd.DataFrame({"true_mean": self.mean, "true_dispersion": self.disp},
                            index=self.genes)

    def truth(self) -> pd.DataFrame:
        n_pert, n_genes = self.lfc.shape
        return pd.DataFrame({
            "perturbation": np.repeat(self.genes[:n_pert], n_genes),
            "gene": np.tile(self.genes, n_pert),
            "true_log2fc": self.lfc.ravel(),
            "true_mean": np.tile(self.mean, n_pert),
        })

    def chunks(self, seed: int, chunk_cells: int = CHUNK_CELLS):
        """Yield (first cell, CSR chunk of float32 counts) over consecutive cells."""
        n_cells, n_genes = self.group.size, self.genes.size
        log_effect = np.vstack([np.zeros(n_genes), self.lfc * np.log(2)])
        r = 1.0 / self.disp
        buf = np.empty((min(chunk_cells, n_cells), n_genes), dtype=np.int64)
        for start in range(0, n_cells, chunk_cells):
            stop = min(start + chunk_cells, n_cells)
            g, rep = self.group[start:stop], self.replicate[start:stop]
            effect = np.exp(log_effect[g] + self.rep_effect[rep])
            nnz = np.zeros(stop - start, dtype=np.int64)
            _draw_chunk(seed, start, self.depth[start:stop], effect, r, self.mean,
                        buf[:stop - start], nnz)
            indptr = np.zeros(stop - start + 1, dtype=np.int64)
            np.cumsum(nnz, out=indptr[1:])
            data = np.empty(indptr[-1], dtype=np.float32)
            indices = np.empty(indptr[-1], dtype=np.int32)
            _compact(buf[:stop - start], indptr, data, indices)
            yield start, sp.csr_matrix((data, indices, indptr), shape=(stop - start, n_genes))


def draw(n_cells: int, n_genes: int, n_perturbations: int, seed: int = 0,
         control_fraction: float = 0.15, de_fraction: float = 0.05,
         knockdown_log2fc: float = -2.0, n_replicates: int = 2,
         grouped: bool = False) -> Screen:
    if n_perturbations > n_genes:
        raise ValueError("need at least as many genes as perturbations (targets are genes)")
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:05d}" for i in range(n_genes)], dtype=object)
    log_mean = rng.normal(np.log(0.1), 1.5, n_genes)
    mean = np.exp(np.clip(log_mean, np.log(0.002), np.log(50.0)))
    disp = (0.1 + 0.3 / mean) * np.exp(rng.normal(0, 0.3, n_genes))
    hit = rng.random((n_perturbations, n_genes)) < de_fraction
    size = rng.uniform(0.5, 2.0, (n_perturbations, n_genes))
    sign = rng.choice([-1.0, 1.0], (n_perturbations, n_genes))
    lfc = np.where(hit, sign * size, 0.0)
    lfc[np.arange(n_perturbations), np.arange(n_perturbations)] = knockdown_log2fc
    labels = np.concatenate([[CONTROL], genes[:n_perturbations]]).astype(object)
    probs = np.full(n_perturbations + 1, (1 - control_fraction) / max(n_perturbations, 1))
    probs[0] = control_fraction if n_perturbations else 1.0
    group = rng.choice(n_perturbations + 1, n_cells, p=probs / probs.sum())
    depth = np.exp(rng.normal(0, 0.4, n_cells))
    replicate = rng.integers(0, n_replicates, n_cells)
    rep_effect = rng.normal(0, 0.1, (n_replicates, n_genes))
    rep_effect[0] = 0.0
    if grouped:
        order = np.argsort(group, kind="stable")
        group, depth, replicate = group[order], depth[order], replicate[order]
    return Screen(genes, mean, disp, lfc, labels, group, depth, replicate, rep_effect)


def simulate(n_cells: int, n_genes: int, n_perturbations: int, seed: int = 0, **kwargs):
    """Returns (AnnData, truth DataFrame), in memory: for small screens."""
    import anndata as ad

    screen = draw(n_cells, n_genes, n_perturbations, seed, **kwargs)
    X = sp.vstack([chunk for _, chunk in screen.chunks(seed)], format="csr")
    return ad.AnnData(X=X, obs=screen.obs(), var=screen.var()), screen.truth()


def write(path: str, n_cells: int, n_genes: int, n_perturbations: int, seed: int = 0,
          **kwargs) -> str:
    """Write the screen to PATH (.h5ad, CSR counts appended chunk by chunk) and its truth
    table beside it; returns the truth path."""
    import anndata as ad
    import h5py

    screen = draw(n_cells, n_genes, n_perturbations, seed, **kwargs)
    tmp = path + ".partial"
    ad.AnnData(obs=screen.obs(), var=screen.var()).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        X = f.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([n_cells, n_genes])})
        data = X.create_dataset("data", (0,), dtype=np.float32, maxshape=(None,),
                                chunks=(1 << 18,))
        indices = X.create_dataset("indices", (0,), dtype=np.int32, maxshape=(None,),
                                   chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        for start, chunk in screen.chunks(seed):
            n = data.shape[0]
            data.resize((n + chunk.nnz,))
            indices.resize((n + chunk.nnz,))
            data[n:] = chunk.data
            indices[n:] = chunk.indices
            indptr[start + 1:start + chunk.shape[0] + 1] = n + chunk.indptr[1:]
        X.create_dataset("indptr", data=indptr)
    os.replace(tmp, path)
    truth_path = truth_path_for(path)
    screen.truth().to_parquet(truth_path, index=False)
    return truth_path


def truth_path_for(path: str) -> str:
    stem = path[:-5] if path.endswith(".h5ad") else path
    return stem + ".truth.parquet"
