"""The table of balls and the result it returns: every ball is reached by name and agrees
with a direct call of its solver; a RobustResult is built by keyword and never changes."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import numpy as np
import pytest

from loglinear import PreferenceData
from loglinear.registry import UnknownNameError
from loglinear.robust import (
    BALLS,
    RobustResult,
    RobustSolverError,
    collapse_radius_kl,
    collapse_radius_wasserstein,
    kl_value,
    solve_kl,
    solve_wasserstein,
    wasserstein_value,
)

KAPPA = 0.4


@pytest.fixture(scope="module")
def data() -> PreferenceData:
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (50, 3))
    return PreferenceData(x, (rng.random(50) < 1 / (1 + np.exp(-x @ [1.0, -0.5, 0.3]))
                              ).astype(float))


# name -> (direct solve, direct value, direct collapse radius, options for the table call)
DIRECT = {
    "kl": (lambda d, r, **o: solve_kl(d, beta=1.0, radius=r, **o),
           lambda th, d, r, **o: kl_value(th, d, beta=1.0, radius=r),
           lambda d: collapse_radius_kl(d, beta=1.0), {}),
    "w1": (lambda d, r, **o: solve_wasserstein(d, beta=1.0, radius=r, p=1, **o),
           lambda th, d, r, **o: wasserstein_value(th, d, beta=1.0, radius=r, p=1, **o),
           lambda d: collapse_radius_wasserstein(d, beta=1.0, p=1), {"kappa": KAPPA}),
    "w2": (lambda d, r, **o: solve_wasserstein(d, beta=1.0, radius=r, p=2, **o),
           lambda th, d, r, **o: wasserstein_value(th, d, beta=1.0, radius=r, p=2),
           lambda d: collapse_radius_wasserstein(d, beta=1.0, p=2), {}),
}


def test_the_table_holds_every_ball():
    assert sorted(BALLS) == sorted(DIRECT)
    for name, ball in BALLS.items():
        assert ball.name == name and ball.doc and "docs/theory.md" in ball.doc


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_a_ball_from_the_table_is_its_solver(name, data):
    ball = BALLS.get(name)
    solve, value, collapse, options = DIRECT[name]
    r0 = ball.collapse_radius(data, beta=1.0)
    assert r0 == collapse(data)
    res = ball.solve(data, beta=1.0, radius=0.4 * r0, **options)
    ref = solve(data, 0.4 * r0, **options)
    np.testing.assert_array_equal(res.theta, ref.theta)
    assert res.objective == ref.objective and res.status == ref.status
    # finite kappa collapses below the kappa = inf radius r0: then theta = 0 exactly
    assert res.status == ("collapsed" if not np.any(res.theta) else "converged")
    theta = np.array([0.3, -0.2, 0.1])
    assert ball.value(theta, data, beta=1.0, radius=0.4 * r0, **options).value == \
        value(theta, data, 0.4 * r0, **options).value


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_a_ball_declares_exactly_the_options_its_solve_takes(name):
    ball = BALLS.get(name)
    params = inspect.signature(ball.solve).parameters
    assert set(params) - {"data", "beta", "radius"} == set(ball.options)
    assert "method" in ball.options and ball.methods <= {"auto", "newton", "cvxpy"}


def test_an_unknown_ball_lists_the_registered_ones():
    with pytest.raises(UnknownNameError, match=r"unknown ball 'w3'.*'kl', 'w1', 'w2'"):
        BALLS.get("w3")


def test_a_result_is_built_by_keyword_and_frozen(data):
    res = solve_kl(data, beta=1.0, radius=0.01)
    fields = {f.name: getattr(res, f.name) for f in dataclasses.fields(res)}
    with pytest.raises(TypeError):
        RobustResult(*fields.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.status = "converged"          # type: ignore[misc]
    with pytest.raises(TypeError):
        res.info["iterations"] = 0        # type: ignore[index]
    with pytest.raises(AttributeError):
        res.info.pop("iterations")        # type: ignore[attr-defined]


def test_a_result_owns_its_info(data):
    info = {"iterations": 3}
    res = solve_kl(data, beta=1.0, radius=0.01)
    built = dataclasses.replace(res, info=info)
    info["iterations"] = 99
    assert built.info["iterations"] == 3 and dict(built.info) == {"iterations": 3}
    extended = dataclasses.replace(built, info={**built.info, "note": "x"})
    assert dict(built.info) == {"iterations": 3} and extended.info["note"] == "x"


def test_a_result_survives_pickle_and_deepcopy(data):
    res = solve_wasserstein(data, beta=1.0, radius=0.01, p=2)
    for other in (pickle.loads(pickle.dumps(res)), copy.deepcopy(res), copy.copy(res)):
        np.testing.assert_array_equal(other.theta, res.theta)
        assert other.objective == res.objective and dict(other.info) == dict(res.info)
        with pytest.raises(TypeError):
            other.info["x"] = 1           # type: ignore[index]
        assert other.verify()


@pytest.mark.parametrize("ball, module, solver", [("kl", "kl", "_newton_kl"),
                                                  ("w1", "wasserstein", "solve_w1_inf")])
def test_the_fallback_reason_is_recorded_in_a_new_result(ball, module, solver, data,
                                                         monkeypatch):
    """When the dedicated solver fails, ``method="auto"`` returns the cvxpy result with the
    reason in a new, equally read-only ``info``."""
    def fail(*args, **kwargs):
        raise RobustSolverError("forced failure")

    monkeypatch.setattr(f"loglinear.robust.{module}.{solver}", fail)
    res = BALLS.get(ball).solve(data, beta=1.0, radius=0.01)
    assert res.solver == "cvxpy-clarabel" and res.info["fallback_reason"] == "forced failure"
    assert "clarabel_status" in res.info
    with pytest.raises(TypeError):
        res.info["fallback_reason"] = ""  # type: ignore[index]
