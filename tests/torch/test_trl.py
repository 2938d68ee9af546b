"""RobustDPOTrainer: offline tiny-model training; radius 0 equals TRL's sigmoid loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import DPOConfig, DPOTrainer  # noqa: E402

import loglinear.torch as lt  # noqa: E402
from loglinear.torch.models import byte_tokenizer, tiny_model  # noqa: E402

TRL_TOL = 1e-6  # the radius-0 agreement


def _dataset():
    letters = ["ab", "cde", "f", "gh", "ijk", "l", "mn", "opq"]
    return datasets.Dataset.from_dict({
        "prompt": [s + ":" for s in letters], "chosen": [" " + s for s in letters],
        "rejected": [" " + s[::-1] + "z" for s in letters]})


def _trainer(tmp_path, checkpointing=False, **kw):
    tok = byte_tokenizer()
    model = tiny_model("gpt2", tokenizer=tok, seed=0)
    ref = tiny_model("gpt2", tokenizer=tok, seed=1)
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing
    fields = DPOConfig.__dataclass_fields__
    ckpt = ("activation_checkpointing" if "activation_checkpointing" in fields
            else "gradient_checkpointing")
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                     report_to=[], use_cpu=True, bf16=False, logging_steps=1,
                     save_strategy="no", learning_rate=1e-2, beta=0.5, seed=0,
                     dataloader_num_workers=0, **{ckpt: checkpointing})
    return lt.RobustDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=_dataset(),
                               processing_class=tok, **kw)


def _first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


@pytest.mark.parametrize("loss,kw", [("dpo", {}), ("wdpo", {"rho": 0.0}),
                                     ("wdpo", {"rho": 0.0, "form": "official"}),
                                     ("kldpo", {"tau": 1e8})])
def test_radius_zero_matches_trl_sigmoid(tmp_path, loss, kw):
    trainer = _trainer(tmp_path, loss=loss, **kw)
    inputs = _first_batch(trainer)
    trainer.model.train()
    ours = trainer.compute_loss(trainer.model, inputs)
    theirs = DPOTrainer.compute_loss(trainer, trainer.model, inputs)
    assert trainer.loss_types == ["sigmoid"]
    print(f"{loss} {kw}: ours - TRL = {float(ours.detach()) - float(theirs.detach()):.2e}")
    np.testing.assert_allclose(float(ours.detach()), float(theirs.detach()), rtol=TRL_TOL,
                               atol=TRL_TOL)
    # and the gradients agree
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(ours, params, allow_unused=True)
    gb = torch.autograd.grad(DPOTrainer.compute_loss(trainer, trainer.model, inputs), params,
                             allow_unused=True)
    for a, b in zip(ga, gb):
        if a is not None and b is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss,kw", [("wdpo", {"rho": 1.0}), ("kldpo", {"tau": 0.5}),
                                     ("wdpo", {"rho": 1.0, "form": "official",
                                               "checkpointing": True})])
def test_trains_a_few_steps_offline(tmp_path, loss, kw):
    """(with TRL's default non-reentrant activation checkpointing for one WDPO case)"""
    trainer = _trainer(tmp_path, loss=loss, **kw)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)
    changed = [not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())]
    assert all(changed)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3
    key = "wdpo/grad_sq_norm" if loss == "wdpo" else "kldpo/weight_max"
    assert all(key in h for h in logged)


def test_robust_penalty_changes_the_loss(tmp_path):
    trainer = _trainer(tmp_path, loss="wdpo", rho=5.0)
    inputs = _first_batch(trainer)
    trainer.model.train()
    ours = float(trainer.compute_loss(trainer.model, inputs).detach())
    theirs = float(DPOTrainer.compute_loss(trainer, trainer.model, inputs).detach())
    assert ours > theirs + 1e-3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown loss"):
        _trainer(tmp_path, loss="cdpo")
    with pytest.raises(ValueError, match="rho"):
        _trainer(tmp_path, loss="wdpo", rho=-1.0)


def test_lazy_export_does_not_import_trl():
    import subprocess
    import sys

    code = "import sys, loglinear.torch; assert 'trl' not in sys.modules, 'trl imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
