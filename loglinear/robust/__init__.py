"""Exact distributionally robust DPO: KL and Wasserstein balls, solved through convex duals
(docs/theory.md §3).

Dedicated solvers (profiled Newton, closed forms, exact 1-D inner suprema) are the
default; cvxpy + Clarabel formulations are kept as the independent cross-check and as a
documented fallback. cvxpy is imported only when a cvxpy method runs.

The balls form one table, :data:`BALLS`: a caller looks a ball up by name and calls its
``solve``, ``value`` and ``collapse_radius``, never branching on the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data import PreferenceData
from ..registry import Registry
from ._base import RobustResult, RobustSolverError, Transport, Verification
from .kl import KLValue, collapse_radius_kl, kl_value, solve_kl
from .wasserstein import (
    WassersteinValue,
    collapse_radius_wasserstein,
    solve_wasserstein,
    wasserstein_value,
)

__all__ = [
    "BALLS",
    "Ball",
    "KLValue",
    "RobustResult",
    "RobustSolverError",
    "Transport",
    "Verification",
    "WassersteinValue",
    "collapse_radius_kl",
    "collapse_radius_wasserstein",
    "kl_value",
    "solve_kl",
    "solve_wasserstein",
    "wasserstein_value",
]


@dataclass(frozen=True)
class Ball:
    """One ambiguity set: how to solve over it, evaluate it at a fixed theta, and find its
    collapse radius.

    Attributes:
        name: the registry key (``"kl"``, ``"w1"``, ``"w2"``).
        solve: ``solve(data, *, beta, radius, **options) -> RobustResult``.
        value: ``value(theta, data, *, beta, radius, ...)``: the exact worst case at a
            fixed theta (``.value``, ``.dual``, ``.grad``).
        collapse_radius: ``collapse_radius(data, *, beta) -> float``: the radius at and
            beyond which the robust optimum is theta = 0 (zero offsets only).
        options: the keyword options ``solve`` takes besides ``beta`` and ``radius``.
        methods: the values ``solve`` accepts for ``method``.
        doc: one line for listings.
    """

    name: str
    solve: Callable[..., RobustResult]
    value: Callable
    collapse_radius: Callable[..., float]
    options: frozenset[str]
    methods: frozenset[str]
    doc: str


# W1 and W2 are solve_wasserstein at a fixed order; W1 takes a finite label-flip cost
# through ``kappa`` (docs/theory.md §3.4).
def _solve_w1(data: PreferenceData, *, beta: float, radius: float, kappa: float = np.inf,
              bound: float | None = None, method: str = "auto") -> RobustResult:
    return solve_wasserstein(data, beta=beta, radius=radius, p=1, kappa=kappa, bound=bound,
                             method=method)


def _solve_w2(data: PreferenceData, *, beta: float, radius: float, bound: float | None = None,
              method: str = "auto") -> RobustResult:
    return solve_wasserstein(data, beta=beta, radius=radius, p=2, bound=bound, method=method)


def _value_w1(theta, data: PreferenceData, *, beta: float, radius: float,
              kappa: float = np.inf) -> WassersteinValue:
    return wasserstein_value(theta, data, beta=beta, radius=radius, p=1, kappa=kappa)


def _value_w2(theta, data: PreferenceData, *, beta: float, radius: float) -> WassersteinValue:
    return wasserstein_value(theta, data, beta=beta, radius=radius, p=2)


def _collapse_w1(data: PreferenceData, *, beta: float) -> float:
    # kappa = inf; a finite kappa collapses at or before it (docs/theory.md §3.6)
    return collapse_radius_wasserstein(data, beta=beta, p=1)


def _collapse_w2(data: PreferenceData, *, beta: float) -> float:
    return collapse_radius_wasserstein(data, beta=beta, p=2)


_ALL_METHODS = frozenset({"auto", "newton", "cvxpy"})

BALLS: Registry[Ball] = Registry("ball")
BALLS.register("kl", Ball(
    name="kl", solve=solve_kl, value=kl_value, collapse_radius=collapse_radius_kl,
    options=frozenset({"bound", "method"}), methods=_ALL_METHODS,
    doc="KL ball of radius rho around the data (docs/theory.md §3.1-3.2)"))
BALLS.register("w1", Ball(
    name="w1", solve=_solve_w1, value=_value_w1, collapse_radius=_collapse_w1,
    options=frozenset({"kappa", "bound", "method"}), methods=_ALL_METHODS,
    doc="type-1 Wasserstein ball; labels flip at cost kappa (docs/theory.md §3.3-3.4, §3.6)"))
BALLS.register("w2", Ball(
    name="w2", solve=_solve_w2, value=_value_w2, collapse_radius=_collapse_w2,
    options=frozenset({"bound", "method"}), methods=frozenset({"auto", "newton"}),
    doc="type-2 Wasserstein ball; labels never flip (docs/theory.md §3.5-3.6)"))
