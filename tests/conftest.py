"""Shared fixtures: the real screen and its R references live in ../shared/data."""

import os

import anndata as ad
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
SCREEN = os.path.join(DATA, "papalexi_eccite_lowmoi.h5ad")
REFERENCE = os.path.join(DATA, "reference")
TARGETS = ["ATF2", "CD86", "IFNGR1", "IRF1", "MYC", "NFKBIA", "SPI1", "STAT2"]


@pytest.fixture(scope="session")
def screen():
    if not os.path.exists(SCREEN):
        pytest.skip(f"real screen not found at {SCREEN} (../shared/data beside the repository)")
    return SCREEN


@pytest.fixture(scope="session")
def null_screen(screen, tmp_path_factory):
    """The non-targeting cells with one column per guide (that guide against the rest: true
    nulls), their path and guides, and the whole screen with its labels shuffled."""
    a = ad.read_h5ad(screen)
    nt = a[a.obs["gene"] == "non-targeting"].copy()
    guides = sorted(nt.obs["guide"].unique())
    for g in guides:
        nt.obs[f"null_{g}"] = np.where(nt.obs["guide"] == g, g, "rest")
    rng = np.random.default_rng(7)
    a.obs["shuffled"] = rng.permutation(a.obs["gene"].astype(str).to_numpy())
    path = tmp_path_factory.mktemp("null") / "nt.h5ad"
    nt.write_h5ad(path)
    shuffled = tmp_path_factory.mktemp("null") / "shuffled.h5ad"
    a.write_h5ad(shuffled)
    return path, guides, shuffled
