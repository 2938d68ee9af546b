"""Argument checks shared by the environment constructors: finite arrays of a stated shape,
positive integer counts, finite scalars. Each error names the argument and what is allowed."""

from __future__ import annotations

import numpy as np


def finite(name: str, value, shape=None) -> np.ndarray:
    """``value`` as a float array, checked finite (and of ``shape``), naming ``name``."""
    arr = np.asarray(value, dtype=float)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite entries; all must be finite")
    return arr


def count(n) -> int:
    """A positive integer number of pairs; 100.7 is refused rather than truncated."""
    ok = isinstance(n, (int, np.integer, float, np.floating)) and not isinstance(n, bool)
    if not ok or not np.isfinite(n) or not float(n).is_integer() or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def finite_scalar(name: str, value, *, lower: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not np.isfinite(v) or (lower is not None and v < lower):
        allowed = "a finite number" if lower is None else f"a finite number >= {lower:g}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return v
