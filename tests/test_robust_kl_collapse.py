"""KL-robust DPO just below its collapse radius (issue: the last solver failures).

Near rho_0 the optimum shrinks linearly with the gap rho_0 - rho, and every loss sits within
rounding of log 2; the solver works with the losses shifted by the kink loss
(``_klvalue.shifted_losses``) and starts from the exact minimiser along the collapse
direction. References: the linear law of the optimum in the gap (a first-order expansion
of the dual around the kink, docs/theory.md §3.2), the collapse direction itself, and
Clarabel at a gap where it is accurate.
"""

from __future__ import annotations

import numpy as np
import pytest

from loglinear import PreferenceData
from loglinear.losses import softplus
from loglinear.robust import collapse_radius_kl, kl_value, solve_kl
from loglinear.robust._klcollapse import collapse_direction
from loglinear.robust._klvalue import shifted_losses

GAPS = [1e-3, 1e-6, 1e-8, 1e-10, 1e-12]


def _issue_data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 2))
    y = (rng.random(40) < 0.6).astype(float)
    return PreferenceData(x, y)


def test_shifted_losses_match_extended_precision():
    from decimal import Decimal, getcontext

    getcontext().prec = 400     # 1 + e^{-1e-300} must not round to 2
    m = np.array([1e-300, -3e-17, 2.5e-9, -0.4, 0.999, 1.0, -1.5, 40.0, -800.0])
    for mk in (0.0, 0.3):
        got = shifted_losses(m, mk)
        for mi, g in zip(m, got):
            ref = (1 + (-Decimal(mi)).exp()).ln() - (1 + (-Decimal(mk)).exp()).ln()
            assert abs(g - float(ref)) <= 4e-16 * max(abs(float(ref)), 1e-300), (mi, mk, g)
    np.testing.assert_allclose(shifted_losses(np.array([0.7]), 0.0),
                               softplus(-np.array([0.7])) - np.log(2), rtol=1e-15)


@pytest.mark.parametrize("gap", GAPS)
def test_optimum_below_collapse_is_resolved_and_linear_in_the_gap(gap):
    data = _issue_data()
    rho0 = collapse_radius_kl(data, beta=1.0)
    g1, g2 = 1e-4, 2e-4
    t1 = solve_kl(data, beta=1.0, radius=(1 - g1) * rho0).theta
    t2 = solve_kl(data, beta=1.0, radius=(1 - g2) * rho0).theta
    res = solve_kl(data, beta=1.0, radius=(1 - gap) * rho0)
    assert res.status == "converged" and res.certificate <= 1e-8
    # theta*(g) = c g + c2 g^2 + O(g^3): Richardson on g1, g2 gives c to ~1e-8, which
    # predicts every smaller gap; the gap itself is only known to ~eps rho_0 / (gap rho_0)
    slope = 2 * t1 / g1 - t2 / g2
    rtol = 2 * gap + 1e-6 + 200 * np.finfo(float).eps / gap
    np.testing.assert_allclose(res.theta, gap * slope, rtol=rtol,
                               atol=rtol * gap * np.linalg.norm(slope))
    # leaving along the collapse direction
    u = collapse_direction(data)
    cos = res.theta @ u / (np.linalg.norm(res.theta) * np.linalg.norm(u))
    assert cos > 1 - 1e-3
    # a genuine descent below V(0) = log 2, visible in the shifted value
    assert res.objective <= kl_value(np.zeros(2), data, beta=1.0, radius=res.radius).value


def test_near_collapse_agrees_with_clarabel_where_clarabel_is_accurate():
    pytest.importorskip("cvxpy")
    data = _issue_data()
    rho = (1 - 1e-2) * collapse_radius_kl(data, beta=1.0)
    ours = solve_kl(data, beta=1.0, radius=rho)
    ref = solve_kl(data, beta=1.0, radius=rho, method="cvxpy")
    assert ours.objective <= ref.objective + 1e-12
    np.testing.assert_allclose(ours.theta, ref.theta, atol=1e-6)


def test_at_and_beyond_collapse_is_collapsed():
    data = _issue_data()
    rho0 = collapse_radius_kl(data, beta=1.0)
    for rho in (rho0, rho0 * (1 + 1e-12), 2 * rho0):
        res = solve_kl(data, beta=1.0, radius=rho)
        assert res.status == "collapsed" and np.all(res.theta == 0)


def test_random_instances_just_below_collapse_never_fail():
    """Random data, uniform and Dirichlet weights, beta in {0.1, 1, 5}, at 0.999 and
    1 - 1e-6, 1 - 1e-10 of rho_0: every solve converges with a certificate, without the
    cvxpy fallback."""
    rng = np.random.default_rng(11)
    for k in range(12):
        n, d = int(rng.integers(5, 200)), int(rng.integers(1, 6))
        x = rng.normal(size=(n, d))
        y = (rng.random(n) < rng.uniform(0.3, 0.7)).astype(float)
        w = rng.dirichlet(np.ones(n)) if k % 2 else None
        data = PreferenceData(x, y, weight=w, normalize=w is not None)
        beta = (0.1, 1.0, 5.0)[k % 3]
        rho0 = collapse_radius_kl(data, beta=beta)
        if not np.isfinite(rho0):
            continue
        for f in (0.999, 1 - 1e-6, 1 - 1e-10):
            res = solve_kl(data, beta=beta, radius=f * rho0)
            assert res.status == "converged", (k, f, res.status)
            assert res.certificate <= 1e-6 and "fallback_reason" not in res.info


@pytest.mark.parametrize("seed", [2, 5, 30])
def test_degenerate_worst_case_on_the_ball_is_certified(seed):
    """Small separable data on the ball ||theta|| <= 5 at a radius beyond -log q(M): the
    maximal losses tie at the optimum and the worst case sits on them (lambda* = 0). The
    solver ends on the minimax KKT system: a worst case pi on the tied atoms (KL(pi||q) <=
    rho) with sum pi grad l + mu theta = 0. References: Clarabel's objective, and the
    certificate recomputed here from the returned worst case."""
    from test_solver_sweep import instance

    from loglinear.losses import margins, sigmoid
    from loglinear.robust._cvx import cvx_kl

    data, beta, _ = instance(seed)
    rho = 0.9
    res = solve_kl(data, beta=beta, radius=rho, bound=5.0)
    assert res.status == "converged" and res.certificate <= 1e-8
    assert res.info.get("degenerate") and res.dual == 0.0
    p = np.asarray(res.worst_case)
    keep = p > 0
    assert p.sum() == pytest.approx(1.0) and np.all(p >= 0)
    assert float(p[keep] @ np.log(p[keep] / data.weight[keep])) <= rho * (1 + 1e-9)
    m = margins(res.theta, data, beta=beta)
    grad = data.x.T @ (p * -sigmoid(-m) * data.sign * beta)
    assert np.linalg.norm(grad + res.bound_multiplier * res.theta) <= 1e-8
    theta_c, _ = cvx_kl(data, beta=beta, radius=rho, bound=5.0)
    ref = kl_value(theta_c, data, beta=beta, radius=rho).value
    assert res.objective <= ref + 1e-9
