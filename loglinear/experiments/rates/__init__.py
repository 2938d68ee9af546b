"""The estimation-rate study: errors of every estimator against n, coverage and radius
schedules. ``config`` holds the frozen config dataclasses, ``run`` the resumable runner
(``main(config, out) -> records directory``), ``analysis`` turns the records into the
tables the report formats (``analysis.write_tables(records_dir)``)."""

from .config import NO_SCHEDULE, EnvSpec, RatesConfig, Schedule
from .run import (
    ROW_COLUMNS,
    ROW_KEY,
    TARGET_COLUMNS,
    TARGET_KEY,
    environment,
    hyperparameters,
    main,
)

__all__ = ["NO_SCHEDULE", "ROW_COLUMNS", "ROW_KEY", "TARGET_COLUMNS", "TARGET_KEY", "EnvSpec",
           "RatesConfig", "Schedule", "environment", "hyperparameters", "main"]
