r"""Sequence log-probabilities of preference pairs under any causal LM.

A batch of B pairs is stored as ONE padded tensor of 2B rows, chosen rows first:
rows 0..B-1 are prompt_i + chosen_i, rows B..2B-1 are prompt_i + rejected_i. One forward
over the 2B rows gives both sequence log-probs (the prompt is duplicated, as in TRL and the
official code). For row k,

.. math::  \log\pi(a|s) = \sum_{t} m_{k,t}\,\log p(\text{tok}_{k,t}\mid\text{tok}_{k,<t}),

where the response mask m is 1 on response tokens (never on prompt or padding tokens).
Padding may be on either side: position ids are computed from the attention mask, so the
log-probs do not depend on the side (tested). The model is called with ``inputs_embeds``
that we compute from its own input-embedding layer, so the WDPO penalty
(:mod:`loglinear.torch.penalty`) can differentiate with respect to them.

Typical use::

    batch = tokenize_pairs(tokenizer, prompts, chosen, rejected)
    ref = reference_logps(ref_model, batch)            # or precompute once and store
    out = pair_logps(model, batch)
    c, r = logratios(out.logps, ref)
    losses = dpo_loss(c, r, beta=0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

__all__ = ["PairBatch", "PairOutput", "tokenize_pairs", "collate_pairs", "embed",
           "position_ids_from_mask", "sequence_logps", "pair_logps", "reference_logps",
           "logratios", "split_pairs"]


@dataclass(frozen=True)
class PairBatch:
    """A tokenised batch of B preference pairs as 2B rows, [chosen; rejected].

    Attributes:
        input_ids: (2B, T) long.
        attention_mask: (2B, T) long, 0 on padding.
        response_mask: (2B, T) bool, True on response tokens (the tokens scored).
        ref_logps: optional (2B,) precomputed reference sequence log-probs.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    ref_logps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        if self.input_ids.ndim != 2 or shape[0] % 2:
            raise ValueError(f"input_ids must be (2B, T) with an even row count, got {shape}")
        for name in ("attention_mask", "response_mask"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {tuple(shape)}")
        if bool((self.response_mask & (self.attention_mask == 0)).any()):
            raise ValueError("response_mask marks padding positions")
        if bool(self.response_mask[:, 0].any()):
            raise ValueError("the first position has no context and cannot be scored; "
                             "every row needs a nonempty prompt (e.g. a bos token)")
        if self.ref_logps is not None and self.ref_logps.shape != (shape[0],):
            raise ValueError(f"ref_logps must have shape ({shape[0]},)")

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device) -> PairBatch:
        move = lambda t: None if t is None else t.to(device)
        return PairBatch(move(self.input_ids), move(self.attention_mask),
                         move(self.response_mask), move(self.ref_logps))

    def with_ref(self, ref_logps: torch.Tensor) -> PairBatch:
        return replace(self, ref_logps=ref_logps.detach())

    def select(self, index: Sequence[int] | torch.Tensor) -> PairBatch:
        """The sub-batch of the given pair indices (both rows of each pair)."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = torch.cat([index, index + self.n_pairs])
        ref = None if self.ref_logps is None else self.ref_logps[rows]
        return PairBatch(self.input_ids[rows], self.attention_mask[rows],
                         self.response_mask[rows], ref)


def collate_pairs(prompt_ids: Sequence[Sequence[int]], chosen_ids: Sequence[Sequence[int]],
                  rejected_ids: Sequence[Sequence[int]], *, pad_token_id: int,
                  padding_side: str = "right", max_length: int | None = None) -> PairBatch:
    """Pad token-id lists into a :class:`PairBatch` (all 2B rows padded to one length).

    ``max_length`` truncates responses from the right (the prompt is kept whole).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not (len(prompt_ids) == len(chosen_ids) == len(rejected_ids)) or not prompt_ids:
        raise ValueError("prompts, chosen and rejected must be nonempty and of equal length")
    rows, resp = [], []
    for responses in (chosen_ids, rejected_ids):
        for p, a in zip(prompt_ids, responses):
            p, a = list(p), list(a)
            if not p:
                raise ValueError("every prompt needs at least one token (add a bos token)")
            if max_length is not None:
                if len(p) >= max_length:
                    raise ValueError(f"a prompt of {len(p)} tokens leaves no room for the "
                                     f"response within max_length={max_length}")
                a = a[: max_length - len(p)]
            rows.append(p + a)
            resp.append([False] * len(p) + [True] * len(a))
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    rmask = torch.zeros((len(rows), T), dtype=torch.bool)
    for k, (r, m) in enumerate(zip(rows, resp)):
        sl = slice(0, len(r)) if padding_side == "right" else slice(T - len(r), T)
        ids[k, sl] = torch.tensor(r, dtype=torch.long)
        att[k, sl] = 1
        rmask[k, sl] = torch.tensor(m, dtype=torch.bool)
    return PairBatch(ids, att, rmask)


