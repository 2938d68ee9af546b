"""Views over stored records: one module per study, each defining
``build(records_dir, out_dir=None) -> Path`` that regenerates the study's report (markdown
plus figures) from its records alone. ``loglinear report STUDY DIR`` dispatches here."""

from __future__ import annotations

import importlib
import pkgutil


def available() -> list[str]:
    """Names of the studies that have a report builder."""
    return sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_"))


def build(study: str, records_dir, out_dir=None):
    """Regenerate the report of ``study`` from ``records_dir``."""
    if study.replace("-", "_") not in available():
        raise ValueError(f"no report builder for {study!r}; available: {available()}")
    return importlib.import_module(f"{__name__}.{study.replace('-', '_')}").build(records_dir,
                                                                                   out_dir)
