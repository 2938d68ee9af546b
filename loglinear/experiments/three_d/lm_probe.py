r"""3D-property diagnostics for language-model training (the torch side of the study).

The exact quantities of :mod:`loglinear.experiments.three_d.dynamics` become, for a causal
LM, the sequence
log-probabilities of fixed probe responses, logged during training:

* ``logp_chosen`` / ``logp_rejected``: mean log pi(a^+|s) and log pi(a^-|s) over a fixed
  probe batch of training pairs;
* ``logp_heldout``: mean log pi(a|s) of held-out responses (in no training pair), the
  LLM analogue of the unseen mass (its rise is the dispersion effect);
* with reference log-probs, the mean log-ratios and the DPO partials
  dl/d log pi^+ = -beta sigma(-beta(c - r)) = -dl/d log pi^- (the gradient components
  along the chosen and rejected log-probabilities, docs/theory.md §6.1);
* ``*_delta``: the change since the first logged step.

:class:`ThreeDProbe` is a plain callable ``probe(step, model) -> dict | None`` for any
loop (``loglinear.torch.loop`` or hand-written); :meth:`ThreeDProbe.trainer_callback`
wraps it as a ``transformers.TrainerCallback`` for TRL/HF trainers. Probing runs under
``torch.no_grad`` in eval mode and restores the model's training mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ...torch.sequence import PairBatch, sequence_logps, split_pairs

__all__ = ["ResponseBatch", "ThreeDProbe", "collate_responses"]


class ResponseBatch:
    """N single responses (prompt + response rows) with a response mask, for probing."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 response_mask: torch.Tensor):
        if not (input_ids.shape == attention_mask.shape == response_mask.shape) or \
                input_ids.ndim != 2:
            raise ValueError("input_ids, attention_mask and response_mask must be equal (N, T)")
        if bool(response_mask[:, 0].any()):
            raise ValueError("the first position cannot be scored; every row needs a prompt")
        if bool((response_mask & (attention_mask == 0)).any()):
            raise ValueError("response_mask marks padding positions")
        self.input_ids, self.attention_mask, self.response_mask = (
            input_ids, attention_mask, response_mask)

    def to(self, device) -> ResponseBatch:
        return ResponseBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.response_mask.to(device))


def collate_responses(prompt_ids: Sequence[Sequence[int]],
                      response_ids: Sequence[Sequence[int]], *, pad_token_id: int
                      ) -> ResponseBatch:
    """Right-pad prompt+response token lists into a :class:`ResponseBatch`."""
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ValueError("prompts and responses must be nonempty lists of equal length")
    rows = [list(p) + list(a) for p, a in zip(prompt_ids, response_ids)]
    if any(not p for p in prompt_ids) or any(not a for a in response_ids):
        raise ValueError("every prompt and every response needs at least one token")
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    resp = torch.zeros((len(rows), T), dtype=torch.bool)
    for k, (p, r) in enumerate(zip(prompt_ids, rows)):
        ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
        att[k, : len(r)] = 1
        resp[k, len(p): len(r)] = True
    return ResponseBatch(ids, att, resp)


class ThreeDProbe:
    """Log chosen, rejected and held-out response log-probs every ``every`` steps.

    Args:
        pairs: a fixed probe batch of training pairs (:class:`PairBatch`).
        heldout: optional held-out responses (:class:`ResponseBatch`).
        ref_logps: optional (2B,) reference log-probs of ``pairs`` (else
            ``pairs.ref_logps``); enables the log-ratio and gradient-component columns.
        beta: DPO temperature for the gradient components.
        every: probe cadence in optimizer steps (step 0 is always probed).
        path: optional JSONL file; each record is appended as it is made.
        average: per-token mean instead of the sequence sum.
    """

    def __init__(self, pairs: PairBatch, *, heldout: ResponseBatch | None = None,
                 ref_logps: torch.Tensor | None = None, beta: float | None = None,
                 every: int = 1, path=None, average: bool = False):
        if int(every) < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        ref = ref_logps if ref_logps is not None else pairs.ref_logps
        if ref is not None and ref.shape != (pairs.input_ids.shape[0],):
            raise ValueError(f"ref_logps must have shape ({pairs.input_ids.shape[0]},)")
        if beta is not None and not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.pairs, self.heldout, self.ref = pairs, heldout, ref
        self.beta, self.every, self.average = beta, int(every), average
        self.path = None if path is None else Path(path)
        self.records: list[dict] = []
        self._first: dict | None = None

    @torch.no_grad()
    def measure(self, model) -> dict:
        """The diagnostics at the model's current weights (no step bookkeeping)."""
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            b = self.pairs.to(device)
            logps = sequence_logps(model, b.input_ids, b.attention_mask, b.response_mask,
                                   average=self.average).double()
            c_lp, r_lp = split_pairs(logps)
            row = {"logp_chosen": float(c_lp.mean()), "logp_rejected": float(r_lp.mean())}
            if self.heldout is not None:
                h = self.heldout.to(device)
                hl = sequence_logps(model, h.input_ids, h.attention_mask, h.response_mask,
                                    average=self.average).double()
                row["logp_heldout"] = float(hl.mean())
            if self.ref is not None:
                c, r = split_pairs(logps - self.ref.to(device).double())
                row["logratio_chosen"] = float(c.mean())
                row["logratio_rejected"] = float(r.mean())
                if self.beta is not None:
                    d = -self.beta * torch.sigmoid(-self.beta * (c - r))
                    row["d_logp_chosen"] = float(d.mean())
                    row["d_logp_rejected"] = float(-d.mean())
        finally:
            model.train(was_training)
        return row

    def __call__(self, step: int, model) -> dict | None:
        """Probe at ``step`` if due (step 0 and every ``every`` steps); returns the record."""
        if step % self.every:
            return None
        row = self.measure(model)
        if self._first is None:
            self._first = dict(row)
        for k in ("logp_chosen", "logp_rejected", "logp_heldout"):
            if k in row:
                row[f"{k}_delta"] = row[k] - self._first[k]
        row = {"step": int(step), **row}
        self.records.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def frame(self):
        """The records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def trainer_callback(self):
        """A ``transformers.TrainerCallback`` probing at step 0 and after each due step."""
        from transformers import TrainerCallback

        probe = self

        class _ThreeDCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                if model is not None and not probe.records:
                    probe(0, model)

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if model is not None:
                    probe(state.global_step, model)

        return _ThreeDCallback()
