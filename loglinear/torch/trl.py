"""``RobustDPOTrainer`` and ``RobustDPOConfig``: TRL's DPO with WDPO and KLDPO losses.

Typical use (the robust settings live in the config and are saved with the run)::

    args = RobustDPOConfig(output_dir="out", robust_loss="kldpo", tau=0.5, beta=0.1)
    trainer = RobustDPOTrainer(model=model, ref_model=ref_model, args=args,
                               train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

Written against trl 1.x (checked on 1.16), where the DPO refactor (v0.29) removed
``dpo_loss``/``concatenated_forward``; the only stable hook is ``compute_loss(model,
inputs, return_outputs, num_items_in_batch)``, which the trainer overrides. TRL's collator
gives ``input_ids``, ``attention_mask`` and ``completion_mask`` for the 2B rows
[chosen; rejected] and, with ``precompute_ref_log_probs``, ``ref_chosen_logps`` and
``ref_rejected_logps``; this is exactly :class:`loglinear.torch.sequence.PairBatch`.

* ``robust_loss="dpo"`` reproduces TRL's ``sigmoid`` loss (tested to 1e-6); ``"ipo"`` is
  our un-normalised IPO (TRL's ``ipo`` averages log-ratios per token);
* ``"wdpo"`` adds the embedding-gradient penalty (``rho``, ``form``); the model is
  forwarded with ``inputs_embeds``. Requires non-reentrant gradient checkpointing (TRL
  forces reentrant checkpointing for PEFT + ZeRO-3, which is therefore unsupported);
* ``"kldpo"`` reweights with detached weights (``tau``, ``form``) computed over all
  ranks' pairs of the current micro-step (``loglinear.torch.distributed``); across
  gradient-accumulation micro-steps use :mod:`loglinear.torch.loop` instead.

**Reference model.** Pass ``ref_model`` (e.g. ``copy.deepcopy(model)`` before training),
or set ``precompute_ref_log_probs=True`` (the initial model scores the data once), or
train a PEFT adapter (the base model is the reference). Without any of these TRL reloads
the reference from ``model.config.name_or_path``; a model built from a config has no such
name, and the trainer says so instead of failing inside TRL.

**Per-pair weights.** An optional ``weight`` column (finite, > 0) is kept through TRL's
tokenisation and collation and honoured by every loss as base weights q_i = w_i / B:
weights of 1 give the unweighted loss; weights averaging 1 over the data give the weighted
objective sum_i w_i l_i / sum_i w_i in expectation over minibatches.

**Metrics.** TRL's ``rewards/{chosen,rejected,margins,accuracies}``, ``logps/*``,
``logits/*`` and ``num_tokens``, plus ``base_loss`` and the robust ones: for WDPO
``wdpo/penalty`` (the penalty term of the loss) and ``wdpo/grad_sq_norm`` (mean g_i); for
KLDPO ``kldpo/weight_max`` (max_i P_i/q_i, the worst case's largest likelihood ratio; 1 is
uniform) and ``kldpo/ess_fraction`` (Kish ESS of P relative to q, in (0, 1]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from trl import DPOConfig, DPOTrainer

from ..stats import effective_sample_size
from .distributed import kldpo_coefficients
from .losses import KLDPO_FORMS, LOSSES, WDPO_FORMS
from .objectives import OBJECTIVES, batch_objective
from .sequence import PairBatch, reference_logps, split_pairs

__all__ = ["RobustDPOConfig", "RobustDPOTrainer", "WEIGHT_COLUMN"]

WEIGHT_COLUMN = "weight"
ROBUST_FIELDS = ("robust_loss", "rho", "tau", "form", "base_loss")

# TRL options that the robust losses do not implement: name -> (allowed values, reason)
_UNSUPPORTED = {
    "loss_type": ((["sigmoid"],), "the loss is chosen by robust_loss and base_loss "
                  "('dpo' is TRL's 'sigmoid'); e.g. RobustDPOConfig(robust_loss='wdpo')"),
    "loss_weights": ((None, [1.0]), "a single loss is trained"),
    "label_smoothing": ((0.0,), "no robust loss implements label smoothing"),
    "f_divergence_type": (("reverse_kl",), "the losses use the reverse-KL log-ratios"),
    "ld_alpha": ((None,), "LD-DPO length weighting is not implemented"),
    "use_weighting": ((False,), f"use a per-pair {WEIGHT_COLUMN!r} column instead"),
    "use_liger_kernel": ((False,), "Liger's kernels have no double backward"),
}


def _check_trl_options(args) -> None:
    for name, (allowed, why) in _UNSUPPORTED.items():
        value = getattr(args, name, allowed[0])
        if not any(value == a for a in allowed):
            raise ValueError(f"{name}={value!r} is not supported by RobustDPOTrainer ({why}); "
                             f"allowed: {' or '.join(repr(a) for a in allowed)}")


def _check_robust_options(args) -> None:
    if args.robust_loss not in OBJECTIVES:
        raise ValueError(f"robust_loss: unknown loss {args.robust_loss!r}; allowed: "
                         f"{sorted(OBJECTIVES)}")
    if args.form not in WDPO_FORMS or args.form not in KLDPO_FORMS:
        raise ValueError(f"form={args.form!r} is unknown; allowed: {sorted(WDPO_FORMS)}")
    if args.base_loss is not None and args.base_loss not in LOSSES:
        raise ValueError(f"base_loss={args.base_loss!r} is unknown; allowed: {sorted(LOSSES)}")
    if not (math.isfinite(args.rho) and args.rho >= 0):
        raise ValueError(f"rho must be a finite number >= 0, got {args.rho}")
    if not (math.isfinite(args.tau) and args.tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {args.tau}")
    spec = OBJECTIVES[args.robust_loss]
    if "rho" in spec.params and args.rho == 0:
        warnings.warn(f"robust_loss={args.robust_loss!r} with rho=0 has no penalty: it "
                      "trains plain DPO; set rho > 0", UserWarning, stacklevel=4)
    defaults = {"rho": 0.0, "tau": 1.0, "form": "paper"}
    unused = [k for k, v in defaults.items() if getattr(args, k) != v and k not in spec.params]
    if unused:
        warnings.warn(f"robust_loss={args.robust_loss!r} does not use {unused}; they are "
                      "ignored", UserWarning, stacklevel=4)
    _check_trl_options(args)


@dataclass
class RobustDPOConfig(DPOConfig):
    r"""``trl.DPOConfig`` with the robust loss's settings, saved with the run like every
    other field (``to_dict``, ``to_json_string``, ``training_args.bin``).

    Parameters (besides DPOConfig's; TRL's ``beta`` is the DPO temperature):
        robust_loss: "dpo" | "ipo" | "wdpo" | "kldpo" (:data:`objectives.OBJECTIVES`).
        rho: WDPO radius >= 0 (docs/theory.md §4.1); 0 is DPO and warns.
        tau: KLDPO temperature > 0 (docs/theory.md §4.2).
        form: "paper" | "official", the variant of either surrogate.
        base_loss: the per-pair loss under WDPO/KLDPO ("dpo" | "ipo"); default "dpo".

    TRL options that would change the loss (``loss_type`` other than "sigmoid",
    ``loss_weights``, ``label_smoothing``, ``f_divergence_type``, ``ld_alpha``,
    ``use_weighting``, ``use_liger_kernel``) raise a ValueError naming the option.
    """

    robust_loss: str = field(default="dpo", metadata={
        "help": "Robust objective: 'dpo', 'ipo', 'wdpo' or 'kldpo'.",
        "choices": ["dpo", "ipo", "wdpo", "kldpo"]})
    rho: float = field(default=0.0, metadata={
        "help": "WDPO radius rho >= 0 (used by robust_loss='wdpo')."})
    tau: float = field(default=1.0, metadata={
        "help": "KLDPO temperature tau > 0 (used by robust_loss='kldpo')."})
    form: str = field(default="paper", metadata={
        "help": "Surrogate variant: 'paper' (the paper's algorithms) or 'official' (the "
                "released code).", "choices": ["paper", "official"]})
    base_loss: str | None = field(default=None, metadata={
        "help": "Per-pair loss under WDPO/KLDPO: 'dpo' or 'ipo' (default 'dpo')."})

    def __post_init__(self):
        super().__post_init__()
        self.rho, self.tau = float(self.rho), float(self.tau)
        _check_robust_options(self)


def _robust_config(args, overrides: dict) -> RobustDPOConfig:
    """A RobustDPOConfig with the fields of ``args`` (a DPOConfig) and ``overrides``."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    kw.update(overrides)
    with warnings.catch_warnings():  # transformers re-warns on its deprecated aliases
        warnings.simplefilter("ignore", FutureWarning)
        return RobustDPOConfig(**kw)


