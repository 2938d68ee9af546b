"""RobustDPOConfig + RobustDPOTrainer through TRL's public API, on a tiny offline GPT-2.

Contracts: every loss trains and logs TRL's metrics and its robust ones (finite, and tied
to each other by their formulas); the robust settings are saved with the run; TRL options
that would change the loss raise, naming the option; a per-pair ``weight`` column reaches
the loss and enters it as q_i = w_i / B (checked against naive formulas of the per-pair
pieces); a model with no reference gets a clear error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import DPOConfig  # noqa: E402

from loglinear.torch.models import byte_tokenizer, tiny_model  # noqa: E402
from loglinear.torch.trl import RobustDPOConfig, RobustDPOTrainer  # noqa: E402

FORMULA_TOL = 1e-5   # float32 forward, sums of a handful of terms
STEPS = 3
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
               "num_tokens", "base_loss")
ROBUST_METRICS = {"dpo": (), "ipo": (), "wdpo": ("wdpo/penalty", "wdpo/grad_sq_norm"),
                  "kldpo": ("kldpo/weight_max", "kldpo/ess_fraction")}
LOSS_KW = {"dpo": {}, "ipo": {}, "wdpo": {"rho": 0.5}, "kldpo": {"tau": 0.5}}


def _dataset(weight=None):
    letters = ["ab", "cde", "f", "gh", "ijk", "l", "mn", "opq"]
    cols = {"prompt": [s + ":" for s in letters], "chosen": [" " + s for s in letters],
            "rejected": [" " + s[::-1] + "z" for s in letters]}
    if weight is not None:
        cols["weight"] = list(weight)
    return datasets.Dataset.from_dict(cols)


def _base(tmp_path, **kw):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4,
                per_device_eval_batch_size=4, max_steps=STEPS, report_to=[], use_cpu=True,
                bf16=False, logging_steps=1, save_strategy="no", learning_rate=1e-2,
                beta=0.5, seed=0, dataloader_num_workers=0) | kw


def _config(tmp_path, **kw):
    return RobustDPOConfig(**_base(tmp_path, **kw))


def _trainer(args, *, dataset=None, ref=True):
    tok = byte_tokenizer()
    model = tiny_model("gpt2", tokenizer=tok, seed=0)
    ref_model = tiny_model("gpt2", tokenizer=tok, seed=1) if ref else None
    data = _dataset() if dataset is None else dataset
    return RobustDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data,
                            eval_dataset=data, processing_class=tok)


@pytest.mark.parametrize("loss", sorted(LOSS_KW))
def test_each_loss_trains_and_logs_trl_and_robust_metrics(tmp_path, loss):
    trainer = _trainer(_config(tmp_path, robust_loss=loss, **LOSS_KW[loss]))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == STEPS
    for h in logged:
        for key in TRL_METRICS + ROBUST_METRICS[loss]:
            assert key in h and math.isfinite(h[key]), (key, h)
        # one step per log: the means are of the same pairs
        assert h["rewards/margins"] == pytest.approx(
            h["rewards/chosen"] - h["rewards/rejected"], abs=FORMULA_TOL)
        assert 0.0 <= h["rewards/accuracies"] <= 1.0
        if loss == "wdpo":  # paper form, q = 1/B: rho * sqrt(mean g)
            assert h["wdpo/penalty"] == pytest.approx(
                0.5 * math.sqrt(h["wdpo/grad_sq_norm"]), rel=FORMULA_TOL)
        if loss == "kldpo":
            assert h["kldpo/weight_max"] >= 1.0 - FORMULA_TOL
            assert 0.0 < h["kldpo/ess_fraction"] <= 1.0 + FORMULA_TOL
    assert logged[-1]["num_tokens"] > logged[0]["num_tokens"]


def test_standard_metrics_equal_trls_own_on_the_same_batch(tmp_path):
    """TRL's DPOTrainer.compute_loss is the reference for the metrics it defines."""
    from trl import DPOTrainer

    trainer = _trainer(_config(tmp_path))
    inputs = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    trainer.model.train()
    metrics = trainer._metrics["train"]
    trainer.compute_loss(trainer.model, inputs)
    ours = {k: v[-1] for k, v in metrics.items()}
    metrics.clear()
    DPOTrainer.compute_loss(trainer, trainer.model, inputs)
    theirs = {k: v[-1] for k, v in metrics.items()}
    shared = [k for k in TRL_METRICS if k in theirs and k != "num_tokens"]
    assert len(shared) == len(TRL_METRICS) - 2       # all but num_tokens and base_loss
    for key in shared:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key


def test_robust_settings_are_saved_with_the_run(tmp_path):
    args = _config(tmp_path, robust_loss="kldpo", tau=0.3, form="official", base_loss="ipo")
    saved = args.to_dict()
    assert {k: saved[k] for k in ("robust_loss", "tau", "form", "base_loss", "rho")} == {
        "robust_loss": "kldpo", "tau": 0.3, "form": "official", "base_loss": "ipo", "rho": 0.0}
    assert '"robust_loss": "kldpo"' in args.to_json_string()
    trainer = _trainer(args)
    trainer.save_model(str(tmp_path / "model"))
    again = torch.load(tmp_path / "model" / "training_args.bin", weights_only=False)
    assert isinstance(again, RobustDPOConfig) and (again.robust_loss, again.tau) == ("kldpo", 0.3)
    assert trainer.robust_loss == "kldpo" and trainer.tau == 0.3


