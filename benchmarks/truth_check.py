"""Calls of a perturbglm result against a simulated screen's truth table: realised FDR and
power at an FDR level, per-perturbation target drop. Streams both tables a row group at a
time, so it works on L (40M rows).

usage: python benchmarks/truth_check.py RESULT_DIR SCREEN.truth.parquet [--fdr 0.1]
"""

import argparse
import os

import numpy as np
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("truth")
    ap.add_argument("--fdr", type=float, default=0.1)
    args = ap.parse_args()
    res = pq.ParquetFile(os.path.join(args.result, "results.parquet"))
    # the truth holds perturbation-major blocks of all genes, in the results' order
    t_lfc = pq.read_table(args.truth, columns=["true_log2fc"])["true_log2fc"].to_numpy()
    labels = pq.read_table(args.truth, columns=["perturbation"])["perturbation"].unique()
    labels = np.asarray(labels.to_pylist(), dtype=object)
    n_genes = len(t_lfc) // len(labels)
    genes = np.asarray(pq.read_table(args.truth, columns=["gene"])["gene"]
                       .slice(0, n_genes).to_pylist(), dtype=object)
    called = false = real = hits = n = 0
    for i in range(res.num_row_groups):
        rg = res.read_row_group(i, columns=["perturbation", "gene", "padj"])
        m = rg.num_rows
        pert, gene = rg["perturbation"].to_numpy(), rg["gene"].to_numpy()
        rows = np.arange(n, n + m)
        assert (pert == labels[rows // n_genes]).all() and (gene == genes[rows % n_genes]).all()
        padj = rg["padj"].to_numpy(zero_copy_only=False)
        lfc = t_lfc[n:n + m]
        call = padj < args.fdr
        called += call.sum()
        false += (call & (lfc == 0)).sum()
        real += (lfc != 0).sum()
        hits += (call & (lfc != 0)).sum()
        n += m
    assert n == len(t_lfc)
    print(f"{n:,} pairs; {called:,} calls at FDR {args.fdr}; realised FDR "
          f"{false / max(called, 1):.4f}; power {hits / max(real, 1):.4f}")


if __name__ == "__main__":
    main()
