r"""Training for the preference-shift study: a resumable LoRA / full fine-tuning loop over
pre-tokenised preference pairs, with a wall-clock deadline. The objectives come from the
shared registry :mod:`loglinear.torch.objectives` (looked up by the method's kind).

Objectives (docs/theory.md §4.1-4.2; the formulas live in :mod:`loglinear.torch.losses`):

.. math::
    \text{DPO: } \tfrac1B\textstyle\sum_i l_i,\quad
    \text{WDPO-paper: } \tfrac1B\sum_i l_i + \rho_o\big(\tfrac1B\sum_i g_i\big)^{1/2},\quad
    \text{WDPO-official: } \tfrac1B\sum_i (l_i + \rho_o g_i),

    \text{KLDPO-paper: } \textstyle\sum_i P_i l_i,\ P \propto e^{l/\tau}\ (\text{detached}),\quad
    \text{KLDPO-official: } \tfrac1B\sum_i \min(e^{(l_i-\bar l)/\tau}, 10)\, l_i,

with :math:`l_i` the per-pair DPO loss of the sequence log-ratios and :math:`g_i` the squared
norm of its gradient in the pair's input embeddings (:mod:`loglinear.torch.penalty`). The
KLDPO weights are computed over the minibatch (one process).

Checkpoints hold the trainable parameters, the optimizer state and the step; the batch order
is a function of the seed, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ...data import as_generator
from ...torch.objectives import ObjectiveOutput, batch_objective
from ...torch.sequence import PairBatch

# The wall clock the deadline is checked against; a module attribute so that tests can
# substitute a fake clock without touching ``time.time`` for every other library.
wall_clock = time.time


def method_objective(model, batch: PairBatch, method, *, beta: float) -> ObjectiveOutput:
    """The method's objective on one batch, from the shared registry
    (:func:`loglinear.torch.objectives.batch_objective`); KLDPO weights over the minibatch."""
    return batch_objective(model, batch, objective=method.kind, beta=beta, **method.kwargs())


LOG_COLUMNS = ["step", "epoch", "objective", "loss", "chosen_logp", "rejected_logp",
               "chosen_logratio", "rejected_logratio", "accuracy", "grad_sq", "weight_max",
               "seconds", "pairs", "tokens"]


def autocast(device: str, dtype: str):
    """bf16 autocast on cuda when asked; a no-op otherwise."""
    if device == "cuda" and dtype == "bfloat16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def add_lora(model, *, r: int, alpha: float, targets: str, seed: int):
    """Wrap ``model`` with LoRA adapters (peft); the adapter init depends only on ``seed``."""
    from peft import LoraConfig, get_peft_model

    target = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target,
                        bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def batch_order(n_pairs: int, *, batch_size: int, epochs: int,
                rng: np.random.Generator | int) -> list[np.ndarray]:
    """Minibatch index arrays for every step: a fresh permutation each epoch. ``rng`` is a
    Generator or an integer seed."""
    rng = as_generator(rng)
    steps = []
    for _ in range(epochs):
        perm = rng.permutation(n_pairs)
        steps += [perm[i:i + batch_size] for i in range(0, n_pairs, batch_size)]
    return steps


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def trainable_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model, state: dict) -> None:
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(f"checkpoint parameters not in the model: {missing[:3]} ...")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device))


def train(model, pairs: PairBatch, *, method, beta: float, lr: float, batch_size: int,
          epochs: int, seed: int, run_dir, checkpoint_every: int, log_every: int = 1,
          device: str = "cpu", dtype: str = "float32", deadline: float | None = None,
          progress: bool | None = None) -> dict:
    """Train ``model`` (its trainable parameters) on ``pairs``; resumable.

    Args:
        pairs: all training pairs with ``ref_logps`` set.
        method: a :class:`~loglinear.experiments.llm_shift.config.MethodSpec`.
        run_dir: holds ``checkpoint.pt``, ``final.pt`` and ``train_log.csv``.
        deadline: a ``time.time()`` after which the loop checkpoints and stops.
        progress: a progress bar over the steps with the current loss (on stderr);
            ``None`` shows it when stderr is a terminal.
    Returns:
        ``{"done": bool, "step": int, "seconds", "pairs", "tokens"}`` (totals over all
        invocations, read back from the log).
    """
    if pairs.ref_logps is None:
        raise ValueError("pairs need precomputed ref_logps")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final, ckpt, log_path = run_dir / "final.pt", run_dir / "checkpoint.pt", \
        run_dir / "train_log.csv"
    if final.exists():
        load_trainable(model, torch.load(final, map_location="cpu")["params"])
        return {"done": True, **_totals(log_path)}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = batch_order(pairs.n_pairs, batch_size=batch_size, epochs=epochs,
                        rng=np.random.default_rng(seed))
    per_epoch = math.ceil(pairs.n_pairs / batch_size)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu")
        load_trainable(model, state["params"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    _truncate_log(log_path, start)
    new_log = not log_path.exists()
    fh = open(log_path, "a", newline="")
    writer = csv.writer(fh, lineterminator="\n")
    if new_log:
        writer.writerow(LOG_COLUMNS)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(steps), initial=start, desc=f"{method.name} {run_dir.name}",
               unit="step", disable=None if progress is None else not progress)
    model.train()
    step = start
    try:
        for step in range(start, len(steps)):
            if deadline is not None and wall_clock() > deadline:
                break
            t0 = time.perf_counter()
            batch = pairs.select(steps[step]).to(device)
            with autocast(device, dtype):
                terms = method_objective(model, batch, method, beta=beta)
            if not torch.isfinite(terms.loss):
                raise FloatingPointError(f"{method.name}: non-finite objective at step {step}")
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if step % log_every == 0 or step == len(steps) - 1:
                writer.writerow(_log_row(step, step // per_epoch, terms, batch, seconds))
            else:  # keep the throughput totals exact even when rows are thinned
                writer.writerow([step, step // per_epoch, "", "", "", "", "", "", "", "", "",
                                 repr(seconds), batch.n_pairs,
                                 int(batch.attention_mask.sum())])
            fh.flush()
            bar.update()
            bar.set_postfix(loss=f"{float(terms.loss.detach()):.4g}", refresh=False)
            if (step + 1) % checkpoint_every == 0 and step + 1 < len(steps):
                _save_atomic({"params": trainable_state(model),
                              "optimizer": opt.state_dict(), "step": step + 1}, ckpt)
        else:
            step = len(steps)
    finally:
        fh.close()
        bar.close()
        model.eval()
    if step >= len(steps):
        _save_atomic({"params": trainable_state(model)}, final)
        ckpt.unlink(missing_ok=True)
        return {"done": True, **_totals(log_path)}
    _save_atomic({"params": trainable_state(model), "optimizer": opt.state_dict(),
                  "step": step}, ckpt)
    return {"done": False, "step": step, **_totals(log_path)}


def _log_row(step, epoch, terms: ObjectiveOutput, batch: PairBatch, seconds) -> list:
    b = batch.n_pairs
    g = "" if terms.grad_sq_norms is None else float(terms.grad_sq_norms.detach().mean())
    w = ""
    if terms.weights is not None:  # relative to uniform: both forms carry the base q = 1/b
        w = float(terms.weights.max()) * b
    logps = terms.logps.detach().float()
    ref = batch.ref_logps.float()
    c, r = logps[:b] - ref[:b], logps[b:] - ref[b:]
    return [step, epoch, float(terms.loss.detach()), float(terms.losses.detach().mean()),
            float(logps[:b].mean()), float(logps[b:].mean()), float(c.mean()), float(r.mean()),
            float((c > r).float().mean()), g, w, repr(seconds), b,
            int(batch.attention_mask.sum())]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows of steps >= ``step`` (written after the last checkpoint) and torn lines."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.endswith("\n")
                         and int(ln.split(",", 1)[0]) < step]
    path.write_text("".join(keep))


def _totals(path: Path) -> dict:
    if not path.exists():
        return {"seconds": 0.0, "pairs": 0, "tokens": 0, "steps": 0}
    rows = list(csv.DictReader(open(path)))
    return {"seconds": sum(float(r["seconds"]) for r in rows),
            "pairs": sum(int(r["pairs"]) for r in rows),
            "tokens": sum(int(r["tokens"]) for r in rows), "steps": len(rows)}
