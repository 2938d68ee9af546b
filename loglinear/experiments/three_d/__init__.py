"""The 3D-properties study: a log-linear toy trained by gradient steps, with exact
diagnostics of pi(chosen), pi(rejected) and the unseen mass.

``dynamics`` is the trainer and the diagnostics, ``run`` the config and the runner, and
``lm_probe`` the same diagnostics on a causal LM (torch)."""

from .run import (
    SCENARIOS,
    Method,
    ThreeDConfig,
    Thresholds,
    ToyConfig,
    TrainingConfig,
    Variant,
    main,
    property_onsets,
    run_method,
    simulate,
    toy_setting,
    trajectories,
)

__all__ = ["SCENARIOS", "Method", "Thresholds", "ThreeDConfig", "ToyConfig", "TrainingConfig",
           "Variant", "main", "property_onsets", "run_method", "simulate", "toy_setting",
           "trajectories"]
