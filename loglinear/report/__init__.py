"""Views over stored records: one module per study, each defining
``build(records_dir, out_dir=None) -> Path`` that regenerates the study's report (markdown
plus figures) from its records alone. ``loglinear report STUDY DIR`` dispatches here, and
``loglinear report all`` rebuilds every committed report from :data:`COMMITTED`."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry


@dataclass(frozen=True)
class CommittedReport:
    """Where a committed report's records live and where its markdown goes, relative to
    the reports root (``reports/`` of the repository)."""

    study: str
    records: str
    out: str | None = None


COMMITTED: Registry[CommittedReport] = Registry("committed report")
for _r in (CommittedReport("rates", "rates/records", "."),
           CommittedReport("approx", "approximations"),
           CommittedReport("three_d", "three_d"),
           CommittedReport("beyond_loglinear", "beyond_loglinear/records"),
           CommittedReport("llm_shift", "llm_shift"),
           CommittedReport("remark3", "remark3/records", "."),
           CommittedReport("lm_shift_exact", "lm_shift_exact/records", ".")):
    COMMITTED.register(_r.study, _r)


def available() -> list[str]:
    """Names of the studies that have a report builder."""
    return sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_"))


def build(study: str, records_dir, out_dir=None):
    """Regenerate the report of ``study`` from ``records_dir``."""
    if study.replace("-", "_") not in available():
        raise ValueError(f"no report builder for {study!r}; available: {available()}")
    return importlib.import_module(f"{__name__}.{study.replace('-', '_')}").build(records_dir,
                                                                                   out_dir)


def build_all(root="reports", *, on_built=None) -> list[Path]:
    """Rebuild every committed report under ``root`` from its stored records, in place.

    Args:
        root: the reports folder (``reports/`` of a checkout).
        on_built: optional callback ``(study, path)`` after each report.

    Returns:
        The paths of the markdown files written.
    """
    root = Path(root)
    missing = [c.records for c in COMMITTED.values() if not (root / c.records).exists()]
    if missing:
        raise FileNotFoundError(f"{root} lacks the records of {missing}: run from the "
                                "repository root or pass the reports folder")
    paths = []
    for c in COMMITTED.values():
        out = None if c.out is None else root / c.out
        path = Path(build(c.study, root / c.records, out))
        paths.append(path)
        if on_built is not None:
            on_built(c.study, path)
    return paths
