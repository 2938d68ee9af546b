"""The 3D-properties study: a log-linear toy trained by gradient steps, with exact
diagnostics of pi(chosen), pi(rejected) and the unseen mass (docs/theory.md §6).

``config`` holds the study's config classes, ``dynamics`` the trainer and the diagnostics,
``run`` the toy and the runner (config -> records), ``analysis`` and ``summary`` the tables
computed from the records, and ``lm_probe`` the same diagnostics on a causal LM (torch)."""

from .analysis import property_onsets
from .config import (
    SCENARIOS,
    LMConfig,
    Method,
    ThreeDConfig,
    Thresholds,
    ToyConfig,
    TrainingConfig,
    Variant,
)
from .run import main, run_method, simulate, toy_setting, trajectories

__all__ = ["LMConfig", "SCENARIOS", "Method", "Thresholds", "ThreeDConfig", "ToyConfig",
           "TrainingConfig", "Variant", "main", "property_onsets", "run_method", "simulate",
           "toy_setting", "trajectories"]
