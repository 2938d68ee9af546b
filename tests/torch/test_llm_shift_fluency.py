"""The reference-likelihood degeneracy check of the preference-shift study, on a tiny model
built from a config: the per-token log-likelihood against Hugging Face's own masked loss."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
pytest.importorskip("transformers")

from loglinear.experiments.llm_shift.fluency import score_samples  # noqa: E402
from loglinear.torch.models import byte_tokenizer, tiny_model  # noqa: E402


def _study(tmp_path, model_name="smollm2-135m"):
    (tmp_path / "config.json").write_text(json.dumps({"model": model_name}))
    samples = {("dpo", 0): [("Once upon", " a time"), ("The cat", " sat down.")],
               ("reference", 0): [("Once upon", " there was")]}
    for (method, seed), rows in samples.items():
        d = tmp_path / "runs" / method / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "samples.json").write_text(json.dumps(
            [{"prompt": p, "completion": c} for p, c in rows]))
    return tmp_path


def test_per_token_loglik_matches_the_masked_language_model_loss(tmp_path):
    tok = byte_tokenizer()
    model = tiny_model("gpt2", tokenizer=tok).eval()
    path = score_samples(_study(tmp_path), model=model, tokenizer=tok)
    table = pd.read_csv(path)
    assert sorted(set(table["method"])) == ["dpo", "reference"] and len(table) == 3
    row = table[(table.method == "dpo") & (table["index"] == 1)].iloc[0]
    p = tok(tok.bos_token + "The cat", add_special_tokens=False)["input_ids"]
    c = tok(" sat down.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    labels = ids.clone()
    labels[0, : len(p)] = -100  # score the completion tokens only
    with torch.inference_mode():
        loss = model(ids, labels=labels).loss
    assert row["tokens"] == len(c)
    assert row["logp_per_token"] == pytest.approx(-float(loss), rel=1e-5)


def test_tiny_model_studies_are_refused(tmp_path):
    with pytest.raises(ValueError, match="tiny random model"):
        score_samples(_study(tmp_path, "tiny-llama"))