def _check_reference(model, ref_model, args, peft_config) -> None:
    if (ref_model is not None or isinstance(model, str) or peft_config is not None
            or args.precompute_ref_log_probs or hasattr(model, "disable_adapter")):
        return
    if not getattr(getattr(model, "config", None), "_name_or_path", ""):
        raise ValueError(
            "RobustDPOTrainer needs a reference model: pass ref_model= (e.g. "
            "copy.deepcopy(model) before training), set precompute_ref_log_probs=True, or "
            "train a PEFT adapter; this model was built from a config, so it has no name "
            "from which TRL could reload the reference")


def _check_weights(dataset, where: str) -> None:
    if isinstance(dataset, dict):
        for key, part in dataset.items():
            _check_weights(part, f"{where}[{key!r}]")
        return
    if WEIGHT_COLUMN not in (getattr(dataset, "column_names", None) or []):
        return
    w = np.asarray(dataset[WEIGHT_COLUMN], dtype=float)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"{where} column {WEIGHT_COLUMN!r} must hold one finite number > 0 "
                         "per pair (drop pairs of weight 0)")
    if abs(w.mean() - 1.0) > 0.01:
        warnings.warn(f"{where} column {WEIGHT_COLUMN!r} averages {w.mean():.4g}, not 1; the "
                      "loss is sum_i w_i l_i / B, so this also scales the learning rate; divide "
                      "by the mean for the normalised weighted objective", UserWarning,
                      stacklevel=3)


