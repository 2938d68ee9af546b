"""Regressions of the exact solvers' last failures (W2 at small radii on separable data;
exact collapse at the Wasserstein collapse radius with offsets). KL just below its
collapse radius is in test_robust_kl_collapse.py."""

from __future__ import annotations

import numpy as np
import pytest

from loglinear import PreferenceData
from loglinear.robust import collapse_radius_wasserstein, solve_wasserstein
from loglinear.robust.w2 import w2_value


def _separable_w2_instance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 5))
    y = (rng.random(5) < 0.5).astype(float)
    return PreferenceData(x, y, weight=rng.dirichlet(np.ones(5)), normalize=True)


def test_w2_small_radius_on_separable_data_reaches_the_optimum():
    """Five atoms in five dimensions (separable), eps = 0.02 eps_0: the optimum sits on a
    kink of V where two atoms tie (|theta| ~ 20); the solver used to stop at its iteration
    limit 0.9% above it. References: the value Nelder-Mead found from a nearby start
    (0.0041953728675, 20k evaluations), the worst case's own primal value, and V convex:
    no point in random directions around the solution, at several scales, is lower."""
    data = _separable_w2_instance()
    eps = 0.02 * collapse_radius_wasserstein(data, beta=1.0, p=2)
    res = solve_wasserstein(data, beta=1.0, radius=eps, p=2)
    assert res.status == "converged" and res.certificate <= 1e-8
    assert res.objective == pytest.approx(0.0041953728675, abs=1e-12)
    assert res.verify().ok
    rng = np.random.default_rng(1)
    for scale in (1e-6, 1e-4, 1e-2):
        for _ in range(8):
            step = rng.normal(size=data.d)
            probe = res.theta + scale * np.linalg.norm(res.theta) * step / np.linalg.norm(step)
            assert w2_value(probe, data, beta=1.0, radius=eps).value >= res.objective - 1e-15


@pytest.mark.parametrize("p", [1, 2])
def test_exactly_at_the_collapse_radius_with_offsets_is_collapsed(p):
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n, d = int(rng.integers(3, 40)), int(rng.integers(1, 5))
        data = PreferenceData(rng.normal(size=(n, d)), (rng.random(n) < 0.5).astype(float),
                              offset=0.5 * rng.normal(size=n))
        eps0 = collapse_radius_wasserstein(data, beta=1.0, p=p)
        for eps in (eps0, eps0 * (1 + 1e-9), 3 * eps0):
            res = solve_wasserstein(data, beta=1.0, radius=eps, p=p)
            assert res.status == "collapsed" and np.all(res.theta == 0), (seed, eps / eps0)


def test_w1_finite_kappa_homotopy_on_duplicated_rows_with_offsets():
    x = np.array([[-1.40799417, -1.42040573], [0.3892998, -0.53387342],
                  [-1.53477067, 0.46784826], [-0.95711085, -0.88635482],
                  [1.48840665, 1.30925055]])
    o = np.array([-0.05894618, -0.44594468, 0.10074605, -0.54014475, -0.3450296])
    w = np.array([0.03670342, 0.15292165, 0.09546101, 0.10616617, 0.23374776,
                  0.01101102, 0.0458765, 0.0286383, 0.03184985, 0.07012433,
                  0.01101102, 0.0458765, 0.0286383, 0.03184985, 0.07012433])
    data = PreferenceData(np.vstack([x, x, -x]),
                          np.array([0., 0., 1., 0., 1., 1., 1., 0., 1., 0., 0., 0., 1., 0., 1.]),
                          offset=np.concatenate([o, o, -o]), weight=w, normalize=True)
    # the fast homotopy stalls at mu = 1e-4 here; the gentle one (larger first mu) does not
    res = solve_wasserstein(data, beta=1.0, radius=0.1, kappa=2.0, method="newton")
    assert res.status == "converged" and res.certificate <= 1e-8
    ref = solve_wasserstein(data, beta=1.0, radius=0.1, kappa=2.0, method="cvxpy")
    assert res.objective <= ref.objective + 1e-9
    assert abs(res.objective - ref.objective) <= 1e-7


# ----------------------------------------------------------- sweep instances that failed
def _sweep_instance(seed):
    from test_solver_sweep import instance

    return instance(seed)


@pytest.mark.parametrize("seed, frac", [(21, 0.02), (6, 0.02), (47, 0.02)])
def test_w2_optimum_on_many_kinks_is_certified(seed, frac):
    """Separable / nearly separable / duplicated data at 2% of eps_0: the optimum ties
    6-13 atoms between their two maxima (like support vectors); the smoothing path finds
    the tie set and the kink system certifies it. Reference: L-BFGS on the exact value
    from the certified point and from the DPO start never gets lower."""
    from scipy.optimize import minimize

    from loglinear.robust import wasserstein_value

    data, beta, _ = _sweep_instance(seed)
    eps = frac * collapse_radius_wasserstein(data, beta=beta, p=2)
    res = solve_wasserstein(data, beta=beta, radius=eps, p=2)
    assert res.status == "converged" and res.certificate <= 1e-8
    assert res.info["kink"].startswith("kink")

    def fg(th):
        ev = wasserstein_value(th, data, beta=beta, radius=eps, p=2)
        return ev.value, ev.grad

    for x0 in (res.theta, res.theta * 1.01 + 1e-3):
        out = minimize(fg, x0, jac=True, method="L-BFGS-B", options={"maxiter": 200})
        assert out.fun >= res.objective - 1e-10


def test_w1_finite_kappa_small_beta_far_start():
    """beta = 0.1 on nearly separable data: ||theta*|| ~ 26, the DPO start is far and the
    fast homotopy's first stage does not converge; the gentle one does (against cvxpy)."""
    data, beta, _ = _sweep_instance(14)
    kappa = float(np.random.default_rng(14).uniform(0.2, 2.0))
    eps = 0.1 * collapse_radius_wasserstein(data, beta=beta, p=1)
    res = solve_wasserstein(data, beta=beta, radius=eps, kappa=kappa, method="newton")
    assert res.status == "converged" and res.certificate <= 1e-8
    ref = solve_wasserstein(data, beta=beta, radius=eps, kappa=kappa, method="cvxpy")
    assert res.objective <= ref.objective + 1e-9


def test_w1_finite_kappa_collapse_is_certified_at_zero():
    """Below the kappa = inf collapse radius but beyond the finite-kappa one, the path
    runs into the kink at 0 (theta ~ mu) and stalls; theta = 0 is returned "collapsed"
    because the min-norm subgradient there (an SOCP over the free flips of the tied
    atoms) is 0. Reference: the exact value is minimal at 0 along random rays."""
    from loglinear.robust import wasserstein_value

    data, beta, _ = _sweep_instance(47)
    kappa = float(np.random.default_rng(47).uniform(0.2, 2.0))
    eps = 0.999 * collapse_radius_wasserstein(data, beta=beta, p=1)
    res = solve_wasserstein(data, beta=beta, radius=eps, kappa=kappa, method="newton")
    assert res.status == "collapsed" and not np.any(res.theta) and res.certificate <= 1e-10
    v0 = wasserstein_value(np.zeros(data.d), data, beta=beta, radius=eps, kappa=kappa).value
    rng = np.random.default_rng(0)
    for _ in range(20):
        u = rng.normal(size=data.d)
        for r in (1e-6, 1e-3, 1e-1):
            th = r * u / np.linalg.norm(u)
            assert wasserstein_value(th, data, beta=beta, radius=eps, kappa=kappa).value >= v0
