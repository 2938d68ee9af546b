r"""Neural policies in the finite environments: :math:`\pi_\theta(a|s)\propto e^{f_\theta(\psi)}`.

f is an MLP over the features :math:`\psi(s,a)\in R^d` with ``depth`` hidden layers of
``width`` units and a bias-free linear read-out (a read-out bias cancels in the softmax).
Depth 0 is :math:`f = \theta\cdot\psi`, the log-linear policy of the core, exactly.

With a log-linear reference :math:`\pi_{ref} = \pi_{\theta_{ref}}` the DPO margin of a pair
is :math:`h = f(\psi(s,a^1)) - f(\psi(s,a^2)) - o` with :math:`o = \theta_{ref}\cdot x`
(the data's offset), since the partition functions cancel; the signed margin is
:math:`m = (2y-1)\beta h`, as in :mod:`loglinear.losses`.

Objectives (all weighted by the data's q, a registry :data:`OBJECTIVES`; each takes its
one hyperparameter by name):

* ``dpo``: :math:`\sum_i q_i l_i`;
* ``wdpo`` (paper form, Algorithm 1, docs/theory.md §4.1, penalty ``rho``):
  :math:`\sum_i q_i l_i + \rho(\sum_i q_i g_i)^{1/2}`,
  :math:`g_i = \|\nabla_x l_i\|^2` where the pair's input x moves as
  :math:`\psi^1 + \delta/2,\ \psi^2 - \delta/2` (this project's choice), i.e.
  :math:`\nabla_x l = (\nabla_{\psi^1} l - \nabla_{\psi^2} l)/2`. For depth 0 this is the
  core's :math:`\nabla_x l = -(2y-1)\beta\sigma(-m)\theta` exactly;
* ``kldpo`` (paper form, Algorithm 2, docs/theory.md §4.2, temperature ``tau``):
  :math:`\tau\log\sum_i q_i e^{l_i/\tau}`, whose
  gradient is the detached-weight gradient :math:`\sum_i P_i\nabla l_i` of Algorithm 2.

The exact KL worst case at fixed parameters depends only on the per-pair losses, so it
stays exact for any f: :func:`kl_worst_case` hands the margins to
:func:`loglinear.robust.kl_value`.

Fits use full-batch L-BFGS (strong Wolfe) in float64; :func:`hessian_eigs` gives the
spectrum of the objective's Hessian in parameter space at the solution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import PreferenceData, as_generator
from ..registry import Registry, named_hyperparameter
from .losses import dpo_loss, wdpo_penalty

ACTIVATIONS: Registry[Callable] = Registry("activation", {
    "tanh": torch.tanh, "softplus": F.softplus, "gelu": F.gelu})
DTYPE = torch.float64


@dataclass(frozen=True)
class NeuralPolicy:
    """An MLP score f over d features: ``depth`` hidden layers of ``width`` units.

    Parameters live in one flat float64 vector (layout: for each hidden layer W (width,
    in) then b (width,), then the read-out w (last,)). Depth 0 has exactly d parameters,
    the log-linear theta.
    """

    dim: int
    depth: int = 0
    width: int = 16
    activation: str = "tanh"

    def __post_init__(self):
        if self.dim < 1 or self.depth < 0 or (self.depth > 0 and self.width < 1):
            raise ValueError(f"need dim >= 1, depth >= 0 and width >= 1, got dim={self.dim}, "
                             f"depth={self.depth}, width={self.width}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; allowed: "
                             f"{sorted(ACTIVATIONS)}")

    @property
    def name(self) -> str:
        return "loglinear" if self.depth == 0 else f"mlp{self.depth}x{self.width}"

    def shapes(self) -> list[tuple[int, ...]]:
        out, fan_in = [], self.dim
        for _ in range(self.depth):
            out += [(self.width, fan_in), (self.width,)]
            fan_in = self.width
        return out + [(fan_in,)]

    @property
    def n_params(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes()))

    def init(self, rng: np.random.Generator | int, *, scale: float = 1.0) -> np.ndarray:
        """Random parameters: weights N(0, scale^2/fan_in), biases N(0, 0.1^2 scale^2).
        ``rng`` is a Generator or an integer seed."""
        rng = as_generator(rng)
        parts = []
        for shape in self.shapes():
            sd = scale / np.sqrt(shape[-1]) if len(shape) == 2 else 0.1 * scale
            if len(shape) == 1 and shape is self.shapes()[-1]:
                sd = scale / np.sqrt(shape[0])
            parts.append(rng.normal(0.0, sd, size=int(np.prod(shape))))
        return np.concatenate(parts)

    def scores(self, params: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """f(psi) for psi of shape (..., d); returns shape (...)."""
        if params.shape != (self.n_params,):
            raise ValueError(f"params must have shape ({self.n_params},), got "
                             f"{tuple(params.shape)}")
        act = ACTIVATIONS[self.activation]
        h, k = psi, 0
        for _ in range(self.depth):
            fan_in = h.shape[-1]
            W = params[k:k + self.width * fan_in].reshape(self.width, fan_in)
            k += self.width * fan_in
            b = params[k:k + self.width]
            k += self.width
            h = act(h @ W.T + b)
        return h @ params[k:]

    def policy(self, params, features) -> np.ndarray:
        """(S, A) pi(a|s) = softmax_a f(psi(s, a))."""
        with torch.no_grad():
            f = self.scores(_t(params), _t(features))
            return torch.softmax(f, dim=-1).numpy()


def _t(a) -> torch.Tensor:
    # a copy: the environments' arrays are read-only, which torch warns about when shared
    return a if torch.is_tensor(a) else torch.tensor(np.asarray(a, dtype=float), dtype=DTYPE)


@dataclass(frozen=True)
class PairTensors:
    """The data as tensors: psi(s,a1), psi(s,a2) (n, d), signs (n,), offsets, weights, and
    the (S A, d) feature table with the pairs' row indices (scores are computed once per
    (s, a) on the table, then gathered)."""

    psi1: torch.Tensor
    psi2: torch.Tensor
    sign: torch.Tensor
    offset: torch.Tensor
    weight: torch.Tensor
    table: torch.Tensor
    idx1: torch.Tensor
    idx2: torch.Tensor

    @classmethod
    def from_data(cls, data: PreferenceData, features) -> PairTensors:
        if not data.has_actions:
            raise ValueError("neural policies need pairs with state/a1/a2 indices "
                             "(env.sample, env.sample_counts or env.population)")
        psi = np.array(features, dtype=float)
        if psi.ndim != 3 or psi.shape[2] != data.d:
            raise ValueError(f"features must be (S, A, {data.d}), got {psi.shape}")
        S, A, d = psi.shape
        i1 = torch.as_tensor(data.state * A + data.a1)
        i2 = torch.as_tensor(data.state * A + data.a2)
        return cls(_t(psi[data.state, data.a1]), _t(psi[data.state, data.a2]),
                   _t(data.sign), _t(data.offset), _t(data.weight), _t(psi.reshape(S * A, d)),
                   i1, i2)

    def subset(self, idx) -> PairTensors:
        """The pairs ``idx`` (with repeats) with uniform weights: a minibatch."""
        idx = torch.as_tensor(idx)
        w = torch.full((len(idx),), 1.0 / len(idx), dtype=DTYPE)
        return PairTensors(self.psi1[idx], self.psi2[idx], self.sign[idx], self.offset[idx],
                           w, self.table, self.idx1[idx], self.idx2[idx])


def pair_losses(policy: NeuralPolicy, params, pairs: PairTensors, *, beta: float,
                input_grads: bool = False):
    r"""Per-pair DPO losses (n,) and, if asked, g_i = ||grad_x l_i||^2 (with a graph).

    .. math:: l_i = \mathrm{softplus}(-(2y_i-1)\beta(f(\psi^1_i) - f(\psi^2_i) - o_i))
    """
    if not input_grads:
        f = policy.scores(params, pairs.table)
        h = f[pairs.idx1] - f[pairs.idx2] - pairs.offset
        return dpo_loss(pairs.sign * h, torch.zeros_like(h), beta=beta), None
    psi1 = pairs.psi1.clone().requires_grad_(True)
    psi2 = pairs.psi2.clone().requires_grad_(True)
    h = policy.scores(params, psi1) - policy.scores(params, psi2) - pairs.offset
    losses = dpo_loss(pairs.sign * h, torch.zeros_like(h), beta=beta)
    # each loss depends on its own rows only, so one batched grad gives per-pair gradients
    g1, g2 = torch.autograd.grad(losses.sum(), (psi1, psi2), create_graph=True)
    return losses, (0.25 * (g1 - g2) ** 2).sum(dim=1)


def _dpo(policy, params, pairs, *, beta):
    losses, _ = pair_losses(policy, params, pairs, beta=beta)
    return (pairs.weight * losses).sum()


def _wdpo(policy, params, pairs, *, beta, rho):
    losses, g = pair_losses(policy, params, pairs, beta=beta, input_grads=True)
    return (pairs.weight * losses).sum() + wdpo_penalty(g, rho=rho, form="paper",
                                                        weight=pairs.weight)


def _kldpo(policy, params, pairs, *, beta, tau):
    losses, _ = pair_losses(policy, params, pairs, beta=beta)
    logq = torch.where(pairs.weight > 0, torch.log(pairs.weight),
                       torch.full_like(pairs.weight, -torch.inf))
    return tau * torch.logsumexp(logq + losses / tau, dim=0)


@dataclass(frozen=True)
class NeuralObjective:
    """A full-data objective ``fn(policy, params, pairs, *, beta[, hyperparameter])``.

    Attributes:
        hyperparameter: the name of its one hyperparameter (``None``: none).
        default: its value when not given (``None``: it must be given).
        minimum: the least valid value; ``strict``: the minimum itself is excluded.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    hyperparameter: str | None = None
    default: float | None = None
    minimum: float = 0.0
    strict: bool = False

    def kwargs(self, value: float) -> dict:
        """``{hyperparameter: value}`` ({} without one): for callers that hold one value
        per method, e.g. a study's grid of rho's and tau's."""
        return {} if self.hyperparameter is None else {self.hyperparameter: value}


