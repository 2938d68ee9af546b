"""The estimation-rate study: errors of every estimator against n, coverage and radius
schedules. ``run`` holds the config and the resumable runner, ``analysis`` turns the
records into the tables the report formats."""

from .run import (
    NO_SCHEDULE,
    ROW_COLUMNS,
    ROW_KEY,
    TARGET_COLUMNS,
    TARGET_KEY,
    EnvSpec,
    RatesConfig,
    Schedule,
    environment,
    hyperparameters,
    main,
)

__all__ = ["NO_SCHEDULE", "ROW_COLUMNS", "ROW_KEY", "TARGET_COLUMNS", "TARGET_KEY", "EnvSpec",
           "RatesConfig", "Schedule", "environment", "hyperparameters", "main"]
