"""Constants and small helpers shared by the rates analysis modules (no computation)."""

from __future__ import annotations

import numpy as np

BOOT = 2000                       # bootstrap replicates of every interval
BOOT_SEED = 20260522
ASYMPTOTIC_FROM = 1000            # the exponents the report states use n >= this
R2_MIN = 0.9                      # below this R^2 on log-log axes: "no power law"
HALF, QUARTER = -0.5, -0.25       # the exponents in question (docs/theory.md §5.5)
RATE_BAND = (-0.6, -0.4)          # an exponent in this open band counts as n^-1/2
COVERAGE_ELASTICITY = 0.5         # elasticity of the error if sqrt(tr H^-1 / n) is the scale
NEAR_COLLAPSE = 0.75              # collapse fractions in [0.75, 1) are "near" the collapse
SQRT_N, INVERSE_N = 0.5, 1.0      # schedule exponents of rho_n ~ n^-1/2 and rho_n ~ n^-1
KL_BIAS_ESTIMATOR = "kl"          # the estimator whose O(sqrt(rho)) bias the report discusses


def _schedules(cfg) -> dict:
    return {s["name"]: s for s in cfg.get("schedules", [])}


def schedule_exponent(cfg, schedule: str) -> float:
    """a in rho_n ~ n^-a of a schedule (0 for a fixed radius and for no schedule)."""
    return float(_schedules(cfg).get(schedule, {}).get("exponent", 0.0))


def collapse_fraction(cfg, schedule: str) -> float:
    """The schedule's radius as a fraction of the collapse radius (0 if not so set)."""
    return float(_schedules(cfg).get(schedule, {}).get("collapse_fraction") or 0.0)


def kind(cfg, schedule: str) -> str:
    """``"fixed"`` (a radius constant in n, DPO included) or ``"shrinking"``."""
    return "shrinking" if schedule_exponent(cfg, schedule) > 0 else "fixed"


def hyper_key(value) -> str:
    """The targets' key of a hyperparameter value (``""`` for none)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(v) if np.isfinite(v) else ""
