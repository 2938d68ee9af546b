"""The results print compactly: a one-line ``repr`` and a short ``summary()``, with the numbers
a user reads (status, certificate, ||theta||, objective) equal to the fields they come from,
and no array dumped however large d is."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from loglinear.approx import fit_kldpo, fit_wdpo
from loglinear.data import PreferenceData
from loglinear.fit import fit_dpo
from loglinear.robust import (
    collapse_radius_kl,
    collapse_radius_wasserstein,
    solve_kl,
    solve_wasserstein,
)

D = 40          # the old dataclass reprs printed all D entries of theta (and n of the worst case)
MAX_REPR = 300
BETA = 1.0


@pytest.fixture(scope="module")
def data() -> PreferenceData:
    # n = 10 d noisy labels: not separable (Cover), so every fit has a finite minimiser
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10 * D, D)) / np.sqrt(D)
    y = (x @ np.full(D, 1.0) + rng.logistic(size=10 * D) > 0).astype(float)
    return PreferenceData(x, y)


@pytest.fixture(scope="module")
def results(data):
    rho0 = collapse_radius_kl(data, beta=BETA)
    eps1 = collapse_radius_wasserstein(data, beta=BETA, p=1)
    return {
        "fit": fit_dpo(data, beta=BETA),
        "kl": solve_kl(data, beta=BETA, radius=0.3 * rho0),
        "w1": solve_wasserstein(data, beta=BETA, radius=0.3 * eps1, p=1),
        "w2": solve_wasserstein(data, beta=BETA, radius=0.05, p=2),
        "wdpo": fit_wdpo(data, beta=BETA, rho=0.05),
        "kldpo": fit_kldpo(data, beta=BETA, tau=0.5),
    }


def _number(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r"\s*=?\s*([-+0-9.einaf]+)", text)
    assert match, f"{label!r} not in {text!r}"
    return float(match.group(1))


def _certificate(res) -> float:
    return float(getattr(res, "certificate", getattr(res, "grad_norm", np.nan)))


@pytest.mark.parametrize("name", ["fit", "kl", "w1", "w2", "wdpo", "kldpo"])
def test_repr_is_one_short_line_with_the_fields_it_names(results, name):
    res = results[name]
    text = repr(res)
    assert len(text) < MAX_REPR and "\n" not in text, text
    assert "[" not in text and "array" not in text     # no theta, weights or transport plan
    assert f"status={res.status!r}" in text
    label = "certificate=" if hasattr(res, "certificate") else "grad_norm="
    assert _number(text, label) == pytest.approx(_certificate(res), rel=1e-2)
    assert _number(text, "||theta||=") == pytest.approx(np.linalg.norm(res.theta), rel=1e-5)
    assert _number(text, "objective=") == pytest.approx(res.objective, rel=1e-5)
    assert _number(text, "seconds=") == pytest.approx(res.seconds, rel=1e-2)


@pytest.mark.parametrize("name, head", [("kl", "RobustResult(kl,"), ("w1", "RobustResult(w1,"),
                                        ("w2", "RobustResult(w2,"), ("fit", "FitResult(dpo,"),
                                        ("wdpo", "ApproxResult(wdpo/paper, rho="),
                                        ("kldpo", "ApproxResult(kldpo/paper, tau=")])
def test_repr_names_the_problem(results, name, head):
    res = results[name]
    assert repr(res).startswith(head)
    if hasattr(res, "radius"):
        assert _number(repr(res), "radius=") == pytest.approx(res.radius, rel=1e-5)
    if hasattr(res, "hyper"):
        label = {"wdpo": "rho=", "kldpo": "tau="}[res.surrogate]
        assert _number(repr(res), label) == pytest.approx(res.hyper, rel=1e-5)


def test_repr_shows_the_flip_cost_and_the_bound(data):
    res = solve_wasserstein(data, beta=BETA, radius=0.05, p=1, kappa=2.0, bound=3.0)
    assert repr(res).startswith("RobustResult(w1, kappa=2, bound=3,")
    assert "bound" in res.summary()


@pytest.mark.parametrize("name", ["fit", "kl", "w1", "w2", "wdpo", "kldpo"])
def test_summary_is_a_few_lines_with_status_and_size(results, name):
    res = results[name]
    text = res.summary()
    lines = text.splitlines()
    assert 3 <= len(lines) <= 10 and all(len(line) < 120 for line in lines), text
    assert res.status in lines[0] + lines[1]
    assert f"d = {D}," in text
    assert _number(text, "||theta|| =") == pytest.approx(np.linalg.norm(res.theta), rel=1e-5)


def test_kl_summary_reports_the_largest_worst_case_weight(results, data):
    res = results["kl"]
    p, q = np.asarray(res.worst_case), data.weight
    text = res.summary()
    assert _number(text, "pair weights, max") == pytest.approx(p.max(), rel=1e-3)
    assert _number(text, "max p/q") == pytest.approx((p / q).max(), rel=1e-3)
    assert f"{data.n} pair weights" in text


def test_wasserstein_summary_reports_the_transport(results):
    res = results["w2"]
    text = res.summary()
    assert f"{len(res.worst_case.weight)} atoms" in text
    assert _number(text, "transport cost") == pytest.approx(res.worst_case.cost, rel=1e-3)


def test_ipython_pretty_printing_shows_the_summary(results):
    pretty = pytest.importorskip("IPython.lib.pretty")
    for res in results.values():
        assert pretty.pretty(res) == res.summary()


def test_results_still_pickle(results):
    for res in results.values():
        back = pickle.loads(pickle.dumps(res))
        assert repr(back) == repr(res)
        np.testing.assert_array_equal(back.theta, res.theta)


def test_int_seeds_are_accepted_where_a_generator_is():
    """An int seed is what a user types: it must give what default_rng(seed) gives."""
    from loglinear.stats import bootstrap_exponent

    n = np.array([100.0, 300.0, 1000.0, 3000.0])
    err = np.array([[0.1, 0.06, 0.031, 0.018]] * 3).T * np.array([1.0, 1.1, 0.9])
    a = bootstrap_exponent(n, err, rng=3)
    b = bootstrap_exponent(n, err, rng=np.random.default_rng(3))
    assert repr(a) == repr(b)


def test_shift_config_refuses_non_integer_seeds():
    from loglinear.experiments.llm_shift.config import ShiftConfig

    with pytest.raises((ValueError, TypeError), match="seed"):
        ShiftConfig(seeds=(1.5,))
