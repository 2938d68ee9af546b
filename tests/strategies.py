"""Bounded Hypothesis strategies over the library's domain objects."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from loglinear import LogLinearEnv, PreferenceData

seeds = st.integers(min_value=0, max_value=2**31 - 1)
betas = st.sampled_from([0.1, 0.5, 1.0, 2.0])


@st.composite
def preference_data(draw, *, n_min: int = 4, n_max: int = 30, d_min: int = 1, d_max: int = 4,
                    with_offset: bool = False, weighted: bool = True,
                    non_separable: bool = True) -> PreferenceData:
    """Small random weighted datasets with ||x|| <= 2 (feature differences).

    ``non_separable`` adds, for a random row, its label-flipped twin, so every direction
    that helps one pair hurts another and a finite minimiser exists.
    """
    seed = draw(seeds)
    n = draw(st.integers(n_min, n_max))
    d = draw(st.integers(d_min, d_max))
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d))
    x *= 2.0 / max(1.0, float(np.linalg.norm(x, axis=1).max()))
    y = (rng.random(n) < 0.5).astype(float)
    offset = rng.normal(0, 0.5, n) if with_offset else np.zeros(n)
    w = rng.uniform(0.1, 1.0, n) if weighted else np.ones(n)
    if non_separable:
        x = np.vstack([x, x, -x])
        y = np.concatenate([y, 1 - y, y])
        offset = np.concatenate([offset, offset, -offset])
        w = np.concatenate([w, 0.3 * w, 0.3 * w])
    return PreferenceData(x, y, offset, w, normalize=True)


@st.composite
def environments(draw, *, max_states: int = 4, max_actions: int = 4, max_dim: int = 3
                 ) -> LogLinearEnv:
    """Small random finite environments."""
    seed = draw(seeds)
    return LogLinearEnv.random(
        np.random.default_rng(seed),
        n_states=draw(st.integers(1, max_states)),
        n_actions=draw(st.integers(2, max_actions)),
        dim=draw(st.integers(1, max_dim)),
        beta=draw(betas),
        concentration=draw(st.sampled_from([0.0, 1.0, 3.0])),
        ref_scale=draw(st.sampled_from([0.0, 0.5])),
    )
