"""loglinear: distributionally robust DPO on log-linear policies.

The core imports numpy, scipy and (lazily) cvxpy only; torch lives in ``loglinear.torch``.
Heavy submodules are imported on first use, so ``import loglinear`` stays light.
"""

from __future__ import annotations

import importlib

from . import _compat
from .data import PreferenceData, as_generator
from .env import LogLinearEnv
from .estimation import coverage
from .fit import FitResult, SeparableDataError, fit_dpo
from .rewards import mix_rewards

_compat.install()

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    "solve_kl": "loglinear.robust",
    "solve_wasserstein": "loglinear.robust",
    "fit_wdpo": "loglinear.approx",
    "fit_kldpo": "loglinear.approx",
    "read_preferences": "loglinear.io",
}

__all__ = [
    "FitResult",
    "LogLinearEnv",
    "PreferenceData",
    "SeparableDataError",
    "as_generator",
    "coverage",
    "fit_dpo",
    "mix_rewards",
    *_LAZY,
]


# subpackages reachable as attributes (``loglinear.robust.solve_kl``) without an import
_SUBMODULES = ("approx", "inference", "io", "robust", "stats")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"loglinear.{name}")
    raise AttributeError(f"module 'loglinear' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names too, so that tab completion offers them before their first use
    return sorted((set(globals()) - {"annotations", "importlib"}) | set(__all__)
                  | set(_SUBMODULES))
