"""The W2 fixed-theta value where its multiplier search is hard: eta* at a jump of t(eta)
(an atom tied between its two local maxima), duplicated atoms, margins so large that every
sigma(u) underflows. Checked by weak duality (the value is the minimum of the convex dual
in eta and the loss of a worst case that spends the budget), against a plain bisection
for eta*, and the inner supremum against itself from cold starts."""

from __future__ import annotations

import numpy as np
import pytest

from loglinear import PreferenceData
from loglinear.losses import margins, softplus
from loglinear.robust import _w2inner, _w2value, collapse_radius_wasserstein
from loglinear.robust._w2inner import inner_sup, tie_eta
from loglinear.robust.w2 import w2_value

ROUND_RTOL = 1e-13      # float64 sums of a few terms of size ~ the value
# The reproducer: at the solver's optimum two atoms tie at eta* (a kink of V).
KINK_THETA = np.array([14.26679773, -13.03417749, 1.42642294, 4.80519651, -5.21767694])


def _reproducer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 5))
    y = (rng.random(5) < .5).astype(float)
    data = PreferenceData(x, y, weight=rng.dirichlet(np.ones(5)), normalize=True)
    return data, 0.02 * collapse_radius_wasserstein(data, beta=1.0, p=2)


def _separable(seed, n, dup=False, offset=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    if dup:
        x = np.vstack([x[: n // 2], x[: n - n // 2]])
    direction = rng.normal(size=3)
    y = (x @ direction > 0).astype(float)
    off = rng.normal(0, 0.3, n) if offset else None
    data = PreferenceData(x, y, weight=rng.dirichlet(np.ones(n)), normalize=True, offset=off)
    return data, direction


def _dual(theta, data, eps, eta):
    """eta eps^2 + sum_i q_i phi_i(eta): an upper bound on V(theta) at every eta > 0."""
    u = -margins(theta, data, beta=1.0)
    return eta * eps**2 + float(data.weight @ inner_sup(u, float(np.linalg.norm(theta)), eta)[0])


def _check_certificate(theta, data, eps):
    """Weak duality: the value is attained by a worst case within the budget and is no
    larger than the dual at any eta near eta*."""
    ev = w2_value(theta, data, beta=1.0, radius=eps)
    tr = ev.transport
    m = (2 * tr.y - 1) * (tr.x @ theta - data.offset[tr.source])
    attained = float(tr.weight @ softplus(-m))
    assert tr.cost == pytest.approx(eps**2, rel=1e-10)
    assert attained == pytest.approx(ev.value, rel=ROUND_RTOL, abs=ROUND_RTOL)
    for r in (1e-9, 1e-6, 1e-3, 0.1):
        for eta in (ev.dual * (1 - r), ev.dual * (1 + r)):
            assert ev.value <= _dual(theta, data, eps, eta) + ROUND_RTOL * abs(ev.value)
    return ev


def _bisect_eta(u, q, b, eps):
    """eta* by plain geometric bisection of eps^2 - sum q t(eta)^2 to the last bit."""
    lo, hi = 1e-12, 1e12
    while hi - lo > 4e-16 * hi:
        mid = np.sqrt(lo * hi)
        if eps**2 - float(q @ inner_sup(u, b, mid)[1] ** 2) > 0:
            hi = mid
        else:
            lo = mid
    return hi


def test_reproducer_kink_is_found_by_its_tie_in_few_evaluations(monkeypatch):
    data, eps = _reproducer()
    calls = []
    monkeypatch.setattr(_w2value, "inner_sup",
                        lambda *a, **k: calls.append(1) or inner_sup(*a, **k))
    ev = _check_certificate(KINK_THETA, data, eps)
    assert len(calls) <= 12        # a bisection to the jump takes ~60
    u = -margins(KINK_THETA, data, beta=1.0)
    ref = _bisect_eta(u, data.weight, float(np.linalg.norm(KINK_THETA)), eps)
    assert ev.dual == pytest.approx(ref, rel=1e-14)
    assert ev.transport.weight.size == data.n + 1     # one atom split between its maxima


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("frac", [0.02, 0.1, 0.5])
def test_separable_and_duplicated_values_are_certified(seed, frac):
    data, direction = _separable(seed, n=[3, 5, 12][seed % 3], dup=seed >= 3,
                                 offset=seed % 2 == 1)
    eps = frac * collapse_radius_wasserstein(data, beta=1.0, p=2)
    rng = np.random.default_rng(seed)
    for scale in (0.3, 3.0, 30.0):
        theta = scale * direction + 0.1 * rng.normal(size=3)
        ev = _check_certificate(theta, data, eps)
        u = -margins(theta, data, beta=1.0)
        ref = _bisect_eta(u, data.weight, float(np.linalg.norm(theta)), eps)
        assert ev.dual == pytest.approx(ref, rel=1e-12)


def test_every_sigma_underflowing_still_has_a_start():
    """Margins of thousands: sigma(u) = 0 for every atom, so the usual first guess for
    eta is 0 (this raised ValueError)."""
    data, direction = _separable(3, n=12, dup=True)
    theta = 300.0 * direction / np.linalg.norm(direction) * 10
    _check_certificate(theta, data, 0.05 * collapse_radius_wasserstein(data, beta=1.0, p=2))


def test_inner_sup_from_guesses_equals_cold_start():
    """Guesses from a nearby eta (good, poor, or on the other local maximum) change the
    work of the root search, not its result."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        u = rng.normal(0, rng.choice([0.5, 4.0, 30.0]), 40)
        b = float(rng.choice([0.1, 1.0, 10.0]))
        eta = float(rng.choice([0.01, 0.1, 0.2, 0.26, 1.0, 100.0])) * b * b / 2
        eta_prev = eta * float(rng.choice([0.5, 0.99, 1.0 + 1e-9, 2.0]))
        prev = inner_sup(u, b, eta_prev, slope=True)
        warm = inner_sup(u, b, eta, (prev[1], prev[3], prev[4], eta - eta_prev))
        cold = inner_sup(u, b, eta)
        np.testing.assert_allclose(warm[0], cold[0], rtol=ROUND_RTOL, atol=1e-300)
        np.testing.assert_allclose(warm[1], cold[1], rtol=1e-12, atol=1e-12)
        assert np.array_equal(np.isfinite(warm[2]), np.isfinite(cold[2]))


def test_inner_sup_in_blocks_equals_one_block(monkeypatch):
    rng = np.random.default_rng(4)
    u = rng.normal(0, 4, 1000)
    for b, eta in [(3.0, 0.4), (3.0, 3.0)]:     # two maxima; concave
        whole = inner_sup(u, b, eta, slope=True)
        monkeypatch.setattr(_w2inner, "BLOCK", 64)
        blocks = inner_sup(u, b, eta, slope=True)
        monkeypatch.undo()
        for a, c in zip(whole, blocks):
            np.testing.assert_allclose(a, c, rtol=1e-15, atol=0)


def test_tie_eta_is_the_root_of_the_gap():
    rng = np.random.default_rng(5)
    b = 4.0
    u = -rng.uniform(1.0, 6.0, 30)
    lo, hi = 1e-3, b * b / 8
    far = u + b * inner_sup(u, b, lo)[1] > 0
    near = u + b * inner_sup(u, b, hi)[1] <= 0
    u = u[far & near]
    assert u.size > 10
    eta = tie_eta(u, b, lo, hi)
    assert np.all(np.diff(eta[np.argsort(u)]) > 0)     # tie points rise with u
    for ui, ei in zip(u, eta):
        phi, _, alt_phi, _ = inner_sup(np.array([ui]), b, ei)
        assert alt_phi[0] == pytest.approx(phi[0], rel=ROUND_RTOL)
        for side, r in ((1, -1e-9), (-1, 1e-9)):      # far wins just below, near above
            phi, t, alt_phi, alt_t = inner_sup(np.array([ui]), b, ei * (1 + r))
            assert side * (t[0] - alt_t[0]) > 0
