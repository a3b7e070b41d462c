"""Export the real screen for make_references.R, and choose the minority-control cells.

usage: python tests/data/export_for_r.py SCREEN.h5ad WORKDIR

Writes into WORKDIR (scratch, not committed): counts_genes_by_cells.mtx (integer Matrix
Market, genes x cells), genes.txt (one gene per line), cells.csv (obs: gene, guide, bio_rep,
guide_umi_fraction, size_factor, as stored in the .h5ad; floats as float64 at full precision).

Writes into tests/data/deseq2_fixed_minority_control/ (committed): control_cells.csv, the
300 non-targeting cells (seeded RNG, sorted by name) that the minority-control references
use as their control group, so a test can select the same cells.
"""

import os
import sys

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

SEED = 20261202
N_CONTROL = 300
HERE = os.path.dirname(os.path.abspath(__file__))


def main(screen: str, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    a = ad.read_h5ad(screen)
    X = sp.csr_matrix(a.X)
    counts = X.T.tocoo()
    assert np.array_equal(counts.data, np.round(counts.data)), "counts must be integers"
    scipy.io.mmwrite(os.path.join(workdir, "counts_genes_by_cells.mtx"),
                     counts.astype(np.int64), field="integer")
    with open(os.path.join(workdir, "genes.txt"), "w") as f:
        f.write("\n".join(a.var_names) + "\n")
    obs = a.obs[["gene", "guide", "bio_rep", "guide_umi_fraction", "size_factor"]].copy()
    for col in ("guide_umi_fraction", "size_factor"):
        obs[col] = obs[col].astype(np.float64)
    obs.to_csv(os.path.join(workdir, "cells.csv"), float_format="%.17g")

    nt = np.asarray(a.obs_names[a.obs["gene"] == "non-targeting"])
    rng = np.random.default_rng(SEED)
    chosen = np.sort(rng.choice(nt, size=N_CONTROL, replace=False))
    out = os.path.join(HERE, "deseq2_fixed_minority_control")
    os.makedirs(out, exist_ok=True)
    pd.DataFrame({"cell": chosen}).to_csv(os.path.join(out, "control_cells.csv"), index=False)
    print(X.shape, f"{len(nt)} non-targeting cells, {N_CONTROL} chosen (seed {SEED})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
