"""A minimal, readable preference-training loop for causal LMs (DPO, IPO, WDPO, KLDPO).

``train(config) -> Path`` runs AdamW with a warmup + constant/linear/cosine schedule and
gradient accumulation, writes the resolved config before starting, appends one JSON line
of metrics per optimiser step to ``metrics.jsonl``, and saves a checkpoint every
``save_every`` steps (atomically: written to a temporary folder, then renamed). Calling it
again with the same ``out_dir`` resumes from the last checkpoint: model, optimiser,
scheduler and step are restored, metrics logged after that checkpoint are dropped, and the
data order is a pure function of (seed, step), so the resumed run takes exactly the steps
the uninterrupted run would have taken.

The reference model is a frozen copy of the initial policy; its log-probs for the whole
dataset are computed once at start.

Config: :class:`TrainConfig`, parsed from TOML by :func:`load_config` here, or by the
studies' ``loglinear.experiments.config.load_config(TrainConfig, path)`` through
:meth:`TrainConfig.from_dict` (``loglinear llm-train --config simulations/llm_train_tiny.toml``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (the backend may not import
    import tomli as tomllib  # loglinear.experiments, whose loader has the same fallback)

from ..data import as_generator
from .distributed import kldpo_microstep_coefficients
from .models import PRETRAINED, byte_tokenizer, load_pretrained, tiny_model
from .objectives import OBJECTIVES, batch_objective, pair_losses
from .sequence import PairBatch, sequence_logps, tokenize_pairs

__all__ = ["TrainConfig", "load_config", "train", "toy_pairs", "load_pairs", "build_model"]

SCHEDULES = ("constant", "linear", "cosine")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig:
    """Training configuration (every field validated in ``__post_init__``).

    model: "tiny-gpt2", "tiny-llama", a name in ``models.PRETRAINED`` ("smollm2-135m"), or
        a local Hugging Face directory.
    data: "toy:N" (N synthetic pairs from :func:`toy_pairs`) or a JSONL file with
        "prompt", "chosen", "rejected" fields.
    out_dir: where config, metrics and checkpoints go.
    objective: "dpo" | "ipo" | "wdpo" | "kldpo"; base_loss: per-pair loss under it.
    beta, rho (WDPO radius), tau (KLDPO temperature), form ("paper" | "official").
    kldpo_across_microsteps: KLDPO weights over all k micro-batches of a step (one extra
        no-grad forward) instead of per micro-batch.
    lr, weight_decay, warmup_steps, schedule, max_steps, batch_size (pairs per
    micro-batch), grad_accum (micro-batches per step), max_grad_norm (0 disables clipping),
    max_length (tokens per row), padding_side, seed, save_every, threads (torch threads),
    device, dtype, progress (tqdm bar).
    """

    model: str = "tiny-gpt2"
    data: str = "toy:64"
    out_dir: str = "results/llm_train"
    objective: str = "dpo"
    base_loss: str = "dpo"
    beta: float = 0.1
    rho: float = 0.0
    tau: float = 1.0
    form: str = "paper"
    kldpo_across_microsteps: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    max_steps: int = 20
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 64
    padding_side: str = "right"
    seed: int = 0
    save_every: int = 10
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = False

    def __post_init__(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        need(self.objective in OBJECTIVES,
             f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        need(self.base_loss in ("dpo", "ipo"), "base_loss must be 'dpo' or 'ipo'")
        need(self.form in ("paper", "official"), "form must be 'paper' or 'official'")
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}")
        need(self.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}")
        need(self.padding_side in ("left", "right"), "padding_side must be 'left' or 'right'")
        for name in ("beta", "tau", "lr"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) > 0,
                 f"{name} must be positive")
        for name in ("rho", "weight_decay", "max_grad_norm"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                 f"{name} must be nonnegative")
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "threads",
                     "max_length"):
            need(int(getattr(self, name)) >= 1, f"{name} must be a positive integer")
        need(self.warmup_steps >= 0, "warmup_steps must be nonnegative")
        need(self.data.startswith("toy:") or self.data.endswith(".jsonl"),
             "data must be 'toy:N' or a .jsonl file")

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """The config from a parsed TOML mapping: top-level keys or a ``[train]`` table;
        top-level keys beside the table (command-line overrides) replace its values.
        Unknown keys are errors."""
        raw = dict(raw)
        table = raw.pop("train", None)
        if table is not None:
            raw = {**table, **raw}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**raw)


def load_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """Parse a TOML file (top-level keys or a ``[train]`` table) into a :class:`TrainConfig`;
    ``overrides`` (``None`` values ignored) replace the file's values."""
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    return TrainConfig.from_dict(raw | {k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------- data and model
def toy_pairs(n: int, rng: np.random.Generator | int) -> list[dict[str, str]]:
    """n synthetic pairs: prompt = random letters; chosen repeats it, rejected reverses it.
    ``rng`` is a Generator or an integer seed."""
    rng = as_generator(rng)
    letters = np.array(list("abcdefghij"))
    out = []
    for _ in range(n):
        s = "".join(rng.choice(letters, size=int(rng.integers(2, 6))))
        out.append({"prompt": s + ":", "chosen": " " + s, "rejected": " " + s[::-1] + "z"})
    return out


def load_pairs(spec: str, *, seed: int) -> list[dict[str, str]]:
    if spec.startswith("toy:"):
        return toy_pairs(int(spec[4:]), np.random.default_rng(np.random.SeedSequence(seed)))
    with open(spec) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    for k, row in enumerate(rows):
        if not {"prompt", "chosen", "rejected"} <= set(row):
            raise ValueError(f"{spec}:{k + 1} needs prompt, chosen and rejected fields")
    return rows


def build_model(name: str, *, seed: int, dtype: torch.dtype, device: str):
    """(model, tokenizer) for a config's ``model`` field."""
    if name in ("tiny-gpt2", "tiny-llama"):
        tok = byte_tokenizer()
        model = tiny_model(name.split("-", 1)[1], tokenizer=tok, seed=seed, dtype=dtype)
        return model.to(device), tok
    if name in PRETRAINED or Path(name).is_dir():
        return load_pretrained(name, dtype=dtype, device=device)
    raise ValueError(f"unknown model {name!r}: use tiny-gpt2, tiny-llama, "
                     f"{sorted(PRETRAINED)} or a local directory")


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - frac)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    return 1.0


def _step_indices(step: int, cfg: TrainConfig, n: int) -> list[np.ndarray]:
    """Pair indices of each micro-batch of optimiser step ``step``: a pure function of
    (seed, step), reshuffling every epoch, so resuming needs no RNG state."""
    per_step = cfg.batch_size * cfg.grad_accum
    pos = np.arange(step * per_step, (step + 1) * per_step)
    epochs = pos // n
    idx = np.empty_like(pos)
    for e in np.unique(epochs):
        perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, int(e)])).permutation(n)
        idx[epochs == e] = perm[pos[epochs == e] % n]
    return np.split(idx, cfg.grad_accum)


