"""``RobustDPOTrainer``: TRL's ``DPOTrainer`` with WDPO and KLDPO losses.

Written against trl 1.x (checked on 1.16), where the DPO refactor (v0.29) removed
``dpo_loss``/``concatenated_forward``; the only stable hook is ``compute_loss(model,
inputs, return_outputs, num_items_in_batch)``, which this class overrides. TRL's collator
gives ``input_ids``, ``attention_mask`` and ``completion_mask`` for the 2B rows
[chosen; rejected] and, with ``precompute_ref_log_probs``, ``ref_chosen_logps`` and
``ref_rejected_logps``; this is exactly :class:`loglinear.torch.sequence.PairBatch`.

* ``loss="dpo"`` reproduces TRL's ``sigmoid`` loss (tested to 1e-6); ``"ipo"`` is our
  un-normalised IPO (TRL's ``ipo`` averages log-ratios per token);
* ``loss="wdpo"`` adds the embedding-gradient penalty (``rho``, ``form``); the model is
  forwarded with ``inputs_embeds``. Requires non-reentrant gradient checkpointing (TRL
  forces reentrant checkpointing for PEFT + ZeRO-3, which is therefore unsupported) and
  ``use_liger_kernel=False`` (Liger bypasses ``compute_loss``);
* ``loss="kldpo"`` reweights with detached weights (``tau``, ``form``) computed over all
  ranks' pairs of the current micro-step (``loglinear.torch.distributed``); across
  gradient-accumulation micro-steps use :mod:`loglinear.torch.loop` instead.

TRL's ``beta`` (DPOConfig.beta) is used; ``loss_type``, ``label_smoothing``,
``f_divergence_type``, ``ld_alpha`` and ``use_weighting`` are ignored with a check.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from trl import DPOTrainer

from .distributed import kldpo_coefficients
from .losses import KLDPO_FORMS, WDPO_FORMS
from .objectives import OBJECTIVES, batch_objective
from .sequence import PairBatch, reference_logps

__all__ = ["RobustDPOTrainer"]


class _ModelView:
    """Forward through the (possibly DDP-wrapped) model; everything else from the unwrapped."""

    def __init__(self, wrapped, unwrapped):
        self._wrapped, self._unwrapped = wrapped, unwrapped

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._unwrapped, name)


class RobustDPOTrainer(DPOTrainer):
    """A ``trl.DPOTrainer`` whose loss is looked up in :data:`objectives.OBJECTIVES`.

    Args (in addition to DPOTrainer's): ``loss`` ("dpo" | "ipo" | "wdpo" | "kldpo"),
    ``rho`` (WDPO radius >= 0), ``tau`` (KLDPO temperature > 0), ``form`` ("paper" |
    "official"), ``base_loss`` (per-pair loss under WDPO/KLDPO; default "dpo").
    """

    def __init__(self, *args, loss: str = "dpo", rho: float = 0.0, tau: float = 1.0,
                 form: str = "paper", base_loss: str | None = None, **kwargs):
        if loss not in OBJECTIVES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {sorted(OBJECTIVES)}")
        if form not in WDPO_FORMS or form not in KLDPO_FORMS:
            raise ValueError("form must be 'paper' or 'official'")
        if rho < 0 or tau <= 0:
            raise ValueError("need rho >= 0 and tau > 0")
        super().__init__(*args, **kwargs)
        if getattr(self.args, "use_liger_kernel", False):
            raise ValueError("use_liger_kernel=True bypasses compute_loss; set it to False")
        if self.use_weighting or self.ld_alpha is not None:
            raise ValueError("use_weighting and ld_alpha are not supported by RobustDPOTrainer")
        self.robust_loss, self.rho, self.tau, self.form = loss, float(rho), float(tau), form
        self.base_loss = base_loss

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
        view = _ModelView(model, self.accelerator.unwrap_model(model))
        spec = OBJECTIVES[self.robust_loss]
        kl_coef = None
        if spec.global_weights:  # weights over all ranks' pairs of this micro-step
            kl_coef = functools.partial(kldpo_coefficients, tau=self.tau, form=self.form)
        ctx = torch.enable_grad() if spec.input_grads else contextlib.nullcontext()
        with ctx:  # the penalty needs input gradients even in evaluation
            out = batch_objective(view, batch, objective=self.robust_loss, beta=self.beta,
                                  base_loss=self.base_loss, rho=self.rho, tau=self.tau,
                                  form=self.form, kl_coef=kl_coef)
        loss = out.loss if torch.is_grad_enabled() else out.loss.detach()
        gather = self.accelerator.gather_for_metrics
        self._metrics[mode]["rewards/margins"].append(gather(out.margins.detach()).mean().item())
        self._metrics[mode]["rewards/accuracies"].append(
            gather((out.margins.detach() > 0).float()).mean().item())
        self._metrics[mode]["base_loss"].append(gather(out.losses.detach()).mean().item())
        if out.grad_sq_norms is not None:
            self._metrics[mode]["wdpo/grad_sq_norm"].append(
                gather(out.grad_sq_norms.detach()).mean().item())
        if out.weights is not None:
            self._metrics[mode]["kldpo/weight_max"].append(gather(out.weights).max().item())
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the robust loss only (there are no logits to return)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
