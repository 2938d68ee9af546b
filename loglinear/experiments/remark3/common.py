"""Small pieces the Remark 3 analysis and summary share."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

POOLED = "all"          # the setting column of rows pooled over settings


def wilson(k, m, level: float = 0.95) -> tuple[float, float]:
    r"""Wilson's score interval for a binomial proportion k / m:

    .. math::  \frac{\hat p + z^2/2m \pm z\sqrt{\hat p(1-\hat p)/m + z^2/4m^2}}{1+z^2/m}.

    ``(nan, nan)`` for m = 0."""
    k, m = float(k), float(m)
    if m <= 0:
        return np.nan, np.nan
    if not 0 <= k <= m:
        raise ValueError(f"need 0 <= k <= m, got k = {k}, m = {m}")
    z = float(norm.ppf(0.5 + 0.5 * level))
    p = k / m
    centre = (p + z * z / (2 * m)) / (1 + z * z / m)
    half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
    return max(0.0, centre - half), min(1.0, centre + half)
