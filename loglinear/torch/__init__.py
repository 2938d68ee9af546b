"""Torch backend: the same preference losses on log-linear policies and Hugging Face LMs.

Modules (import them directly; nothing heavy runs at import):

* :mod:`~loglinear.torch.losses` — per-pair DPO/IPO losses, WDPO and KLDPO pieces.
* :mod:`~loglinear.torch.loglinear_policy` — a log-linear policy as an ``nn.Module``.
* :mod:`~loglinear.torch.sequence` — sequence log-probs for any causal LM.
* :mod:`~loglinear.torch.penalty` — the batched WDPO input-embedding gradient penalty.
* :mod:`~loglinear.torch.distributed` — KLDPO weights over the global batch.
* :mod:`~loglinear.torch.models` — tiny offline models and the SmolLM2 loader.
* :mod:`~loglinear.torch.loop` — a minimal training loop.
* :mod:`~loglinear.torch.trl` — ``RobustDPOConfig`` and ``RobustDPOTrainer`` (import trl, so
  they are loaded lazily).
"""

from __future__ import annotations

__all__ = ["RobustDPOConfig", "RobustDPOTrainer"]


def __getattr__(name: str):
    # Lazy so that ``import loglinear.torch`` never imports trl/transformers.
    if name in __all__:
        from . import trl

        return getattr(trl, name)
    raise AttributeError(f"module 'loglinear.torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted((set(globals()) - {"annotations"}) | set(__all__))
