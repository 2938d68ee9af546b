"""The approximation study: the paper's WDPO and KLDPO surrogates against the exact robust
optima, over radii up to collapse. ``run`` holds the config, the runner and the exponent
fits."""

from .run import (
    DIVERGENCE_SPECS,
    VARIANTS,
    ApproxStudyConfig,
    Divergence,
    environments,
    fit_exponents,
    load_config,
    main,
)

__all__ = ["DIVERGENCE_SPECS", "VARIANTS", "ApproxStudyConfig", "Divergence", "environments",
           "fit_exponents", "load_config", "main"]