def tokenize_pairs(tokenizer, prompts: Sequence[str], chosen: Sequence[str],
                   rejected: Sequence[str], *, padding_side: str = "right",
                   max_length: int | None = None, add_bos: bool = True,
                   add_eos: bool = True) -> PairBatch:
    """Tokenise prompt and responses separately (so the boundary is exact) and collate.

    A bos token (when the tokenizer has one and ``add_bos``) starts each prompt; an eos token
    ends each response when ``add_eos``.
    """
    def enc(texts):
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    p = [bos + ids for ids in enc(prompts)]
    c = [ids + eos for ids in enc(chosen)]
    r = [ids + eos for ids in enc(rejected)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return collate_pairs(p, c, r, pad_token_id=pad, padding_side=padding_side,
                         max_length=max_length)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's token embeddings of ``input_ids``, (N, T, H): the WDPO 'z'."""
    return model.get_input_embeddings()(input_ids)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _forward_logps(model, input_ids, attention_mask, response_mask, inputs_embeds, average):
    """(N,) response log-probs and (N,) mean logit over the vocabulary and response tokens."""
    if inputs_embeds is None:
        inputs_embeds = embed(model, input_ids)
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    logits = _at_least_float32(out.logits[:, :-1])
    target = input_ids[:, 1:]
    mask = response_mask[:, 1:]
    tok = torch.gather(logits.log_softmax(-1), 2, target.unsqueeze(-1)).squeeze(-1)
    # where, not multiply: some eager kernels give NaN logits at fully masked (left-pad)
    # query rows, and NaN * 0 is NaN.
    tok = torch.where(mask, tok, torch.zeros_like(tok))
    if not bool(torch.isfinite(tok).all()):
        raise ValueError("non-finite log-probabilities on response tokens; check the model's "
                         "dtype and attention implementation")
    total = tok.sum(-1)
    count = mask.sum(-1).clamp(min=1).to(total.dtype)
    with torch.no_grad():  # a logging statistic (TRL's logits/*), never differentiated
        mean_logit = torch.where(mask, logits.detach().mean(-1), 0.0).sum(-1) / count
    return (total / count if average else total), mean_logit


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor, *, inputs_embeds: torch.Tensor | None = None,
                   average: bool = False) -> torch.Tensor:
    """Sum (or mean, with ``average``) of response-token log-probs per row, shape (N,).

    Token t is scored by the logits at t-1. Logits are upcast to float32 before the
    log-softmax (bf16 log-probs of a 50k vocabulary lose several digits).
    """
    return _forward_logps(model, input_ids, attention_mask, response_mask, inputs_embeds,
                          average)[0]


@dataclass(frozen=True)
class PairOutput:
    """Output of :func:`pair_logps`: logps (2B,), the embeddings used (2B, T, H) and the
    mean logit of each row over the vocabulary and its response tokens (2B,), detached."""

    logps: torch.Tensor
    embeddings: torch.Tensor
    mean_logits: torch.Tensor | None = None


def pair_logps(model, batch: PairBatch, *, embeddings_grad: bool = False,
               average: bool = False) -> PairOutput:
    """One forward over the 2B rows of ``batch``; returns log-probs and the embeddings.

    With ``embeddings_grad`` the embeddings are a leaf of the graph that requires grad
    (needed by the WDPO penalty even when the embedding layer is frozen).
    """
    emb = embed(model, batch.input_ids)
    if embeddings_grad and not emb.requires_grad:
        emb = emb.detach().requires_grad_(True)
    logps, mean_logits = _forward_logps(model, batch.input_ids, batch.attention_mask,
                                        batch.response_mask, emb, average)
    return PairOutput(logps, emb, mean_logits)


@torch.no_grad()
def reference_logps(ref_model, batch: PairBatch, *, average: bool = False) -> torch.Tensor:
    """Reference sequence log-probs (2B,), no graph. Returns ``batch.ref_logps`` if present."""
    if batch.ref_logps is not None:
        return batch.ref_logps
    return sequence_logps(ref_model, batch.input_ids, batch.attention_mask,
                          batch.response_mask, average=average)


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a (2B, ...) tensor into its chosen and rejected halves."""
    if values.shape[0] % 2:
        raise ValueError("expected an even number of rows [chosen; rejected]")
    b = values.shape[0] // 2
    return values[:b], values[b:]


def logratios(policy_logps: torch.Tensor, ref_logps: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-ratios log pi/pi_ref, each (B,), from (2B,) log-probs."""
    if policy_logps.shape != ref_logps.shape:
        raise ValueError("policy and reference log-probs must have the same shape (2B,)")
    c, r = split_pairs(policy_logps - ref_logps.detach())
    return c, r
