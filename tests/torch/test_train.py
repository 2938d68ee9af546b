"""The minimal training loop: loss decreases; a checkpoint resumes to the same next steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loglinear.torch.loop import TrainConfig, load_config, train


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["dpo", "wdpo", "kldpo"])
def test_loss_goes_down(tmp_path, objective):
    cfg = TrainConfig(out_dir=str(tmp_path), objective=objective, rho=0.5, tau=0.5,
                      data="toy:32", max_steps=12, batch_size=8, grad_accum=2, lr=3e-3,
                      save_every=100)
    rows = _metrics(train(cfg))
    assert [r["step"] for r in rows] == list(range(12))
    first, last = rows[0]["base_loss"], rows[-1]["base_loss"]
    assert np.isclose(first, np.log(2), atol=1e-6)  # policy == reference at step 0
    assert last < first - 0.05, (first, last)


def test_checkpoint_resumes_to_same_next_step_loss(tmp_path):
    common = dict(objective="kldpo", tau=0.5, data="toy:24", batch_size=4, grad_accum=2,
                  lr=3e-3, save_every=3, schedule="cosine", warmup_steps=1, max_steps=6)
    full = _metrics(train(TrainConfig(out_dir=str(tmp_path / "a"), **common)))
    b = tmp_path / "b"
    train(TrainConfig(out_dir=str(b), **common), stop_after=3)  # "killed" after step 3
    # a line logged after the last checkpoint (killed before the next save) is dropped
    with open(b / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 3, "loss": -1.0}) + "\n")
    resumed = _metrics(train(TrainConfig(out_dir=str(b), **common)))
    assert [r["step"] for r in resumed] == list(range(6))
    for ra, rb in zip(full, resumed):
        for key in ("loss", "base_loss", "lr"):
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-6, err_msg=f"{key} {ra['step']}")


def test_config_validation_and_toml(tmp_path):
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="bogus")
    with pytest.raises(ValueError, match="rho"):
        TrainConfig(rho=-1.0)
    path = tmp_path / "c.toml"
    path.write_text('[train]\nobjective = "wdpo"\nrho = 2.0\nmax_steps = 3\n')
    cfg = load_config(path, max_steps=5)
    assert (cfg.objective, cfg.rho, cfg.max_steps) == ("wdpo", 2.0, 5)
    # the studies' one loader reads the same file through TrainConfig.from_dict
    from loglinear.experiments.config import load_config as load_study_config

    assert load_study_config(TrainConfig, path, max_steps=5, out_dir=None) == cfg
    top = tmp_path / "top.toml"
    top.write_text('objective = "wdpo"\nrho = 2.0\nmax_steps = 3\n')
    assert load_config(top, max_steps=5) == cfg
    path.write_text("[train]\nlearning_rate = 1.0\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(path)


def test_cli_trains_and_resumes(tmp_path, capsys):
    from loglinear.cli import main

    cfg = tmp_path / "run.toml"
    out = tmp_path / "out"
    cfg.write_text(f'[train]\nmodel = "tiny-llama"\ndata = "toy:16"\nout_dir = "{out}"\n'
                   'objective = "wdpo"\nrho = 0.5\nbatch_size = 4\nsave_every = 2\n')
    assert main(["llm-train", "--config", str(cfg), "--max-steps", "2"]) == 0
    assert main(["llm-train", "--config", str(cfg), "--max-steps", "4"]) == 0
    assert [r["step"] for r in _metrics(out)] == [0, 1, 2, 3]
    assert json.loads((out / "config.json").read_text())["max_steps"] == 4
    cfg.write_text('[train]\nobjective = "nope"\n')
    assert main(["llm-train", "--config", str(cfg)]) == 2
    assert "objective" in capsys.readouterr().err


def test_train_with_passed_pairs_and_model(tmp_path):
    import torch

    from loglinear.torch.models import byte_tokenizer, tiny_model

    tok = byte_tokenizer()
    model = tiny_model("llama", tokenizer=tok, seed=4)
    before = [p.detach().clone() for p in model.parameters()]
    pairs = [{"prompt": "q" * k, "chosen": " yes", "rejected": " no"} for k in range(1, 9)]
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=4, batch_size=4, lr=1e-2)
    rows = _metrics(train(cfg, pairs=pairs, model=model, tokenizer=tok))
    assert rows[-1]["base_loss"] < rows[0]["base_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="both"):
        train(cfg, model=model)
