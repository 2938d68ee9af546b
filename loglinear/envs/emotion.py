r"""The emotion environment: log-linear policies over a real language model's completions
(docs/theory.md §10).

State s is a story opening, action a one of its K stored completions. The policy class is

.. math:: \pi_\theta(a \mid s) \propto \pi_{ref}(a \mid s)\,\exp(\theta\cdot\psi(s, a)),

with :math:`\pi_{ref}` the reference model's sequence probabilities renormalised over the K
candidates (``reference="model"``; ``"uniform"`` drops them) and :math:`\psi` the first
``dim`` principal components of the within-prompt centred features, scaled by one constant
so that :math:`\max\|\psi\| = 1` over both splits (the two splits share one parameter space).
Rewards are the emotion probe's probabilities mixed at ``alpha``
(:func:`loglinear.rewards.mix_rewards`), times ``reward_scale`` :math:`\kappa` in the
Bradley–Terry labels, :math:`P(a_1 \succ a_2) = \sigma(\kappa\,[r_\alpha(a_1) - r_\alpha(a_2)])`.
Pairs are two candidates drawn uniformly (the candidates are themselves draws from the
reference model).
"""

from __future__ import annotations

import numpy as np

from ..env import LogLinearEnv
from ..rewards import SCORE_FLOOR, mix_rewards
from .artifact import load_artifact

FEATURES = ("minilm", "hidden")
SPLITS = {"train": 0, "heldout": 1}
REFERENCES = ("model", "uniform")


def _split(arrays, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return arrays["split"] == SPLITS[split]


def emotion_reward(alpha: float, *, split: str = "train", kind: str = "convex",
                   pair=("anger", "fear"), path=None) -> np.ndarray:
    """(S, A) the probe's reward mixture r_alpha of ``pair`` on ``split`` (probabilities,
    floored at SCORE_FLOOR for the geometric mixture)."""
    arrays, _ = load_artifact(path)
    classes = [str(c) for c in arrays["classes"]]
    for c in pair:
        if c not in classes:
            raise ValueError(f"unknown emotion {c!r}; the artifact has {classes}")
    scores = np.asarray(arrays["scores"][_split(arrays, split)], float)
    if kind == "geometric":
        scores = np.maximum(scores, SCORE_FLOOR)
    return mix_rewards(scores[..., classes.index(pair[0])], scores[..., classes.index(pair[1])],
                       alpha, kind=kind)


def projected_features(*, dim: int | None = 8, features: str = "minilm", path=None
                       ) -> np.ndarray:
    """(P, K, dim) psi of every prompt of the artifact (both splits), max norm 1."""
    arrays, _ = load_artifact(path)
    if features not in FEATURES or features not in arrays:
        have = [f for f in FEATURES if f in arrays]
        raise ValueError(f"features must be one of {have}, got {features!r}")
    f = np.asarray(arrays[features], float)
    f = f - f.mean(axis=1, keepdims=True)
    pcs = np.asarray(arrays["pca_" + features], float)
    if dim is not None:
        if not 1 <= dim <= pcs.shape[1]:
            raise ValueError(f"dim must lie in [1, {pcs.shape[1]}] (or None for all "
                             f"{f.shape[-1]}), got {dim}")
        f = f @ pcs[:, :dim]
    return f / np.linalg.norm(f, axis=-1).max()


def emotion(*, split: str = "train", dim: int | None = 8, features: str = "minilm",
            alpha: float = 0.1, kind: str = "convex", pair=("anger", "fear"),
            reward_scale: float = 10.0, beta: float = 1.0, reference: str = "model",
            path=None) -> LogLinearEnv:
    """The :class:`LogLinearEnv` of the committed emotion artifact (or the one at ``path``).

    Args:
        split: ``"train"`` (500 prompts) or ``"heldout"`` (120 prompts).
        dim: principal components kept (1..128), or None for the full feature vector.
        features: ``"minilm"`` (all-MiniLM-L6-v2 of prompt + completion, 384-d) or
            ``"hidden"`` (the reference model's mean-pooled last hidden state).
        alpha, kind, pair: the reward r_alpha (see :func:`emotion_reward`).
        reward_scale: kappa, the Bradley–Terry scale of the probe's probabilities; the
            environment's reward table is kappa * r_alpha.
        beta: the DPO temperature.
        reference: ``"model"`` (the reference model's renormalised sequence probabilities)
            or ``"uniform"``.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if not (np.isfinite(reward_scale) and reward_scale > 0):
        raise ValueError(f"reward_scale must be a positive number, got {reward_scale}")
    arrays, _ = load_artifact(path)
    rows = _split(arrays, split)
    psi = projected_features(dim=dim, features=features, path=path)[rows]
    table = reward_scale * emotion_reward(alpha, split=split, kind=kind, pair=pair, path=path)
    logp = np.asarray(arrays["logp"][rows], float) if reference == "model" else None
    return LogLinearEnv.from_arrays(psi, reward=table, beta=beta, ref_logprobs=logp)
