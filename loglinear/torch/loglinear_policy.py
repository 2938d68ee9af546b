r"""A log-linear policy as a torch module: the bridge between the two backends.

For pair i with feature difference x_i, offset o_i = log pi_ref(a^1|s) - log pi_ref(a^2|s)
and label y_i, the labelled log-ratios are

.. math::  c_i = (2y_i - 1)(\theta^\top x_i - o_i), \qquad r_i = 0,

so ``losses.dpo_loss(c, r, beta=beta)`` is the numpy core's per-pair DPO loss
(docs/theory.md §2.2). The WDPO adversary moves x (docs/theory.md §4.1), so the penalty
differentiates with respect to x itself, with ONE batched ``autograd.grad`` exactly as for
a language model's embeddings.

:func:`fit_torch` minimises any of the torch objectives (:data:`LOGLINEAR_OBJECTIVES`)
with LBFGS (smooth objectives) or with the paper's fixed-point gradient descent (KLDPO,
whose weights are recomputed and detached at every step); the tests check that it reaches
the numpy solutions (fit_dpo, the KL-DRO solver at the implied radius, the WDPO closed
forms) to 1e-5 in theta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data import PreferenceData
from ..registry import Registry
from .losses import get_loss, kldpo_objective, wdpo_objective, weighted_mean

__all__ = ["PreferenceTensors", "LogLinearPolicy", "LOGLINEAR_OBJECTIVES", "TorchFit",
           "fit_torch"]


@dataclass(frozen=True)
class PreferenceTensors:
    """A :class:`~loglinear.PreferenceData` as torch tensors: x (n,d), sign, offset, weight (n,)."""

    x: torch.Tensor
    sign: torch.Tensor
    offset: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def from_data(cls, data: PreferenceData, *, dtype: torch.dtype = torch.float64,
                  device: str | torch.device = "cpu") -> PreferenceTensors:
        t = lambda a: torch.as_tensor(np.array(a, dtype=np.float64), dtype=dtype,
                                      device=device)
        return cls(t(data.x), t(data.sign), t(data.offset), t(data.weight))


class LogLinearPolicy(torch.nn.Module):
    """theta in R^d as an ``nn.Parameter``; ``forward`` gives the labelled log-ratios."""

    def __init__(self, dim: int, *, theta0=None, dtype: torch.dtype = torch.float64):
        super().__init__()
        if theta0 is None:
            theta0 = torch.zeros(dim, dtype=dtype)
        theta0 = torch.as_tensor(np.asarray(theta0, dtype=np.float64), dtype=dtype)
        if theta0.shape != (dim,):
            raise ValueError(f"theta0 must have shape ({dim},), got {tuple(theta0.shape)}")
        self.theta = torch.nn.Parameter(theta0.clone())

    def forward(self, x: torch.Tensor, data: PreferenceTensors
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, r) = ((2y-1)(theta.x - o), 0), each (n,). ``x`` may require grad (WDPO)."""
        c = data.sign * (x @ self.theta - data.offset)
        return c, torch.zeros_like(c)


def _dpo_like(policy, data, *, beta, base_loss):
    c, r = policy(data.x, data)
    return weighted_mean(get_loss(base_loss)(c, r, beta=beta), data.weight)


def _wdpo(policy, data, *, beta, base_loss, rho, form):
    x = data.x.detach().requires_grad_(True)
    c, r = policy(x, data)
    losses = get_loss(base_loss)(c, r, beta=beta)
    (gx,) = torch.autograd.grad(losses.sum(), x, create_graph=True)  # one batched grad
    return wdpo_objective(losses, gx.pow(2).sum(-1), rho=rho, form=form, weight=data.weight)


def _kldpo(policy, data, *, beta, base_loss, tau, form):
    c, r = policy(data.x, data)
    losses = get_loss(base_loss)(c, r, beta=beta)
    return kldpo_objective(losses, tau=tau, form=form, weight=data.weight)


