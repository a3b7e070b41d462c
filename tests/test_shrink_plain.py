"""The allocation-free search without covariates (nb/shrink.py `plain_*`) against the general
one: the same posterior, the same mode. (test_shrink.py tests shrink_pair, which takes the
plain path without covariates, against a dense optimiser and the reference.)"""

import math

import numpy as np
import pytest
from test_shrink import _moms, _small_block

from perturbglm.nb import shrink


def _pair(theta, scale, g, data):
    moms = _moms(g, data)
    return shrink.PlainPair(theta, 0, 1, shrink.counted_atoms(0, moms[0], data),
                            shrink.counted_atoms(1, moms[1], data), moms[1], scale, data)


def test_plain_posterior_is_the_posterior():
    """F, its gradient and M from `plain_posterior` are `posterior`'s: the same sums, the
    means formed as e^(theta + b) e^l instead of a e^(b + l), so they differ by rounding
    only: 1e-12 relative (of F ~1e2, gradients and informations ~1e0-1e2) or 1e-10 absolute
    (gradient entries that cancel to ~0)."""
    data = _small_block(3, 60, 0)[0]
    groups = np.array([0, 1])
    for g in range(4):
        for theta in (-2.0, 0.0, 1.5):
            for scale in (0.01, 0.3):
                pair = _pair(theta, scale, g, data)
                for b_c, beta in ((0.3, 0.05), (0.1, -0.2), (0.5, 0.9), (-0.2, -2.5)):
                    u = np.array([b_c, b_c + beta])
                    ref = shrink.posterior(u, theta, groups, _moms(g, data), scale, data)
                    value, g0, g1, m00, m01, m11 = shrink.plain_posterior(u[0], u[1], pair)
                    assert value == pytest.approx(ref.value, rel=1e-12, abs=1e-10)
                    np.testing.assert_allclose([g0, g1], ref.grad, rtol=1e-12, atol=1e-10)
                    np.testing.assert_allclose([[m00, m01], [m01, m11]], ref.info,
                                               rtol=1e-12, atol=1e-10)


def test_plain_climb_is_the_climb():
    """`plain_climb` takes `climb`'s steps: the same mode (1e-12, both converge to a step
    below FINAL_STEP = 1e-8, quadratically) and the same posterior SD from the factor of M
    (1e-10 relative), from either side of |beta| = S."""
    data = _small_block(5, 60, 0)[0]
    groups = np.array([0, 1])
    for g in range(4):
        for scale in (0.01, 0.05, 0.3, 1.0):
            pair = _pair(math.log(0.5), scale, g, data)
            for beta in (0.0, 1.0, -1.0):
                u = np.array([0.4, 0.4 + beta])
                ref, ref_value, L = shrink.climb(u, pair.theta, groups, _moms(g, data), scale,
                                                 data, -1.0)
                b_c, b_p, value, l00, l10, l11 = shrink.plain_climb(u[0], u[1], pair, -1.0)
                assert (b_c, b_p) == pytest.approx(tuple(ref), rel=0, abs=1e-12)
                assert value == pytest.approx(ref_value, rel=1e-12)
                np.testing.assert_allclose([l00, l10, l11], [L[0, 0], L[1, 0], L[1, 1]],
                                           rtol=1e-10)
