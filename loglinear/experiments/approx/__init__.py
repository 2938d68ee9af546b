"""The approximation study: the paper's WDPO and KLDPO surrogates against the exact robust
optima, over radii up to collapse. ``config`` holds the frozen config and its loader,
``run`` the resumable runner (``main(config, out=None) -> records directory``),
``analysis`` the exponent fits and the tables the report formats
(``analysis.write_tables(records_dir)``)."""

from .analysis import fit_exponents, write_tables
from .config import ApproxStudyConfig, load_config
from .run import DIVERGENCE_SPECS, VARIANTS, Divergence, environments, main

__all__ = ["DIVERGENCE_SPECS", "VARIANTS", "ApproxStudyConfig", "Divergence", "environments",
           "fit_exponents", "load_config", "main", "write_tables"]
