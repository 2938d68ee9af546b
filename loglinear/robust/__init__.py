"""Exact distributionally robust DPO: KL and Wasserstein balls, solved through convex duals.

Dedicated solvers (profiled Newton, closed forms, exact 1-D inner suprema) are the
default; cvxpy + Clarabel formulations are kept as the independent cross-check and as a
documented fallback. cvxpy is imported only when a cvxpy method runs.
"""

from ._base import RobustResult, RobustSolverError, Transport, Verification
from .kl import KLValue, collapse_radius_kl, kl_value, solve_kl
from .wasserstein import (
    WassersteinValue,
    collapse_radius_wasserstein,
    solve_wasserstein,
    wasserstein_value,
)

__all__ = [
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
