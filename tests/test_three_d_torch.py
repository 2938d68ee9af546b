"""The torch 3D-property probe on a tiny offline causal LM."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from loglinear.experiments.three_d.lm_probe import ThreeDProbe, collate_responses  # noqa: E402
from loglinear.torch.losses import dpo_loss  # noqa: E402
from loglinear.torch.models import byte_tokenizer, tiny_model  # noqa: E402
from loglinear.torch.sequence import (  # noqa: E402
    logratios,
    pair_logps,
    reference_logps,
    sequence_logps,
    tokenize_pairs,
)

PROMPTS = ["Say yes:", "Colour?", "2+2="]
CHOSEN = ["yes", "blue", "4"]
REJECTED = ["no", "red", "5"]
HELDOUT = ["maybe", "green", "22"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok = byte_tokenizer()
    batch = tokenize_pairs(tok, PROMPTS, CHOSEN, REJECTED)
    enc = lambda texts: [tok(t, add_special_tokens=False)["input_ids"] for t in texts]  # noqa: E731
    held = collate_responses([[tok.bos_token_id] + p for p in enc(PROMPTS)],
                             [a + [tok.eos_token_id] for a in enc(HELDOUT)],
                             pad_token_id=tok.pad_token_id)
    return tok, batch, held


def test_probe_matches_direct_log_probs_and_restores_mode(setup, tmp_path):
    tok, batch, held = setup
    model = tiny_model(tokenizer=tok, seed=1).double()
    ref = reference_logps(model, batch).double()
    probe = ThreeDProbe(batch, heldout=held, ref_logps=ref, beta=0.5, every=2,
                        path=tmp_path / "probe.jsonl")
    model.train()
    row = probe(0, model)
    assert model.training
    with torch.no_grad():
        lp = sequence_logps(model.eval(), batch.input_ids, batch.attention_mask,
                            batch.response_mask)
        hl = sequence_logps(model, held.input_ids, held.attention_mask, held.response_mask)
    n = len(PROMPTS)
    assert abs(row["logp_chosen"] - float(lp[:n].mean())) < 1e-10
    assert abs(row["logp_rejected"] - float(lp[n:].mean())) < 1e-10
    assert abs(row["logp_heldout"] - float(hl.mean())) < 1e-10
    assert row["logratio_chosen"] == 0.0 and row["d_logp_chosen"] == pytest.approx(-0.25)
    assert probe(1, model) is None  # not due
    assert json.loads((tmp_path / "probe.jsonl").read_text().splitlines()[0])["step"] == 0


def test_probe_tracks_dpo_training(setup):
    tok, batch, held = setup
    model = tiny_model(tokenizer=tok, seed=2)
    ref = reference_logps(model, batch)
    probe = ThreeDProbe(batch, heldout=held, ref_logps=ref, beta=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe(0, model)
    model.train()
    for step in range(1, 16):
        c, r = logratios(pair_logps(model, batch).logps, ref)
        loss = dpo_loss(c, r, beta=1.0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        probe(step, model)
    frame = probe.frame()
    assert list(frame["step"]) == list(range(16))
    margin = frame["logratio_chosen"] - frame["logratio_rejected"]
    assert margin.iloc[-1] > margin.iloc[0] + 0.1
    assert frame["logp_rejected_delta"].iloc[-1] < 0
    # the DPO partials stay equal and opposite; |d| shrinks as the margin grows
    np.testing.assert_allclose(frame["d_logp_chosen"], -frame["d_logp_rejected"])
    assert abs(frame["d_logp_chosen"].iloc[-1]) < abs(frame["d_logp_chosen"].iloc[0])


def test_probe_rejects_bad_arguments(setup):
    _, batch, _ = setup
    with pytest.raises(ValueError, match="every"):
        ThreeDProbe(batch, every=0)
    with pytest.raises(ValueError, match="ref_logps"):
        ThreeDProbe(batch, ref_logps=torch.zeros(3))
    with pytest.raises(ValueError, match="equal length"):
        collate_responses([[1]], [], pad_token_id=0)
