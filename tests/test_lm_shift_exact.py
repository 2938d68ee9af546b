"""The exact preference-shift study on a small synthetic artifact: resumable records, exact
evaluations against hand computations, paired and matched-KL comparisons."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from loglinear.envs import emotion, emotion_reward
from loglinear.envs.artifact import write_artifact
from loglinear.experiments.lm_env.build import principal_directions
from loglinear.experiments.lm_shift_exact import ExactShiftConfig, main
from loglinear.experiments.lm_shift_exact import analysis as an
from loglinear.experiments.lm_shift_exact.units import parse_theta
from loglinear.fit import fit_dpo

CLASSES = ("anger", "fear", "joy", "sadness", "neutral")


def fake_artifact(path, *, train=12, heldout=5, K=4, D=6, seed=0):
    """Random arrays with the artifact's layout (features, log-probs, probe scores)."""
    rng = np.random.default_rng(seed)
    P = train + heldout
    f = rng.standard_normal((P, K, D))
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    split = np.repeat([0, 1], [train, heldout]).astype(np.int8)
    arrays = dict(prompts=np.array([f"p{i}" for i in range(P)]), split=split,
                  completions=np.array([[f"c{i}_{k}" for k in range(K)] for i in range(P)]),
                  logp=-rng.uniform(5, 30, (P, K)), n_tokens=np.full((P, K), 8, np.int16),
                  eos=np.zeros((P, K), bool), minilm=f.astype(np.float32),
                  scores=rng.dirichlet(np.full(5, 0.5), size=(P, K)),
                  classes=np.array(CLASSES),
                  pca_minilm=principal_directions(f[split == 0]).astype(np.float32))
    return write_artifact(arrays, path, config={"fake": True})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmx")
    art = fake_artifact(tmp / "fake.npz")
    config = ExactShiftConfig(n=[200, 2000], seeds=4, kinds=["convex"], dim=3,
                              fractions=[0.3], estimators=["kl", "w2", "wdpo", "kldpo"],
                              frontier=[0.5, 1.0, 2.0], artifact=str(art), reward_scale=5.0)
    out = main(config, tmp / "records", jobs=1, progress=False)
    return config, out


def test_records_are_complete_exact_and_resumable(study):
    config, out = study
    rec = pd.read_csv(out / "records.csv")
    per_sample = len(config.frontier) + len(config.estimators) * len(config.fractions)
    assert len(rec) == len(config.n) * config.seeds * per_sample
    assert rec.status.isin(["converged", "collapsed"]).all()
    # the DPO frontier is t times DPO's estimate
    d = rec[(rec.estimator == "dpo") & (rec.n == 200) & (rec.seed == 0)].set_index("t")
    np.testing.assert_allclose(parse_theta(d.loc[2.0, "theta"]),
                               2 * parse_theta(d.loc[1.0, "theta"]), rtol=1e-15)
    # a rerun adds nothing and rewrites nothing
    before = (out / "records.csv").read_bytes()
    main(config, out, jobs=1, progress=False)
    assert (out / "records.csv").read_bytes() == before


def test_evaluations_match_a_hand_computation(study):
    config, out = study
    rec = pd.read_csv(out / "records.csv")
    row = rec[(rec.estimator == "kl") & (rec.n == 2000)].iloc[0]
    theta = parse_theta(row.theta)
    held = emotion(split="heldout", dim=3, path=config.artifact)
    logits = held.base_logits + held.features @ theta
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r1 = emotion_reward(1.0, split="heldout", path=config.artifact)
    assert row["reward_a1"] == pytest.approx(np.mean((p * r1).sum(1)), rel=1e-12)
    p0 = np.exp(held.base_logits)
    assert row.kl_ref == pytest.approx(np.mean((p * np.log(p / p0)).sum(1)), rel=1e-9)


def test_targets_and_oracles_are_population_fits(study):
    config, out = study
    tg = pd.read_csv(out / "targets.csv")
    orc = pd.read_csv(out / "oracles.csv")
    env = emotion(dim=3, alpha=config.alpha_o, reward_scale=5.0, path=config.artifact)
    star = fit_dpo(env.population(centered=True), beta=1.0, gtol=1e-12).theta
    np.testing.assert_allclose(parse_theta(tg[tg.estimator == "dpo"].theta.iloc[0]), star,
                               atol=1e-7)
    # the oracle at alpha_o is trained on the same labels as theta*
    at_o = orc[np.isclose(orc.alpha, config.alpha_o)].iloc[0]
    np.testing.assert_allclose(parse_theta(at_o.theta), star, atol=1e-7)
    assert len(orc) == len(config.alphas) and orc.status.eq("converged").all()


def test_gains_and_paired_differences_by_hand(study):
    config, out = study
    frames = an.load(out)
    f = an.fits(frames)
    o = frames["oracles"].set_index("alpha")
    row = f[(f.estimator == "w2")].iloc[0]
    by_hand = (row.reward_a1 - o.loc[1.0, "ref_reward"]) / (o.loc[1.0, "reward"]
                                                            - o.loc[1.0, "ref_reward"])
    assert row.gain_a1 == pytest.approx(by_hand, rel=1e-12)
    p = an.paired(frames)
    sel = p[(p.estimator == "w2") & (p.n == 2000) & (p.comparison == "shift_same_beta")]
    w2 = f[(f.estimator == "w2") & (f.n == 2000)].set_index("seed").gain_a1
    dpo = f[(f.estimator == "dpo") & (f.n == 2000)].set_index("seed").gain_a1
    diff = (w2 - dpo).to_numpy()
    half = 3.182446305284263 * diff.std(ddof=1) / 2.0   # t_{0.975, 3} s / sqrt(4)
    assert sel["mean"].iloc[0] == pytest.approx(diff.mean(), rel=1e-12)
    assert sel.hi.iloc[0] - sel["mean"].iloc[0] == pytest.approx(half, rel=1e-9)


def test_matched_kl_interpolates_the_dpo_frontier():
    front = pd.DataFrame(dict(kl_ref=[0.1, 0.4, 1.6], g=[0.2, 0.5, 0.6]))
    # halfway in log KL between 0.1 and 0.4 is 0.2
    assert an._at_kl(front, 0.2, "g") == pytest.approx(0.35)
    assert np.isnan(an._at_kl(front, 5.0, "g")) and np.isnan(an._at_kl(front, 0.01, "g"))


def test_config_refuses_bad_designs(tmp_path):
    with pytest.raises(ValueError, match="alphas must contain"):
        ExactShiftConfig(alphas=[0.0, 0.5])
    with pytest.raises(ValueError, match="robust estimators"):
        ExactShiftConfig(estimators=["dpo"])
    with pytest.raises(ValueError, match="kinds"):
        ExactShiftConfig(kinds=["linear"])
    art = fake_artifact(tmp_path / "a.npz")
    config = ExactShiftConfig(n=[50], seeds=1, kinds=["convex"], dim=2, fractions=[0.3],
                              estimators=["kl"], frontier=[1.0], artifact=str(art))
    main(config, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="different design"):
        main(replace(config, dim=3), tmp_path / "r", progress=False)


def test_report_builds_from_the_records(study, tmp_path):
    pytest.importorskip("matplotlib")
    from loglinear import report

    config, out = study
    path = report.build("lm_shift_exact", out, tmp_path)
    text = path.read_text()
    assert "## 5. Verdict" in text and "paired by seed" in text
    for fig in ("alpha_sweep.png", "paired.png", "frontier.png"):
        assert (tmp_path / "lm_shift_exact" / fig).exists()
    assert report.build("lm_shift_exact", out, tmp_path).read_text() == text
