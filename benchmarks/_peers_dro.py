r"""The robust problems of ``benchmarks/peers.py`` and how each peer package states them.

Every problem: zero offsets, uniform weights q_i = 1/n, beta = 1. A peer sees X = x, labels
s = 2y - 1 in {-1, +1} and no intercept, so its logistic loss log(1 + exp(-s x.theta)) is
the DPO loss softplus(-m), m = s beta (x.theta - o) (docs/theory.md §2.2), and its
coefficients are theta itself.

* KL (§3.1). ``dro`` (namkoong-lab), ``KLDRO(model_type="logistic", fit_intercept=False,
  solver="CLARABEL", eps=rho)``, minimises t + eta rho subject to
  eta exp((l_i - t)/eta) <= u_i (exponential cones) and sum_i u_i <= n eta, that is
  t >= eta log (1/n) sum_i exp(l_i/eta): the dual of sup{E_P l : KL(P || P_n) <= rho} over
  P << P_n, the empirical measure. This is ``solve_kl``'s V with q = 1/n and lambda = eta,
  exactly (their sum_i u_i <= n eta is the unscaled form of the q-weighted mean of §3.1).
* W1, kappa = inf (§3.3). ``dro``'s ``WassersteinDRO(model_type="logistic",
  fit_intercept=False, solver="CLARABEL")`` updated with eps = epsilon, p = 2,
  kappa = "inf": its p is the order of the ground NORM ||x - x'||_p (the transport is of
  order 1) and its cost matrix is the identity, so it minimises (1/n) sum_i s_i + eps lambda
  subject to s_i >= l_i and lambda >= ||theta||_2, i.e. L + eps ||theta||: ``solve_wasserstein``
  (p=1) exactly. ``skwdro``'s ``WDROLogisticSpecificSolver(rho=eps, kappa=1000,
  fit_intercept=False)`` is what its ``LogisticRegression(solver="dedicated")`` calls, with
  kappa fixed at 1000: the finite-kappa program below. With zero offsets no label flip pays
  once kappa >= max_i ||x_i|| (§3.4); the adapter checks that, so it is the same problem.
* W1, kappa = 1 (§3.4). ``dro`` with kappa = 1.0 adds s_i >= l(theta; x_i, -s_i) - kappa
  lambda; ``skwdro`` with kappa = 1.0 writes the same program one atom at a time in a python
  loop. Both are the conic program of §3.4 (cost ||x - x'||_2 + kappa 1[y != y']), exactly.
* W2 (§3.5). No peer: ``dro``'s p is the ground norm's order, so its logistic model has no
  type-2 ball, and ``skwdro``'s exact solver is of type 1 (its torch solvers solve an
  entropically smoothed problem, not this one).

Both peers build a cvxpy model and solve it with Clarabel (``dro`` names it; ``skwdro``
takes cvxpy's default, Clarabel for exponential cones). Radii are a fraction of each ball's
collapse radius (§3.2, §3.6), so every optimum is nontrivial; for kappa = 1 the fraction is
of the kappa = inf radius, which bounds the finite-kappa one from above (§3.6).
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from loglinear import PreferenceData
from loglinear.robust import (
    RobustResult,
    collapse_radius_kl,
    collapse_radius_wasserstein,
    kl_value,
    solve_kl,
    solve_wasserstein,
    wasserstein_value,
)

RADIUS_FRACTION = 0.3   # radius = RADIUS_FRACTION x the ball's collapse radius
THETA_ATOL = 1e-6       # equal accuracy: max |theta_peer - theta| <= THETA_ATOL ...
OBJ_RTOL = 1e-8         # ... and |objective_peer - objective| <= OBJ_RTOL |objective|
MATCH_RTOL = 1e-6       # the peer's objective must agree this well for the problems to match
REF_RTOL = 1e-12        # V(theta_peer) below ours by more than this: our reference is not optimal
SKWDRO_KAPPA = 1e3      # the label-flip cost skwdro's LogisticRegression(solver="dedicated") fixes

INSTALL_HINT = ("pip install --no-deps --target DIR dro skwdro cvxopt mechanic-pytorch "
                "prodigyopt sqwash, then run with PYTHONPATH=DIR")


@dataclass(frozen=True)
class PeerFit:
    """What a peer returns: its coefficients (d,) and the optimal value it reports."""

    theta: np.ndarray
    objective: float


def _load_dro():
    """dro's linear models alone. Its package ``__init__`` also imports the neural models
    (torch, torchvision), which these problems do not need: the package is registered as a
    bare namespace and ``dro.linear_model`` imported from it."""
    if "dro" not in sys.modules:
        spec = importlib.util.find_spec("dro")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("No module named 'dro'")
        package = types.ModuleType("dro")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["dro"] = package
    from dro.linear_model.kl_dro import KLDRO
    from dro.linear_model.wasserstein_dro import WassersteinDRO

    return types.SimpleNamespace(KLDRO=KLDRO, WassersteinDRO=WassersteinDRO)


def _load_skwdro():
    from skwdro.solvers.specific_solvers import WDROLogisticSpecificSolver

    return types.SimpleNamespace(logistic=WDROLogisticSpecificSolver)


LOADERS = {"dro": _load_dro, "skwdro": _load_skwdro}


def load_peers() -> dict[str, object]:
    """peer name -> its loaded namespace, or the exception that stopped the import."""
    out: dict[str, object] = {}
    for name, load in LOADERS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = load()
        except Exception as exc:   # missing, or a dependency of it is missing or broken
            out[name] = exc
    return out


def _labels(data: PreferenceData) -> np.ndarray:
    return 2.0 * data.y - 1.0


def _dro_kl(lib, data: PreferenceData, radius: float) -> PeerFit:
    model = lib.KLDRO(data.d, model_type="logistic", fit_intercept=False, solver="CLARABEL",
                      eps=radius)
    model.fit(data.x, _labels(data))
    return PeerFit(np.asarray(model.theta, dtype=float), float(model.robust_obj))


def _dro_w1(lib, data: PreferenceData, radius: float, *, kappa: float) -> PeerFit:
    model = lib.WassersteinDRO(data.d, model_type="logistic", fit_intercept=False,
                               solver="CLARABEL")
    model.update({"eps": radius, "p": 2, "kappa": "inf" if np.isinf(kappa) else kappa})
    model.fit(data.x, _labels(data))
    return PeerFit(np.asarray(model.theta, dtype=float), float(model.robust_obj))


def _skwdro_w1(lib, data: PreferenceData, radius: float, *, kappa: float) -> PeerFit:
    if np.isinf(kappa):
        # its dedicated solver has no kappa = inf; SKWDRO_KAPPA is the same problem here
        if np.linalg.norm(data.x, axis=1).max() > SKWDRO_KAPPA:
            raise ValueError(f"max ||x_i|| exceeds kappa = {SKWDRO_KAPPA:g}: label flips "
                             "would pay, so skwdro's problem is not the kappa = inf one")
        kappa = SKWDRO_KAPPA
    res = lib.logistic(rho=radius, kappa=kappa, X=data.x, y=_labels(data), fit_intercept=False)
    return PeerFit(np.asarray(res.coef, dtype=float), float(res.robust_loss))


@dataclass(frozen=True)
class Problem:
    """One robust problem: its radius, our solve, the exact value at any theta, and the
    peers that state it exactly (peer name -> adapter(lib, data, radius) -> PeerFit)."""

    name: str
    radius: Callable[[PreferenceData], float]
    solve: Callable[[PreferenceData, float], RobustResult]
    value: Callable[[np.ndarray, PreferenceData, float], float]
    peers: dict[str, Callable] = field(default_factory=dict)
    no_peer: str = ""


def _w_radius(data, p):
    return RADIUS_FRACTION * collapse_radius_wasserstein(data, beta=1.0, p=p)


def _w_problem(name, p, kappa, peers, no_peer=""):
    return Problem(
        name=name,
        radius=partial(_w_radius, p=p),
        solve=lambda data, r: solve_wasserstein(data, beta=1.0, radius=r, p=p, kappa=kappa),
        value=lambda th, data, r: wasserstein_value(th, data, beta=1.0, radius=r, p=p,
                                                    kappa=kappa).value,
        peers={peer: partial(fn, kappa=kappa) for peer, fn in peers.items()},
        no_peer=no_peer,
    )


PROBLEMS = (
    Problem(
        name="KL",
        radius=lambda data: RADIUS_FRACTION * collapse_radius_kl(data, beta=1.0),
        solve=lambda data, r: solve_kl(data, beta=1.0, radius=r),
        value=lambda th, data, r: kl_value(th, data, beta=1.0, radius=r).value,
        peers={"dro": _dro_kl},     # skwdro has no KL ball
    ),
    _w_problem("W1", 1, np.inf, {"dro": _dro_w1, "skwdro": _skwdro_w1}),
    _w_problem("W1 k=1", 1, 1.0, {"dro": _dro_w1, "skwdro": _skwdro_w1}),
    _w_problem("W2", 2, np.inf, {},
               "no peer: dro's p is its ground norm's order, skwdro's exact solver is W1"),
)
