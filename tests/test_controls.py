"""Several control labels pooled (--control A,B,...) on the real screen: the same analysis as
a grouping column where those labels are merged into one."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd

from perturbglm.cli import main


def test_pooled_guides_equal_a_merged_column(screen, tmp_path, capsys):
    """--groupby guide --control NTg1,...,NTg10 (every non-targeting guide in the data) gives,
    bit for bit, the table and summary of a column where those guides are one label."""
    adata = ad.read_h5ad(screen)
    guide = adata.obs["guide"].astype(str)
    controls = sorted(set(guide[guide.str.startswith("NTg")]), key=lambda g: int(g[3:]))
    assert len(controls) >= 2
    adata.obs["guide_merged"] = pd.Categorical(guide.where(~guide.isin(controls), "NT"))
    merged = tmp_path / "merged.h5ad"
    adata.write_h5ad(merged)
    del adata

    common = ["--threads", "1", "--quiet"]
    assert main(["de", screen, "--groupby", "guide", "--control", ",".join(controls),
                 "--out", str(tmp_path / "pooled"), *common]) == 0
    pooled_out = capsys.readouterr().out
    assert main(["de", str(merged), "--groupby", "guide_merged", "--control", "NT",
                 "--out", str(tmp_path / "merged"), *common]) == 0
    capsys.readouterr()

    pooled = pd.read_parquet(tmp_path / "pooled" / "results.parquet")
    single = pd.read_parquet(tmp_path / "merged" / "results.parquet")
    assert not set(pooled["perturbation"]) & set(controls)
    assert pooled["perturbation"].nunique() > 50
    pd.testing.assert_frame_equal(pooled, single, check_exact=True)
    summary = pd.read_csv(tmp_path / "pooled" / "summary.csv")
    pd.testing.assert_frame_equal(summary, pd.read_csv(tmp_path / "merged" / "summary.csv"),
                                  check_exact=True)
    n_control = int(guide.isin(controls).sum())
    assert (summary["control_cells"] == n_control).all()
    record = json.load(open(tmp_path / "pooled" / "run.json"))
    assert record["parameters"]["control"] == ",".join(controls)
    assert record["control_labels"] == controls
    assert f"control: {len(controls)} labels pooled ({', '.join(controls)}), " \
           f"{n_control:,} cells" in pooled_out
