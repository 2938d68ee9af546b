"""One ``kldpo_weights`` per backend with one meaning (docs/theory.md §4.2): the numpy core
(:func:`loglinear.approx.kldpo_weights`) and the torch backend
(:func:`loglinear.torch.losses.kldpo_weights`) return the same effective pair weights W,
with W_i = P_i (paper) or W_i = q_i min(exp((l_i - l̄)/tau), cap) (official), on the same
losses and base weights, uniform or not, with the cap binding or not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TORCH_F64_TOL
from hypothesis import given, settings
from hypothesis import strategies as st

from loglinear import approx
from loglinear.torch import losses as tl

FORMS = ["paper", "official"]


def _inputs(seed: int, n: int, uniform: bool, spread: float):
    rng = np.random.default_rng(seed)
    losses = rng.exponential(spread, size=n)
    q = np.full(n, 1.0 / n) if uniform else rng.uniform(0.05, 1.0, size=n)
    return losses, q / q.sum()


def _both(losses, q, *, tau, form, cap=approx.OFFICIAL_CAP):
    want = approx.kldpo_weights(losses, q, tau=tau, form=form, cap=cap)
    got = tl.kldpo_weights(torch.tensor(losses), tau=tau, form=form, weight=torch.tensor(q),
                           cap=cap)
    return want, got.numpy()


@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 60), uniform=st.booleans(),
       tau=st.sampled_from([0.05, 0.3, 1.0, 5.0]), spread=st.sampled_from([0.1, 1.0, 4.0]))
def test_numpy_and_torch_weights_agree(form, seed, n, uniform, tau, spread):
    losses, q = _inputs(seed, n, uniform, spread)
    want, got = _both(losses, q, tau=tau, form=form)
    np.testing.assert_allclose(got, want, rtol=TORCH_F64_TOL, atol=TORCH_F64_TOL)


@pytest.mark.parametrize("form", FORMS)
def test_default_base_weights_are_uniform(form, rng):
    """torch's default q is 1/n; numpy takes q explicitly."""
    losses = rng.exponential(size=25)
    want = approx.kldpo_weights(losses, np.full(25, 1 / 25), tau=0.4, form=form)
    got = tl.kldpo_weights(torch.tensor(losses), tau=0.4, form=form).numpy()
    np.testing.assert_allclose(got, want, rtol=TORCH_F64_TOL, atol=TORCH_F64_TOL)


def test_official_weights_by_hand_with_a_binding_cap():
    """W_i = q_i min(exp((l_i - sum_j q_j l_j)/tau), cap) on both sides, non-uniform q, a
    cap that binds for some pairs and not others, and a cap other than the default."""
    losses, q = _inputs(3, 30, False, 2.0)
    tau, cap = 0.5, 4.0
    naive = q * np.minimum(np.exp((losses - q @ losses) / tau), cap)
    free = np.exp((losses - q @ losses) / tau) < cap
    assert free.any() and (~free).any()
    want, got = _both(losses, q, tau=tau, form="official", cap=cap)
    np.testing.assert_allclose(want, naive, rtol=TORCH_F64_TOL)
    np.testing.assert_allclose(got, naive, rtol=TORCH_F64_TOL)


def test_paper_weights_sum_to_one_and_official_ones_do_not():
    losses, q = _inputs(5, 40, False, 1.0)
    for side in _both(losses, q, tau=0.7, form="paper"):
        assert side.sum() == pytest.approx(1.0, abs=TORCH_F64_TOL)
    for side in _both(losses, q, tau=100.0, form="official"):   # uncapped: >= 1 by Jensen
        assert side.sum() >= 1.0 - TORCH_F64_TOL


def test_one_cap_name():
    assert tl.OFFICIAL_CAP == approx.OFFICIAL_CAP == 10.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tl.OFFICIAL_WEIGHT_CAP == approx.OFFICIAL_CAP
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


@pytest.mark.parametrize("form", FORMS)
def test_torch_objective_is_the_weighted_sum(form):
    """kldpo_objective = sum_i W_i l_i with the same W as numpy, for either form."""
    losses, q = _inputs(9, 20, False, 1.0)
    want = approx.kldpo_weights(losses, q, tau=0.6, form=form) @ losses
    got = tl.kldpo_objective(torch.tensor(losses), tau=0.6, form=form, weight=torch.tensor(q))
    assert float(got) == pytest.approx(want, rel=TORCH_F64_TOL)
