"""The store of non-zero counts and the gene blocks ordered from it: in memory or spilled,
whatever the chunking, a block holds each (gene, group)'s counts in file order."""

import numpy as np
import pytest
import scipy.sparse as sp

from perturbglm.io import summaries


def _screen(seed=0, n=300, genes=200, groups=3):
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(1, 0.8, (n, genes))
    counts[:, 64:128] = 0                   # the second 64-gene slab is empty
    group = rng.integers(-1, groups, n)     # -1: a cell outside the analysis
    return sp.csr_matrix(counts), group


def _store(counts, group, folder, chunk):
    store = summaries.Store(counts.shape[1], folder)
    n = counts.shape[0]
    for c0 in range(0, n, chunk):
        part = counts[c0:c0 + chunk]
        assert store.add(part.indptr, part.indices, part.data, c0, True, group >= 0,
                         np.zeros(n), None) is None
    return store


def _expected(counts, group, g0, g1, groups):
    """(gene, group) runs of (cell, count) in file order, straight from the matrix."""
    dense = counts.toarray()
    ys, cells, sizes = [], [], []
    for g in range(g0, g1):
        for k in range(groups):
            idx = np.flatnonzero((group == k) & (dense[:, g] > 0))
            ys.append(dense[idx, g])
            cells.append(idx)
            sizes.append(idx.size)
    return np.concatenate(ys), np.concatenate(cells), np.concatenate([[0], np.cumsum(sizes)])


@pytest.mark.parametrize("s0,s1", [(0, 4), (1, 3), (2, 4), (1, 2)])
def test_blocks_identical_in_memory_and_spilled(tmp_path, s0, s1):
    counts, group = _screen()
    groups = 3
    sf = np.random.default_rng(1).uniform(0.5, 2.0, group.size)
    at = summaries.atoms(group, sf, np.zeros((group.size, 0)), True, groups)
    kept = _store(counts, group, None, 41)
    spilled = _store(counts, group, str(tmp_path / "spill"), 23)
    assert spilled.n_slabs == 4
    y, cell, ptr = _expected(counts, group, kept.bounds[s0], kept.bounds[s1], groups)
    for store in (kept, spilled):
        block = summaries.build_block(store, s0, s1, group, at)
        np.testing.assert_array_equal(block.nz_ptr, ptr)
        np.testing.assert_array_equal(block.nz[:, 1], y)
        np.testing.assert_array_equal(block.nz[:, 0], at.cell_rank[cell])
        np.testing.assert_array_equal(at.cell_logs[block.nz[:, 0]], np.log(sf[cell]))


def test_cells_are_ranked_in_group_order():
    """Gene blocks name cells by rank: analysed cells group by group, in file order."""
    _, group = _screen()
    at = summaries.atoms(group, np.ones(group.size), np.zeros((group.size, 0)), True, 3)
    ranked = np.flatnonzero(group >= 0)[np.argsort(group[group >= 0], kind="stable")]
    np.testing.assert_array_equal(at.cell_rank[ranked], np.arange(ranked.size))
    assert (at.cell_rank[group < 0] == -1).all()
