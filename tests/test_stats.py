"""Contracts of loglinear.stats: power-law exponents and the seed bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from loglinear.stats import bootstrap_exponent, elasticity, fit_power_law, rmse

N_GRID = np.array([1e2, 1e3, 1e4, 1e5, 1e6])
EXACT_SLOPE_TOL = 1e-10   # noiseless power law: float64 round-off only
NOISY_SLOPE_TOL = 0.03    # 400 seeds, 20% log-normal noise


def test_exact_power_law_recovers_exponent():
    for b in (-0.5, -0.25, -1.0, 0.3):
        fit = fit_power_law(N_GRID, 3.7 * N_GRID**b)
        assert fit.slope == pytest.approx(b, abs=EXACT_SLOPE_TOL)
        assert fit.intercept == pytest.approx(np.log(3.7), abs=1e-9)
        assert fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_power_law_input_errors():
    with pytest.raises(ValueError, match="positive"):
        fit_power_law(N_GRID, np.zeros(5))
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="equal length"):
        fit_power_law(N_GRID, np.ones(4))


def _synthetic(rng, b, seeds, sigma=0.2):
    # Errors |N(0,1)| * n^b * lognormal noise: RMSE(n) = const * n^b exactly in expectation.
    z = np.abs(rng.standard_normal((N_GRID.size, seeds)))
    return 2.0 * N_GRID[:, None] ** b * z * np.exp(sigma * rng.standard_normal(z.shape))


@pytest.mark.parametrize("b", [-0.5, -0.25])
def test_bootstrap_ci_covers_known_exponent(b):
    rng = np.random.default_rng(1)
    e = _synthetic(rng, b, 400)
    ci = bootstrap_exponent(N_GRID, e, rng=np.random.default_rng(2), n_boot=500)
    assert abs(ci.estimate - b) < NOISY_SLOPE_TOL
    assert ci.lo <= b <= ci.hi
    assert ci.lo < ci.estimate < ci.hi
    # the two candidate rates of the paper are told apart with 400 seeds
    other = -0.25 if b == -0.5 else -0.5
    assert not (ci.lo <= other <= ci.hi)


def test_bootstrap_coverage_frequency():
    """Over independent studies, the 90% interval covers the true slope near 90%."""
    hits = 0
    trials = 60
    for t in range(trials):
        e = _synthetic(np.random.default_rng(100 + t), -0.5, 40)
        ci = bootstrap_exponent(N_GRID, e, rng=np.random.default_rng(t), n_boot=300, level=0.9)
        hits += ci.lo <= -0.5 <= ci.hi
    assert 0.75 <= hits / trials <= 1.0


def test_bootstrap_structure_and_determinism():
    e = _synthetic(np.random.default_rng(3), -0.5, 20)
    a = bootstrap_exponent(N_GRID, e, rng=np.random.default_rng(9), n_boot=200)
    b = bootstrap_exponent(N_GRID, e, rng=np.random.default_rng(9), n_boot=200)
    c = bootstrap_exponent(N_GRID, e, rng=np.random.default_rng(10), n_boot=200)
    assert a.samples.shape == (200,)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert (a.lo, a.hi) == (b.lo, b.hi)
    assert not np.array_equal(a.samples, c.samples)
    assert a.estimate == fit_power_law(N_GRID, rmse(e)).slope  # point estimate: all seeds
    assert a.se == pytest.approx(np.std(a.samples, ddof=1))


def test_bootstrap_slopes_match_naive_refits():
    """The vectorised replicate slopes equal refits with fit_power_law, one by one."""
    e = _synthetic(np.random.default_rng(4), -0.4, 15)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    ci = bootstrap_exponent(N_GRID, e, rng=rng_a, n_boot=50)
    idx = rng_b.integers(0, e.shape[1], size=(50, e.shape[1]))
    naive = [fit_power_law(N_GRID, rmse(e[:, i])).slope for i in idx]
    np.testing.assert_allclose(ci.samples, naive, rtol=0, atol=1e-12)


def test_rmse_ignores_failed_rows():
    e = np.array([[3.0, 4.0, np.nan]])
    assert rmse(e)[0] == pytest.approx(np.sqrt(12.5))


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match="errors must be"):
        bootstrap_exponent(N_GRID, np.ones((4, 3)), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="2 seeds"):
        bootstrap_exponent(N_GRID, np.ones((5, 1)), rng=np.random.default_rng(0))


def test_elasticity_is_log_log_slope():
    lam = np.array([0.01, 0.03, 0.1, 0.3])
    assert elasticity(1 / lam, 5 * lam**0.3).slope == pytest.approx(-0.3, abs=1e-12)