OBJECTIVES: Registry[NeuralObjective] = Registry("objective", {
    "dpo": NeuralObjective("dpo", _dpo),
    "wdpo": NeuralObjective("wdpo", _wdpo, "rho", default=0.0),
    "kldpo": NeuralObjective("kldpo", _kldpo, "tau", strict=True),
})


def objective_kwargs(name: str, *, rho: float | None = None, tau: float | None = None,
                     hyper: float | None = None, stacklevel: int = 2) -> dict:
    """The validated hyperparameter keywords of the named objective (``{}``, ``{"rho": .}``
    or ``{"tau": .}``). ``hyper`` is the deprecated generic name of the one hyperparameter."""
    spec = OBJECTIVES.get(name)
    given = named_hyperparameter(f"objective {name!r}", spec.hyperparameter,
                                 {"rho": rho, "tau": tau}, deprecated=hyper, old_name="hyper",
                                 stacklevel=stacklevel + 1)
    if spec.hyperparameter is None:
        return {}
    value = given.get(spec.hyperparameter, spec.default)
    ok = value is not None and (value > spec.minimum if spec.strict else value >= spec.minimum)
    if not ok:
        raise ValueError(f"{name} needs {spec.hyperparameter} {'>' if spec.strict else '>='} "
                         f"{spec.minimum:g}, got {value}")
    return {spec.hyperparameter: float(value)}