# ---------------------------------------------------------------- checkpoints
def _save_checkpoint(folder: Path, step: int, model, optimizer, scheduler) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, tmp / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps >= ``step`` (logged after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] < step]
    path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, stop_after: int | None = None,
          pairs: list[dict[str, str]] | None = None, model=None, tokenizer=None,
          provenance: dict | None = None) -> Path:
    """Train (or resume) according to ``cfg``; returns the output directory.

    ``stop_after`` ends the run after that many optimiser steps in total, as if it had been
    interrupted (time-limited jobs; the resume test); a later call continues to max_steps.
    ``pairs`` (dicts with prompt/chosen/rejected) replaces ``cfg.data``; ``model`` and
    ``tokenizer`` (both or neither) replace ``cfg.model`` — a study can pass its own data
    and an already loaded model. The model is trained in place; the reference is a frozen
    copy of it as passed. ``provenance`` (what produced the run: versions, git commit, as
    :func:`loglinear.experiments.records.run_metadata` returns it) is stored under the key
    ``"provenance"`` of ``config.json``, beside the config's fields.
    """
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither")
    torch.set_num_threads(cfg.threads)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    written = dataclasses.asdict(cfg) | ({} if provenance is None else
                                         {"provenance": dict(provenance)})
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    dtype = DTYPES[cfg.dtype]

    if model is None:
        model, tok = build_model(cfg.model, seed=cfg.seed, dtype=dtype, device=cfg.device)
    else:
        tok = tokenizer
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if pairs is None:
        pairs = load_pairs(cfg.data, seed=cfg.seed)
    if not pairs:
        raise ValueError("no training pairs")
    full = tokenize_pairs(tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
                          [p["rejected"] for p in pairs], padding_side=cfg.padding_side,
                          max_length=cfg.max_length).to(cfg.device)
    with torch.no_grad():  # reference log-probs of all 2n rows, once, in chunks
        ref = torch.cat([
            sequence_logps(ref_model, full.input_ids[rows], full.attention_mask[rows],
                           full.response_mask[rows])
            for rows in torch.arange(2 * len(pairs)).split(64)])
    full = full.with_ref(ref)
    n = len(pairs)
    del ref_model

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    ckpt = out / "checkpoint"
    start_step = 0
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", map_location=cfg.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
    metrics_path = out / "metrics.jsonl"
    _truncate_metrics(metrics_path, start_step)

    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    steps = range(start_step, end)
    if cfg.progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, initial=start_step, total=cfg.max_steps, desc=cfg.objective)
    model.train()
    kw = dict(objective=cfg.objective, beta=cfg.beta, base_loss=cfg.base_loss, rho=cfg.rho,
              tau=cfg.tau, form=cfg.form)
    for step in steps:
        t0 = time.perf_counter()
        micro = [full.select(torch.as_tensor(i)) for i in _step_indices(step, cfg, n)]
        coefs = _kldpo_coefs(model, micro, cfg)
        logs = []
        for j, batch in enumerate(micro):
            res = batch_objective(model, batch, kl_coef=None if coefs is None else coefs[j], **kw)
            scale = 1.0 if coefs is not None else 1.0 / cfg.grad_accum
            (res.loss * scale).backward()
            logs.append(res.metrics())
        grad_norm = _clip(model, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                  "seconds": time.perf_counter() - t0}
        record.update({k: float(np.mean([m[k] for m in logs])) for k in logs[0]})
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if cfg.progress:
            steps.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            _save_checkpoint(ckpt, step + 1, model, optimizer, scheduler)
    return out


def _kldpo_coefs(model, micro: list[PairBatch], cfg: TrainConfig):
    """Global KLDPO coefficients over all micro-batches of a step (ranks included)."""
    if cfg.objective != "kldpo" or not cfg.kldpo_across_microsteps:
        return None
    with torch.no_grad():
        losses = [pair_losses(model, b, base_loss=cfg.base_loss, beta=cfg.beta)[0]
                  for b in micro]
    return kldpo_microstep_coefficients(losses, tau=cfg.tau, form=cfg.form)


def _clip(model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
