"""A realistic simulated screen with known truth, for tests, the demo and benchmarks.

Genes: log-normal mean expression, mostly low (median ~0.1 counts per cell), NB dispersion
following DESeq2's trend a0 + a1/mean with log-normal scatter. Cells: log-normal sequencing
depth (recorded as obs["size_factor"]), a replicate label with a small per-gene effect, and
one perturbation each (or the non-targeting control), in random order. Each perturbation
knocks its own target gene down (the first genes are the targets) and changes a fraction of
the other genes. The truth table holds every (perturbation, gene) true log2 fold change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

CONTROL = "non-targeting"


def simulate(n_cells: int, n_genes: int, n_perturbations: int, seed: int = 0,
             control_fraction: float = 0.15, de_fraction: float = 0.05,
             knockdown_log2fc: float = -2.0, n_replicates: int = 2, chunk_cells: int = 20_000):
    """Returns (AnnData, truth DataFrame)."""
    import anndata as ad

    if n_perturbations > n_genes:
        raise ValueError("need at least as many genes as perturbations (targets are genes)")
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:05d}" for i in range(n_genes)], dtype=object)
    log_mean = rng.normal(np.log(0.1), 1.5, n_genes)
    mean = np.exp(np.clip(log_mean, np.log(0.002), np.log(50.0)))
    disp = (0.1 + 0.3 / mean) * np.exp(rng.normal(0, 0.3, n_genes))
    targets = genes[:n_perturbations]
    lfc = np.zeros((n_perturbations, n_genes))
    for p in range(n_perturbations):
        hit = rng.random(n_genes) < de_fraction
        lfc[p, hit] = rng.choice([-1, 1], hit.sum()) * rng.uniform(0.5, 2.0, hit.sum())
        lfc[p, p] = knockdown_log2fc
    labels = np.concatenate([[CONTROL], targets]).astype(object)
    probs = np.full(n_perturbations + 1, (1 - control_fraction) / max(n_perturbations, 1))
    probs[0] = control_fraction if n_perturbations else 1.0
    group = rng.choice(n_perturbations + 1, n_cells, p=probs / probs.sum())
    depth = np.exp(rng.normal(0, 0.4, n_cells))
    replicate = rng.integers(0, n_replicates, n_cells)
    rep_effect = rng.normal(0, 0.1, (n_replicates, n_genes))
    rep_effect[0] = 0.0
    log_effect = np.vstack([np.zeros(n_genes), lfc * np.log(2)])
    chunks = []
    for start in range(0, n_cells, chunk_cells):
        stop = min(start + chunk_cells, n_cells)
        mu = (depth[start:stop, None] * mean[None, :]
              * np.exp(log_effect[group[start:stop]] + rep_effect[replicate[start:stop]]))
        lam = rng.gamma(1.0 / disp[None, :], mu * disp[None, :])
        chunks.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    X = sp.vstack(chunks, format="csr")
    obs = pd.DataFrame({
        "perturbation": pd.Categorical(labels[group]),
        "replicate": pd.Categorical([f"rep{r + 1}" for r in replicate]),
        "size_factor": depth,
    }, index=[f"cell{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(
        {"true_mean": mean, "true_dispersion": disp}, index=genes))
    truth = pd.DataFrame({
        "perturbation": np.repeat(targets, n_genes),
        "gene": np.tile(genes, n_perturbations),
        "true_log2fc": lfc.ravel(),
        "true_mean": np.tile(mean, n_perturbations),
    })
    return adata, truth


def write(path: str, n_cells: int, n_genes: int, n_perturbations: int, seed: int = 0,
          **kwargs) -> str:
    """Write the screen to PATH (.h5ad) and its truth table beside it; returns the truth path."""
    adata, truth = simulate(n_cells, n_genes, n_perturbations, seed, **kwargs)
    adata.write_h5ad(path)
    truth_path = truth_path_for(path)
    truth.to_parquet(truth_path, index=False)
    return truth_path


def truth_path_for(path: str) -> str:
    stem = path[:-5] if path.endswith(".h5ad") else path
    return stem + ".truth.parquet"
