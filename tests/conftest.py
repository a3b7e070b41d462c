"""Shared fixtures: the real screen and its R references live in ../shared/data."""

import os

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
