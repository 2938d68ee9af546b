"""Reward mixtures for preference shift (the paper's emotion experiment, docs/theory.md §5.7)."""

from __future__ import annotations

import numpy as np


def mix_rewards(r1, r2, alpha: float, *, kind: str = "convex") -> np.ndarray:
    r"""Reward mixtures for preference shift (the paper's emotion experiment).

    ``convex``: alpha r1 + (1 - alpha) r2; ``geometric``: r1^alpha r2^(1-alpha), which
    needs positive rewards.
    """
    r1, r2 = np.asarray(r1, float), np.asarray(r2, float)
    if r1.shape != r2.shape:
        raise ValueError(f"reward tables differ in shape: {r1.shape} vs {r2.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if kind == "convex":
        return alpha * r1 + (1.0 - alpha) * r2
    if kind == "geometric":
        if np.any(r1 <= 0) or np.any(r2 <= 0):
            raise ValueError("the geometric mixture needs strictly positive rewards")
        return np.exp(alpha * np.log(r1) + (1.0 - alpha) * np.log(r2))
    raise ValueError(f"kind must be 'convex' or 'geometric', got {kind!r}")


# The geometric mixture takes logs of probabilities; a softmax can underflow to exactly 0 for
# very confident texts, so probability scores enter it floored at this value.
SCORE_FLOOR = 1e-6