@dataclass(frozen=True)
class LogLinearObjective:
    """A torch objective of a log-linear policy: ``fn(policy, tensors, *, beta, base_loss,
    **{p: ... for p in params})``, its default base loss, and whether it is fitted by the
    paper's fixed-point gradient descent (detached weights, which change between
    evaluations in a way LBFGS cannot see) instead of LBFGS."""

    fn: Callable[..., torch.Tensor]
    params: tuple[str, ...] = ()
    base_loss: str = "dpo"
    fixed_point: bool = False

    def __call__(self, policy, data, **kwargs) -> torch.Tensor:
        return self.fn(policy, data, **kwargs)


LOGLINEAR_OBJECTIVES: Registry[LogLinearObjective] = Registry("objective", {
    "dpo": LogLinearObjective(_dpo_like),
    "ipo": LogLinearObjective(_dpo_like, base_loss="ipo"),
    "wdpo": LogLinearObjective(_wdpo, ("rho", "form")),
    "kldpo": LogLinearObjective(_kldpo, ("tau", "form"), fixed_point=True),
})


@dataclass(frozen=True)
class TorchFit:
    """theta (d,), final objective value, gradient norm, iterations, method."""

    theta: np.ndarray
    value: float
    grad_norm: float
    iterations: int
    method: str


def fit_torch(data: PreferenceData, *, beta: float, objective: str = "dpo",
              base_loss: str | None = None, rho: float = 0.0, tau: float = 1.0,
              form: str = "paper", theta0=None, gtol: float = 1e-10, max_iter: int = 20000,
              lr: float | None = None) -> TorchFit:
    """Minimise a torch objective over theta for a log-linear policy (float64).

    DPO, IPO and WDPO use LBFGS with a strong-Wolfe line search. KLDPO uses the paper's
    Algorithm 2: gradient descent on sum_i P_i l_i with P recomputed and detached at every
    step (its gradient is that of tau log sum_i q_i exp(l_i/tau)); the default step
    1/(beta^2 max||x||^2 / 4 + ...) is a safe inverse-smoothness bound for DPO losses.
    Raises RuntimeError if the gradient norm does not reach ``gtol``.
    """
    spec = LOGLINEAR_OBJECTIVES.get(objective)
    tensors = PreferenceTensors.from_data(data)
    policy = LogLinearPolicy(data.d, theta0=theta0)
    given = dict(rho=rho, tau=tau, form=form)
    kw = dict(beta=beta, base_loss=base_loss or spec.base_loss,
              **{p: given[p] for p in spec.params})

    def value_and_grad():
        policy.zero_grad()
        val = spec.fn(policy, tensors, **kw)
        val.backward()
        return val

    if spec.fixed_point:
        xmax = float(np.max(np.sum(data.x ** 2, axis=1)))
        # DPO loss curvature <= beta^2 |x|^2 / 4; the log-sum-exp adds up to beta^2|x|^2 |l'|^2/tau
        step = lr or 1.0 / (beta ** 2 * xmax * (0.25 + 1.0 / tau))
        it = 0
        while it < max_iter:
            it += 1
            value_and_grad()
            g = policy.theta.grad
            if float(g.norm()) < gtol:
                break
            with torch.no_grad():
                policy.theta -= step * g
        method = "fixed-point-gd"
    else:
        opt = torch.optim.LBFGS([policy.theta], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=gtol, tolerance_change=0.0,
                                line_search_fn="strong_wolfe")
        opt.step(value_and_grad)
        it = opt.state[opt._params[0]].get("n_iter", 0)
        method = "lbfgs"
    val = value_and_grad()
    gnorm = float(policy.theta.grad.norm())
    if not np.isfinite(gnorm) or gnorm > max(gtol * 100, 1e-8):
        raise RuntimeError(f"{method} did not converge for {objective}: |grad| = {gnorm:.3g}")
    return TorchFit(policy.theta.detach().numpy().copy(), float(val.detach()), gnorm, int(it),
                    method)