class _WeightCollator:
    """TRL's collator plus the per-pair ``weight`` column (which it would drop)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, examples):
        out = self.base(examples)
        if examples and WEIGHT_COLUMN in examples[0]:
            out[WEIGHT_COLUMN] = torch.tensor([float(e[WEIGHT_COLUMN]) for e in examples])
        return out


class _ModelView:
    """Forward through the (possibly DDP-wrapped) model; everything else from the unwrapped."""

    def __init__(self, wrapped, unwrapped):
        self._wrapped, self._unwrapped = wrapped, unwrapped

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._unwrapped, name)


_UNSET = object()


class RobustDPOTrainer(DPOTrainer):
    """A ``trl.DPOTrainer`` whose loss is looked up in :data:`objectives.OBJECTIVES`.

    The robust settings come from ``args``, a :class:`RobustDPOConfig` (a plain
    ``DPOConfig`` is converted, with ``robust_loss="dpo"``). The keyword arguments
    ``loss``, ``rho``, ``tau``, ``form`` and ``base_loss`` of earlier versions still work
    and are copied into the config, with a DeprecationWarning.
    """

    def __init__(self, model, ref_model=None, args=None, *rest, loss=_UNSET, rho=_UNSET,
                 tau=_UNSET, form=_UNSET, base_loss=_UNSET, **kwargs):
        legacy = {k: v for k, v in (("robust_loss", loss), ("rho", rho), ("tau", tau),
                                    ("form", form), ("base_loss", base_loss)) if v is not _UNSET}
        if legacy:
            warnings.warn("RobustDPOTrainer(loss=, rho=, tau=, form=, base_loss=) is "
                          "deprecated; set them in RobustDPOConfig(robust_loss=..., rho=...)",
                          DeprecationWarning, stacklevel=2)
        if args is None:
            args = RobustDPOConfig(output_dir="RobustDPO", **legacy)
        elif legacy or not isinstance(args, RobustDPOConfig):
            args = _robust_config(args, legacy)
        _check_reference(model, ref_model, args, kwargs.get("peft_config"))
        train = kwargs.get("train_dataset", rest[1] if len(rest) > 1 else None)
        _check_weights(train, "train_dataset")
        _check_weights(kwargs.get("eval_dataset", rest[2] if len(rest) > 2 else None),
                       "eval_dataset")
        super().__init__(model, ref_model, args, *rest, **kwargs)
        self.data_collator = _WeightCollator(self.data_collator)

    # the robust settings, read from the config (kept as attributes for earlier callers)
    robust_loss = property(lambda self: self.args.robust_loss)
    rho = property(lambda self: self.args.rho)
    tau = property(lambda self: self.args.tau)
    form = property(lambda self: self.args.form)
    base_loss = property(lambda self: self.args.base_loss)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if WEIGHT_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT_COLUMN]

    def _reference(self, model, batch: PairBatch) -> torch.Tensor:
        if self.ref_model is not None:
            return reference_logps(self.ref_model, batch)
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise ValueError("no reference: pass ref_model, precompute_ref_log_probs=True, or a "
                             "PEFT model (its base model is the reference)")
        with unwrapped.disable_adapter():
            return reference_logps(unwrapped, batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        ref = None
        if "ref_chosen_logps" in inputs:
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        batch = PairBatch(inputs["input_ids"], inputs["attention_mask"],
                          inputs["completion_mask"].bool(), ref)
        if ref is None:
            batch = batch.with_ref(self._reference(model, batch))
        weight = inputs.get(WEIGHT_COLUMN)
        view = _ModelView(model, self.accelerator.unwrap_model(model))
        cfg = self.args
        spec = OBJECTIVES[cfg.robust_loss]
        kl_coef = None
        if spec.global_weights:  # weights over all ranks' pairs of this micro-step
            kl_coef = functools.partial(kldpo_coefficients, tau=cfg.tau, form=cfg.form,
                                        weight=weight)
        ctx = torch.enable_grad() if spec.input_grads else contextlib.nullcontext()
        with ctx:  # the penalty needs input gradients even in evaluation
            out = batch_objective(view, batch, objective=cfg.robust_loss, beta=self.beta,
                                  base_loss=cfg.base_loss, rho=cfg.rho, tau=cfg.tau,
                                  form=cfg.form, kl_coef=kl_coef, weight=weight)
        loss = out.loss if torch.is_grad_enabled() else out.loss.detach()
        self._log_metrics(mode, batch, out, weight)
        return (loss, out) if return_outputs else loss

    def _log_metrics(self, mode, batch: PairBatch, out, weight) -> None:
        """TRL's standard metrics and the robust ones, gathered over ranks."""
        gather = self.accelerator.gather_for_metrics
        log = self._metrics[mode]
        mean = lambda t: gather(t.detach()).float().mean().item()  # noqa: E731
        chosen, rejected = split_pairs(self.beta * (out.logps.detach() - batch.ref_logps))
        log["rewards/chosen"].append(mean(chosen))
        log["rewards/rejected"].append(mean(rejected))
        log["rewards/margins"].append(mean(out.margins))
        log["rewards/accuracies"].append(mean((out.margins > 0).float()))
        logps_c, logps_r = split_pairs(out.logps.detach())
        log["logps/chosen"].append(mean(logps_c))
        log["logps/rejected"].append(mean(logps_r))
        if out.mean_logits is not None:  # token-weighted, as TRL's logits/*
            counts = batch.response_mask[:, 1:].sum(-1).to(out.mean_logits.dtype)
            for name, s, c in zip(("chosen", "rejected"), split_pairs(out.mean_logits * counts),
                                  split_pairs(counts)):
                total = gather(c.sum()).sum().item()
                log[f"logits/{name}"].append(gather(s.sum()).sum().item() / max(total, 1.0))
        if mode == "train":
            self._total_train_tokens += gather(batch.attention_mask.sum()).sum().item()
        log["num_tokens"] = [self._total_train_tokens]
        log["base_loss"].append(mean(out.losses))
        name = self.args.robust_loss
        if out.grad_sq_norms is not None:
            log[f"{name}/grad_sq_norm"].append(mean(out.grad_sq_norms))
        if out.penalty is not None:
            log[f"{name}/penalty"].append(mean(out.penalty.reshape(1)))
        if out.weights is not None:
            W = gather(out.weights.detach()).double().cpu().numpy()
            q = (np.ones_like(W) if weight is None
                 else gather(weight.detach()).double().cpu().numpy())
            P, q = W / W.sum(), q / q.sum()
            log[f"{name}/weight_max"].append(float(np.max(P / q)))
            log[f"{name}/ess_fraction"].append(effective_sample_size(P, q))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the robust loss only (there are no logits to return)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
