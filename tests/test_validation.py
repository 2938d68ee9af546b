"""Bad input gets a clear error naming what was wrong (and nothing turns into NaN quietly).

One test per way in which a value used to get through: NaN or infinite environment
parameters, weights that overflow on normalisation, features whose scale the solvers
cannot handle, objects that are not a dataset, and NaN or negative values reaching the
torch losses.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from loglinear import LogLinearEnv, PreferenceData, as_generator, coverage
from loglinear.data import FEATURE_SCALE_RANGE, require_data
from loglinear.estimation import estimation_error


def _env_args(**bad):
    base = dict(features=np.full((2, 3, 2), 0.5), state_dist=np.array([0.5, 0.5]),
                sampling_policy=np.full((2, 3), 1 / 3), theta_ref=np.zeros(2), beta=1.0,
                omega=np.ones(2))
    return base | bad


def _with_nan(arr, index):
    arr = np.array(arr, dtype=float)
    arr[index] = np.nan
    return arr


@pytest.mark.parametrize("name, value", [
    ("state_dist", _with_nan([0.5, 0.5], 0)),
    ("sampling_policy", _with_nan(np.full((2, 3), 1 / 3), (1, 2))),
    ("omega", _with_nan([1.0, 1.0], 1)),
    ("theta_ref", _with_nan([0.0, 0.0], 0)),
    ("features", _with_nan(np.full((2, 3, 2), 0.5), (0, 0, 0))),
    ("beta", float("nan")),
])
def test_environment_rejects_nan_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        LogLinearEnv(**_env_args(**{name: value}))


def test_environment_rejects_a_nan_reward_table():
    table = _with_nan(np.zeros((2, 3)), (0, 1))
    with pytest.raises(ValueError, match="reward_table"):
        LogLinearEnv(**_env_args(omega=None, reward_table=table))


@pytest.mark.parametrize("name, value", [
    ("concentration", float("inf")), ("concentration", -1.0),
    ("reward_scale", float("nan")), ("ref_scale", float("inf")),
    ("spectrum", [1.0, np.nan, 1.0, 1.0]),
])
def test_random_environment_rejects_non_finite_settings(name, value):
    with pytest.raises(ValueError, match=name):
        LogLinearEnv.random(0, **{name: value})


@pytest.mark.parametrize("n", [100.7, 0, -3, True, float("nan"), "100"])
def test_sample_size_must_be_a_positive_integer(n):
    env = LogLinearEnv.random(0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        env.sample(n, 0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        env.sample_counts(n, 0)


def test_as_generator_accepts_seeds_and_refuses_the_rest():
    rng = np.random.default_rng(5)
    assert as_generator(rng) is rng
    for seed in (7, np.int64(7), np.random.SeedSequence(7)):
        assert as_generator(seed).random() == np.random.default_rng(7).random()
    for bad in (None, 1.5, True, np.random.RandomState(0), "7"):
        with pytest.raises(TypeError, match="integer seed"):
            as_generator(bad)
    with pytest.raises(ValueError, match="nonnegative"):
        as_generator(-1)


def test_huge_weights_normalise_exactly_instead_of_to_zero():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([1.0, 0.0, 1.0])
    big = PreferenceData(x, y, weight=np.array([1e308, 5e307, 1.5e308]), normalize=True)
    np.testing.assert_allclose(big.weight, np.array([2.0, 1.0, 3.0]) / 6.0, rtol=1e-15)
    with pytest.raises(ValueError, match="normalize=True"):
        PreferenceData(x, y, weight=np.full(3, 1e308))
    both = PreferenceData.concat([big, big], weights=[1e308, 1e308])
    np.testing.assert_allclose(both.weight, np.tile([2.0, 1.0, 3.0], 2) / 12.0, rtol=1e-15)
    assert big.subset([0, 2]).weight.tolist() == pytest.approx([0.4, 0.6], rel=1e-15)


@pytest.mark.parametrize("scale", [1e15, 1e-100, 1e300, 2.0 * FEATURE_SCALE_RANGE[1],
                                   0.5 * FEATURE_SCALE_RANGE[0]])
def test_features_outside_the_supported_scale_are_refused(scale):
    x = np.array([[1.0, -0.5], [0.2, 1.0], [-1.0, 0.3]]) * scale
    with pytest.raises(ValueError, match=r"max \|x\| = .* divide x by"):
        PreferenceData(x, np.array([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("scale", [*FEATURE_SCALE_RANGE, 0.0])
def test_features_at_the_edges_of_the_range_and_ties_are_accepted(scale):
    x = np.array([[1.0, -0.5], [0.2, 1.0]]) * scale
    assert PreferenceData(x, np.array([1.0, 0.0])).n == 2


def test_coverage_of_something_else_is_a_type_error():
    with pytest.raises(TypeError, match="must be a loglinear.PreferenceData, got ndarray"):
        coverage(np.eye(2))
    with pytest.raises(TypeError, match="PreferenceData"):
        LogLinearEnv.random(0).coverage(data={"x": np.eye(2)})
    with pytest.raises(TypeError, match="train_data must be"):
        require_data([1, 2], "train_data")


def test_estimation_error_does_not_overflow():
    assert estimation_error([1e200, -1e200], [0.0, 0.0]) == pytest.approx(
        np.sqrt(2.0) * 1e200, rel=1e-15)
    assert estimation_error([3.0, 4.0], [0.0, 0.0]) == 5.0
    assert estimation_error([1.0], [1.0]) == 0.0


def test_lazy_names_are_listed_before_their_first_use():
    code = ("import loglinear, sys; names = dir(loglinear); "
            "print(all(n in names for n in ('solve_kl', 'solve_wasserstein', 'fit_wdpo', "
            "'fit_kldpo', 'robust', 'approx'))); print('loglinear.robust' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "False"]
    import loglinear

    assert loglinear.robust.solve_kl is loglinear.solve_kl


# ---------------------------------------------------------------- torch backend
def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


@pytest.mark.parametrize("loss", ["dpo_loss", "ipo_loss"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_torch_losses_refuse_non_finite_log_ratios(loss, bad):
    torch = _torch()
    from loglinear.torch import losses

    c = torch.tensor([0.1, bad, 0.3])
    with pytest.raises(ValueError, match="chosen log-ratios contain 1 NaN or infinite"):
        getattr(losses, loss)(c, torch.zeros(3), beta=0.5)


def test_torch_weighted_mean_and_kldpo_refuse_nan_losses():
    torch = _torch()
    from loglinear.torch.losses import kldpo_objective, weighted_mean

    losses = torch.tensor([0.5, float("nan")])
    with pytest.raises(ValueError, match="losses contain 1 NaN"):
        weighted_mean(losses)
    with pytest.raises(ValueError, match="losses contain 1 NaN"):
        kldpo_objective(losses, tau=1.0, weights=torch.tensor([0.5, 0.5]))


def test_torch_wdpo_penalty_refuses_negative_or_nan_squared_norms():
    torch = _torch()
    from loglinear.torch.losses import wdpo_objective, wdpo_penalty

    with pytest.raises(ValueError, match="must be >= 0, found min -0.2"):
        wdpo_penalty(torch.tensor([1.0, -0.2]), rho=0.5)
    with pytest.raises(ValueError, match="grad_sq_norms contain 1 NaN"):
        wdpo_objective(torch.ones(2), torch.tensor([1.0, float("nan")]), rho=0.5)
    # a valid call still gives the closed form rho * sqrt(mean g)
    value = wdpo_penalty(torch.tensor([1.0, 3.0], dtype=torch.float64), rho=0.5)
    assert float(value) == pytest.approx(0.5 * np.sqrt(2.0), rel=1e-15)


def test_an_overflowing_population_optimum_is_refused():
    with pytest.raises(ValueError, match="overflows"):
        LogLinearEnv(**_env_args(omega=np.array([1e300, 0.0]), beta=1e-10))
