r"""Data for the preference-shift study: prompts, reference completions (cached on disk),
Bradley-Terry labels under the mixed emotion reward.

For prompt :math:`s_i` the reference policy samples two completions :math:`a^1_i, a^2_i`;
the label is

.. math::
    y_i \sim \text{Bernoulli}\big(\sigma(\kappa\,[r_{\alpha_o}(a^1_i) - r_{\alpha_o}(a^2_i)])\big),

with :math:`r_{\alpha_o}` the convex (or geometric) emotion mixture at :math:`\alpha_o = 0.1`
(:mod:`loglinear.experiments.llm_shift.emotion`) and :math:`\kappa` a fixed reward scale
(the scores are
probabilities in [0, 1], so without a scale every label would be close to a coin flip;
a convention of this project). The reward scores the completion alone: the prompt is shared
by the pair.

Generation is the expensive step, so :func:`cached` stores its result once, with the key that
produced it, and later runs reuse it (a different key is an error, never a silent reuse).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from ...data import as_generator


def load_prompts() -> dict:
    """The shipped story openings: ``{"train": [...], "heldout": [...]}``."""
    path = resources.files("loglinear") / "resources" / "emotion" / "prompts.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"train": list(data["train"]), "heldout": list(data["heldout"])}


def select_prompts(prompts: list[str], n: int, *, rng: np.random.Generator | int
                   ) -> list[str]:
    """``n`` distinct prompts drawn without replacement (all of them, shuffled, if n = len);
    ``rng`` is a Generator or an integer seed."""
    rng = as_generator(rng)
    if not 1 <= n <= len(prompts):
        raise ValueError(f"n must lie in [1, {len(prompts)}], got {n}")
    return [prompts[i] for i in rng.choice(len(prompts), size=n, replace=False)]


def bt_labels(reward_a: np.ndarray, reward_b: np.ndarray, *, scale: float,
              rng: np.random.Generator | int) -> np.ndarray:
    r"""Bradley-Terry labels, y_i = 1 when completion a is preferred.

    .. math:: P(y_i = 1) = \sigma(\kappa (r^a_i - r^b_i))

    Args:
        reward_a, reward_b: (n,) rewards of the two completions; scale: kappa > 0.
    Returns:
        (n,) int array in {0, 1}.
    """
    reward_a, reward_b = np.asarray(reward_a, float), np.asarray(reward_b, float)
    if reward_a.shape != reward_b.shape or reward_a.ndim != 1:
        raise ValueError(f"rewards must be two (n,) arrays, got {reward_a.shape}, "
                         f"{reward_b.shape}")
    if not np.all(np.isfinite(reward_a)) or not np.all(np.isfinite(reward_b)):
        raise ValueError("rewards must be finite")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    p = 0.5 * (1.0 + np.tanh(0.5 * scale * (reward_a - reward_b)))  # stable sigmoid
    return (as_generator(rng).random(reward_a.shape) < p).astype(int)


def cache_key(**parts) -> str:
    """A short stable hash of JSON-able key parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached(path, key: dict, make: Callable[[], dict]) -> dict:
    """Load ``path`` (JSON) if it was made with ``key``; else ``make()``, store it, return it.

    The file holds ``{"key": key, "data": ...}``; it is written atomically (temp file +
    rename), so an interrupted run never leaves a half-written cache. A file made with a
    different key raises ValueError (delete it, or point the run elsewhere).
    """
    path = Path(path)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") != key:
            raise ValueError(f"{path} was made with a different configuration:\n"
                             f"  stored {stored.get('key')}\n  wanted {key}\n"
                             "delete it or use another output directory")
        return stored["data"]
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"key": key, "data": data}))
    os.replace(tmp, path)
    return data


def sample_completions(model, tokenizer, prompts: list[str], *, n_samples: int,
                       max_new_tokens: int, temperature: float, seed: int,
                       batch_size: int = 32) -> dict:
    """Sample ``n_samples`` completions per prompt (ancestral sampling, top-k off).

    Sampling uses torch's RNG inside ``torch.random.fork_rng`` seeded with ``seed``, so the
    global RNG state is restored afterwards and the same seed gives the same completions.

    Returns ``{"completions": [[str] * n_samples] * len(prompts), "new_tokens": int,
    "prompt_ids": [[int]] * len(prompts), "completion_ids": [[[int]] * n_samples] * ...}``:
    the token ids are the sampled ones (the completion up to and including its first eos),
    so log-probabilities can be scored on exactly the sampled sequences (decoding and
    re-tokenising text does not always round-trip).
    """
    import torch

    if n_samples < 1 or max_new_tokens < 1 or not temperature > 0 or batch_size < 1:
        raise ValueError("n_samples, max_new_tokens, batch_size must be >= 1 and "
                         "temperature > 0")
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    bos = tokenizer.bos_token or ""
    rows = [p for p in prompts for _ in range(n_samples)]
    texts, new_tokens, prompt_ids, completion_ids = [], 0, [], []
    eos = tokenizer.eos_token_id
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            for i in range(0, len(rows), batch_size):
                enc = tokenizer([bos + r for r in rows[i:i + batch_size]], return_tensors="pt",
                                padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0,
                                     top_p=1.0, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
                gen = out[:, enc["input_ids"].shape[1]:].cpu()
                for ids, mask, g in zip(enc["input_ids"].cpu(), enc["attention_mask"].cpu(),
                                        gen):
                    prompt_ids.append(ids[mask.bool()].tolist())
                    g = g.tolist()
                    if eos is not None and eos in g:
                        g = g[: g.index(eos) + 1]
                    completion_ids.append(g)
                    new_tokens += len(g)
                texts += tokenizer.batch_decode(gen, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    group = lambda xs: [xs[j * n_samples:(j + 1) * n_samples] for j in range(len(prompts))]
    return {"completions": group(texts), "new_tokens": new_tokens,
            "prompt_ids": prompt_ids[::n_samples], "completion_ids": group(completion_ids)}
