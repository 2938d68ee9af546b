r"""Build the emotion environment from a real language model's text (docs/theory.md §10.1).

For each shipped story opening (500 training and 120 held-out prompts) the reference model
samples K completions once; the artifact stores, per (prompt, candidate):

* the completion's text and its sequence log-probability under the reference model
  (summed over its tokens, scored on exactly the sampled token ids);
* features: the all-MiniLM-L6-v2 embedding (384-d, unit norm) of prompt + completion, and
  the reference model's last hidden state mean-pooled over prompt + completion tokens;
* the calibrated emotion probe's class probabilities of the completion alone (anger, fear,
  joy, sadness, neutral), so that any reward mixture r(alpha) can be formed exactly;
* the principal directions of each feature set (within-prompt centred, training prompts),
  so that a projection to d dimensions is the first d columns.

Generation is the expensive step (about 15 minutes for 620 x 8 completions of 24 tokens on
two CPU cores), so the build works in chunks of prompts, each saved under the work
directory as it completes; a rerun skips finished chunks (a work directory made with other
settings is refused). The artifact is one compressed ``.npz`` plus a JSON manifest holding
the content hash (:func:`loglinear.envs.content_hash`) that every load checks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...envs.artifact import ARTIFACT_VERSION, write_artifact
from ..llm_shift import data as sd

PCA_MAX = 128


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one build.

    Args:
        model: the reference model (a key of :data:`loglinear.torch.models.PRETRAINED` or a
            local Hugging Face directory).
        candidates: K, completions per prompt (>= 2).
        max_new_tokens: completion length cap; temperature: sampling temperature (> 0).
        train_prompts, heldout_prompts: how many of the shipped prompts to use, in their
            shipped order (None: all 500 and all 120).
        seed: the sampling seed (chunk c samples with seed + c).
        chunk_prompts: prompts per saved chunk; batch_size: sequences per generate call.
        hidden_features: also store the reference model's mean-pooled last hidden state.
    """

    model: str = "smollm2-135m"
    candidates: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    train_prompts: int | None = None
    heldout_prompts: int | None = None
    seed: int = 20261203
    chunk_prompts: int = 16
    batch_size: int = 64
    hidden_features: bool = True

    def __post_init__(self):
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2, got {self.candidates}")
        if self.max_new_tokens < 1 or not self.temperature > 0:
            raise ValueError("max_new_tokens must be >= 1 and temperature > 0, got "
                             f"{self.max_new_tokens}, {self.temperature}")
        if self.chunk_prompts < 1 or self.batch_size < 1:
            raise ValueError("chunk_prompts and batch_size must be >= 1")
        for name in ("train_prompts", "heldout_prompts"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 (or omitted for all), got {v}")


def select(config: BuildConfig) -> tuple[list[str], np.ndarray]:
    """The prompts of the build, training first, and their split (0 train, 1 held out)."""
    shipped = sd.load_prompts()
    parts = []
    for split, limit in (("train", config.train_prompts), ("heldout", config.heldout_prompts)):
        pool = shipped[split]
        if limit is not None and limit > len(pool):
            raise ValueError(f"{split}_prompts must be at most {len(pool)}, got {limit}")
        parts.append(pool[:limit])
    return parts[0] + parts[1], np.repeat([0, 1], [len(parts[0]), len(parts[1])]).astype(np.int8)


def _score(model, pad_id: int, prompt_ids, completion_ids, *, hidden: bool):
    """Sequence log-probs (n,) of the completions and, with ``hidden``, the last hidden state
    mean-pooled over all real tokens (n, H), from one pass of the decoder.

    The vocabulary head runs only at the positions that predict completion tokens, so this
    equals :func:`loglinear.torch.sequence.sequence_logps` (tested) at a fraction of its
    cost.
    """
    import torch

    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = torch.tensor(r)
        att[k, :len(r)] = 1
    device = next(model.parameters()).device
    ids, att = ids.to(device), att.to(device)
    with torch.inference_mode():
        h = model.get_decoder()(input_ids=ids, attention_mask=att,
                                use_cache=False).last_hidden_state
        # position j predicts token j + 1: the completion's tokens are predicted from
        # positions len(prompt) - 1 .. len(row) - 2
        row = torch.cat([torch.full((len(c),), k) for k, c in enumerate(completion_ids)])
        pos = torch.cat([torch.arange(len(p) - 1, len(p) + len(c) - 1)
                         for p, c in zip(prompt_ids, completion_ids)])
        logits = model.get_output_embeddings()(h[row, pos]).float()
        tok = torch.gather(logits.log_softmax(-1), 1, ids[row, pos + 1].unsqueeze(1))
        logp = torch.zeros(len(rows), dtype=torch.float64).index_add_(
            0, row, tok.squeeze(1).double()).cpu().numpy()
        pooled = None
        if hidden:
            m = att.unsqueeze(-1).float()
            pooled = ((h.float() * m).sum(1) / m.sum(1)).double().cpu().numpy()
    return logp, pooled


def _chunk(config, model, tok, reward, prompts, c) -> dict:
    K = config.candidates
    gen = sd.sample_completions(model, tok, prompts, n_samples=K,
                                max_new_tokens=config.max_new_tokens,
                                temperature=config.temperature, seed=config.seed + c,
                                batch_size=config.batch_size)
    comp = [t for row in gen["completions"] for t in row]
    pids = [p for p in gen["prompt_ids"] for _ in range(K)]
    cids = [ids for row in gen["completion_ids"] for ids in row]
    logps, pooled = [], []
    for i in range(0, len(cids), config.batch_size):
        lp, h = _score(model, tok.pad_token_id, pids[i:i + config.batch_size],
                       cids[i:i + config.batch_size], hidden=config.hidden_features)
        logps.append(lp)
        pooled.append(h)
    shape = (len(prompts), K)
    eos = tok.eos_token_id
    out = dict(completions=np.array(comp, dtype=str).reshape(shape),
               logp=np.concatenate(logps).reshape(shape),
               n_tokens=np.array([len(x) for x in cids], dtype=np.int16).reshape(shape),
               eos=np.array([bool(x) and x[-1] == eos for x in cids]).reshape(shape),
               minilm=reward.encoder.encode([p + t for p, t in zip(
                   [p for p in prompts for _ in range(K)], comp)]).astype(np.float32)
               .reshape(*shape, -1),
               scores=reward.probe.proba(reward.encoder.encode(comp)).reshape(*shape, -1))
    if config.hidden_features:
        out["hidden"] = np.concatenate(pooled).astype(np.float32).reshape(*shape, -1)
    return out


def principal_directions(features: np.ndarray, k: int = PCA_MAX) -> np.ndarray:
    """(D, min(k, D)) orthonormal principal directions of within-state-centred (S, A, D)
    features, each signed so that its largest-magnitude entry is positive."""
    f = np.asarray(features, float)
    z = (f - f.mean(axis=1, keepdims=True)).reshape(-1, f.shape[-1])
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    v = vt[: min(k, vt.shape[0])].T
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    return v * np.where(signs == 0, 1.0, signs)


def _save_atomic(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def build(config: BuildConfig, out, *, work=None, model=None, tokenizer=None, reward=None,
          threads: int | None = None, log=print) -> Path:
    """Build (or resume) the artifact; returns the path of the ``.npz``.

    ``model``/``tokenizer`` default to :func:`loglinear.torch.models.load_pretrained` of
    ``config.model``; ``reward`` to the offline emotion probe
    (:meth:`EmotionReward.default`). The work directory (default: ``OUT.work``) keeps the
    finished chunks. ``threads`` sets torch's intra-op threads (on a shared machine one
    thread is faster than two that wait on each other).
    """
    from ..llm_shift.emotion import CLASSES, EmotionReward

    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.stem + ".work")
    work.mkdir(parents=True, exist_ok=True)
    prompts, split = select(config)
    key = {"version": ARTIFACT_VERSION, **asdict(config), "prompts": sd.cache_key(p=prompts)}
    key_file = work / "key.json"
    if key_file.exists() and json.loads(key_file.read_text()) != key:
        raise ValueError(f"{work} holds chunks of a build with other settings; delete it or "
                         "pass another --work directory")
    key_file.write_text(json.dumps(key, sort_keys=True))
    t0 = time.perf_counter()
    n_chunks = -(-len(prompts) // config.chunk_prompts)
    chunks = [work / f"chunk_{c:04d}.npz" for c in range(n_chunks)]
    todo = [c for c in range(n_chunks) if not chunks[c].exists()]
    if todo:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if model is None:
            from ...torch.models import load_pretrained

            model, tokenizer = load_pretrained(config.model, cache_dir=work / "model",
                                               attn_implementation="eager")
        if reward is None:
            reward = EmotionReward.default(cache=work / "probe.npz")
    for i, c in enumerate(todo):
        t = time.perf_counter()
        part = prompts[c * config.chunk_prompts:(c + 1) * config.chunk_prompts]
        _save_atomic(chunks[c], _chunk(config, model, tokenizer, reward, part, c))
        log(f"chunk {c + 1}/{n_chunks}: {len(part)} prompts in {time.perf_counter() - t:.1f} s "
            f"({len(todo) - i - 1} to go)")
    parts = [dict(np.load(p)) for p in chunks]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    train = split == 0
    arrays.update(prompts=np.array(prompts, dtype=str), split=split,
                  classes=np.array(CLASSES if reward is None else reward.probe.classes,
                                   dtype=str),
                  pca_minilm=principal_directions(arrays["minilm"][train]).astype(np.float32))
    if "hidden" in arrays:
        arrays["pca_hidden"] = principal_directions(arrays["hidden"][train]).astype(np.float32)
    seconds = time.perf_counter() - t0
    write_artifact(arrays, out, config=asdict(config),
                   n_prompts={"train": int(train.sum()), "heldout": int((~train).sum())},
                   build_seconds_this_run=round(seconds, 1))
    log(f"artifact written to {out} ({out.stat().st_size / 2**20:.1f} MiB, "
        f"{len(prompts)} prompts x {config.candidates} candidates) in {seconds:.0f} s")
    return out