def objective(name: str, policy: NeuralPolicy, params, pairs: PairTensors, *, beta: float,
              rho: float | None = None, tau: float | None = None,
              hyper: float | None = None) -> torch.Tensor:
    """The named full-data objective (a scalar tensor), with its hyperparameter by name:
    ``rho`` (WDPO, default 0) or ``tau`` (KLDPO). ``hyper`` is deprecated."""
    kw = objective_kwargs(name, rho=rho, tau=tau, hyper=hyper)
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return OBJECTIVES[name].fn(policy, _t(params), pairs, beta=float(beta), **kw)


@dataclass(frozen=True)
class NeuralFit:
    """A fitted neural policy: flat params, objective, ||grad||, iterations, status, time."""

    params: np.ndarray
    objective: float
    grad_norm: float
    iterations: int
    status: str
    seconds: float


def fit(policy: NeuralPolicy, pairs: PairTensors, *, beta: float, params0,
        name: str = "dpo", rho: float | None = None, tau: float | None = None,
        hyper: float | None = None, gtol: float = 1e-9, max_iter: int = 3000) -> NeuralFit:
    """Minimise the named objective by full-batch L-BFGS (strong Wolfe) from ``params0``;
    ``rho``/``tau`` as in :func:`objective` (``hyper`` is deprecated).

    Status ``"converged"`` when ||grad|| <= gtol; ``"max_iter"`` otherwise; ``"diverged"``
    on a non-finite objective.
    """
    t0 = time.perf_counter()
    kw = objective_kwargs(name, rho=rho, tau=tau, hyper=hyper)
    p = _t(params0).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=max_iter, tolerance_grad=gtol,
                            tolerance_change=1e-15, history_size=50,
                            line_search_fn="strong_wolfe")
    calls = [0]

    def closure():
        opt.zero_grad()
        val = objective(name, policy, p, pairs, beta=beta, **kw)
        val.backward()
        calls[0] += 1
        return val

    opt.step(closure)
    val = objective(name, policy, p, pairs, beta=beta, **kw)
    (grad,) = torch.autograd.grad(val, p)
    gn = float(grad.norm())
    val = float(val.detach())
    if not (np.isfinite(val) and np.isfinite(gn)):
        status = "diverged"
    else:
        status = "converged" if gn <= gtol else "max_iter"
    state = opt.state[opt._params[0]]
    return NeuralFit(p.detach().numpy().copy(), val, gn, int(state.get("n_iter", 0)),
                     status, time.perf_counter() - t0)


