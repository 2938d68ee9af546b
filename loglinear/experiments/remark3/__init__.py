"""The Remark 3 phase-diagram study (docs/theory.md §8): exponents against theta* and
against each estimator's own target under radius schedules rho_n = c n^-a, and the price of
a fast schedule, the certificate coverage. ``config`` holds the frozen config, ``fits`` the
table of estimators, ``run`` the resumable runner (``main(config, out) -> records
directory``), ``analysis`` turns the records into the tables the report formats
(``analysis.write_tables(records_dir)``)."""

from .config import Remark3Config, Setting
from .fits import FITS, Remark3Fit, certificate, get_fit
from .run import main, plan
from .units import ROW_COLUMNS, ROW_KEY, TARGET_COLUMNS, TARGET_KEY, environment, sample

__all__ = ["FITS", "ROW_COLUMNS", "ROW_KEY", "TARGET_COLUMNS", "TARGET_KEY", "Remark3Config",
           "Remark3Fit", "Setting", "certificate", "environment", "get_fit", "main", "plan",
           "sample"]