def test_the_config_parses_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(RobustDPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--robust_loss", "wdpo", "--rho", "0.25",
         "--use_cpu", "True", "--report_to", "none"])
    assert (args.robust_loss, args.rho) == ("wdpo", 0.25)


@pytest.mark.parametrize("option", [
    {"loss_type": "wdpo"}, {"loss_type": ["ipo"]}, {"loss_type": ["sigmoid", "hinge"]},
    {"label_smoothing": 0.1}, {"f_divergence_type": "forward_kl"}, {"ld_alpha": 0.5},
    {"use_weighting": True}, {"loss_weights": [0.5]},
])
def test_conflicting_trl_options_raise_naming_the_option(tmp_path, option):
    (name,) = option
    with pytest.raises(ValueError, match=name):
        _config(tmp_path, **option)


def test_a_plain_dpo_config_with_a_robust_loss_name_raises(tmp_path):
    """TRL's DPOConfig accepts loss_type='wdpo'; the trainer must not train DPO with it."""
    with pytest.raises(ValueError, match="loss_type"):
        _trainer(DPOConfig(**_base(tmp_path, loss_type="wdpo")))


@pytest.mark.parametrize("bad, match", [
    ({"robust_loss": "cdpo"}, "unknown loss"), ({"rho": -1.0}, "rho"),
    ({"tau": 0.0}, "tau"), ({"tau": float("nan")}, "tau"), ({"form": "x"}, "form"),
    ({"base_loss": "hinge"}, "base_loss")])
def test_bad_robust_settings_raise(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **bad)


def test_wdpo_without_radius_warns(tmp_path):
    with pytest.warns(UserWarning, match="rho=0"):
        _config(tmp_path, robust_loss="wdpo")
    with pytest.warns(UserWarning, match="does not use"):
        _config(tmp_path, robust_loss="dpo", tau=0.5)


def test_old_trainer_keywords_still_work_and_reach_the_config(tmp_path):
    tok = byte_tokenizer()
    with pytest.warns(DeprecationWarning, match="RobustDPOConfig"):
        trainer = RobustDPOTrainer(model=tiny_model("gpt2", tokenizer=tok, seed=0),
                                   ref_model=tiny_model("gpt2", tokenizer=tok, seed=1),
                                   args=DPOConfig(**_base(tmp_path)), train_dataset=_dataset(),
                                   processing_class=tok, loss="kldpo", tau=0.7)
    assert isinstance(trainer.args, RobustDPOConfig)
    assert (trainer.args.robust_loss, trainer.args.tau, trainer.args.beta) == ("kldpo", 0.7, 0.5)


def test_a_model_without_reference_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs a reference model"):
        _trainer(_config(tmp_path), ref=False)


def test_a_precomputed_reference_needs_no_ref_model(tmp_path):
    trainer = _trainer(_config(tmp_path, robust_loss="kldpo", tau=0.5,
                               precompute_ref_log_probs=True), ref=False)
    assert np.isfinite(trainer.train().training_loss)


W = np.array([0.5, 2.0, 1.0, 1.5, 0.25, 1.0, 1.0, 0.75])


def _pieces(trainer, with_weight=True):
    """First eval batch (unshuffled): (loss, per-pair losses, g or None, batch weights)."""
    inputs = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    if not with_weight:
        inputs = {k: v for k, v in inputs.items() if k != "weight"}
    trainer.model.train()
    loss, out = trainer.compute_loss(trainer.model, inputs, return_outputs=True)
    g = None if out.grad_sq_norms is None else out.grad_sq_norms.detach().double().numpy()
    w = inputs.get("weight")
    return (float(loss.detach()), out.losses.detach().double().numpy(), g,
            None if w is None else w.double().numpy())


@pytest.mark.parametrize("loss", sorted(LOSS_KW))
def test_the_weight_column_reaches_every_loss_as_base_weights(tmp_path, loss):
    trainer = _trainer(_config(tmp_path, robust_loss=loss, **LOSS_KW[loss]),
                       dataset=_dataset(W))
    value, losses, g, w = _pieces(trainer)
    np.testing.assert_array_equal(w, W[:4])              # kept by TRL's collator, in order
    q = w / len(w)
    naive = {"dpo": lambda: q @ losses, "ipo": lambda: q @ losses,
             "wdpo": lambda: q @ losses + 0.5 * np.sqrt(q @ g),
             "kldpo": lambda: (q * np.exp(losses / 0.5)) @ losses / (q @ np.exp(losses / 0.5))}
    assert value == pytest.approx(naive[loss](), rel=FORMULA_TOL)
    unweighted, same_losses, _, _ = _pieces(trainer, with_weight=False)
    np.testing.assert_allclose(same_losses, losses, rtol=1e-6)
    assert abs(value - unweighted) > 1e-4                  # the weights changed the loss


def test_unit_weights_equal_no_weights(tmp_path):
    trainer = _trainer(_config(tmp_path, robust_loss="wdpo", rho=0.5),
                       dataset=_dataset(np.ones(8)))
    weighted, *_ = _pieces(trainer)
    plain, *_ = _pieces(trainer, with_weight=False)
    assert weighted == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("bad", [[0.0] + [1.0] * 7, [-1.0] + [1.0] * 7,
                                 [float("nan")] + [1.0] * 7])
def test_bad_weight_columns_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="'weight'"):
        _trainer(_config(tmp_path), dataset=_dataset(bad))


def test_weights_not_averaging_one_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _trainer(_config(tmp_path), dataset=_dataset(W))       # averages 1: silent
    with pytest.warns(UserWarning, match="averages"):
        _trainer(_config(tmp_path), dataset=_dataset(3 * W))