def hessian_eigs(policy: NeuralPolicy, params, pairs: PairTensors, *, beta: float,
                 name: str = "dpo", rho: float | None = None, tau: float | None = None,
                 hyper: float | None = None) -> np.ndarray:
    """Ascending eigenvalues of the objective's Hessian in parameter space at ``params``."""
    kw = objective_kwargs(name, rho=rho, tau=tau, hyper=hyper)
    fun = lambda p: objective(name, policy, p, pairs, beta=beta, **kw)
    H = torch.autograd.functional.hessian(fun, _t(params))
    return np.linalg.eigvalsh(0.5 * (H + H.T).numpy())


def policy_divergence(pi_target, pi, state_dist) -> tuple[float, float]:
    r"""(KL, TV) between two (S, A) policies, averaged over states:
    :math:`\sum_s\mu(s)KL(\pi^\star(\cdot|s)\|\pi(\cdot|s))` and the same for TV."""
    p, r = np.asarray(pi_target, float), np.asarray(pi, float)
    mu = np.asarray(state_dist, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(r)), 0.0)
    kl = float(mu @ terms.sum(1))
    tv = float(mu @ (0.5 * np.abs(p - r).sum(1)))
    return max(kl, 0.0), tv


def kl_worst_case(policy: NeuralPolicy, params, pairs: PairTensors, *, beta: float,
                  radius: float):
    """The exact KL worst case of the DPO loss at fixed params (a ``KLValue``).

    The inner problem depends on the per-pair losses only: the margins h_i are passed to
    :func:`loglinear.robust.kl_value` as one-feature data x_i = (2y_i - 1) h_i, y = 1,
    theta = 1, which reproduces the losses exactly.
    """
    from ..robust import kl_value

    with torch.no_grad():
        f = policy.scores(_t(params), pairs.table)
        h = (f[pairs.idx1] - f[pairs.idx2] - pairs.offset) * pairs.sign
    data = PreferenceData(h.numpy()[:, None], np.ones(h.shape[0]), weight=pairs.weight.numpy(),
                          normalize=True)
    return kl_value(np.ones(1), data, beta=beta, radius=radius)
