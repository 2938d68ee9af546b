"""Plain minibatch SGD on neural (or log-linear) policies, with gradient diagnostics.

The torch side of :mod:`loglinear.experiments.beyond.stability`: that module builds the
environments, data and records; this one differentiates the methods' objectives
(:func:`loglinear.torch.neural.objective`), runs SGD and measures, at fixed parameters,
the full-data gradient, the minibatch-gradient variance and the methods' penalties.
"""

from __future__ import annotations

import numpy as np
import torch

from ...stats import effective_sample_size, empirical_variance
from ...torch import neural as nn


def value_and_grad(name: str, policy, params, pairs, *, beta: float, hyper: float):
    """(objective value, gradient tensor) of the named objective at ``params``."""
    p = params.detach().clone().requires_grad_(True)
    v = nn.objective(name, policy, p, pairs, beta=beta, hyper=hyper)
    (g,) = torch.autograd.grad(v, p)
    return float(v.detach()), g


def minibatch_gradients(name: str, policy, params, pairs, *, beta: float, hyper: float,
                        batch_size: int, n_batches: int, rng: np.random.Generator):
    """(K, p) minibatch gradients of the named objective at fixed params (i.i.d. batches)."""
    n = pairs.sign.shape[0]
    out = []
    for _ in range(int(n_batches)):
        idx = rng.integers(0, n, size=int(batch_size))
        out.append(value_and_grad(name, policy, params, pairs.subset(idx), beta=beta,
                                  hyper=hyper)[1].numpy())
    return np.stack(out)


def diagnostics(policy, params, pairs, *, beta: float, method: str, hyper: float, tau: float,
                batch_size: int, n_batches: int, rng: np.random.Generator) -> dict:
    """The stability study's measurements at fixed params (see its module docstring).

    ``tau`` is the KLDPO temperature of the ESS and premium columns for non-KLDPO methods.
    """
    obj, g = value_and_grad(method, policy, params, pairs, beta=beta, hyper=hyper)
    mb = minibatch_gradients(method, policy, params, pairs, beta=beta, hyper=hyper,
                             batch_size=batch_size, n_batches=n_batches, rng=rng)
    var = empirical_variance(mb)
    mean_norm2 = float(np.sum(mb.mean(0) ** 2))
    losses, gx = nn.pair_losses(policy, params.detach(), pairs, beta=beta, input_grads=True)
    q = pairs.weight
    loss = float((q * losses).sum().detach())
    gx_rms = float(torch.sqrt((q * gx).sum()).detach())
    with torch.no_grad():
        t = hyper if method == "kldpo" else tau
        lse = t * torch.logsumexp(torch.log(q) + losses / t, dim=0)
        w = torch.softmax(torch.log(q) + losses / t, dim=0)
    penalty = {"dpo": 0.0, "wdpo": hyper * gx_rms, "kldpo": float(lse) - loss}[method]
    return dict(loss=loss, objective=obj, grad_norm=float(g.norm()),
                grad_var=var, grad_var_rel=var / mean_norm2 if mean_norm2 > 0 else float("nan"),
                mb_grad_norm=float(np.mean(np.linalg.norm(mb, axis=1))), penalty=penalty,
                grad_x_rms=gx_rms, ess=effective_sample_size(w.numpy(), q.numpy()))


def sgd(policy, params0: np.ndarray, pairs, *, beta: float, method: str, hyper: float,
        lr: float, batch_size: int, steps: int, every: int, tau: float, n_batches: int,
        train_rng: np.random.Generator, diag_rng: np.random.Generator):
    """Run ``steps`` SGD steps from ``params0``; yields (step, diagnostics) every ``every``
    steps (step 0 included). A non-finite iterate ends the run with (step, None)."""
    params = torch.tensor(params0, dtype=torch.float64)
    n = pairs.sign.shape[0]
    for step in range(steps + 1):
        if step % every == 0:
            yield step, diagnostics(policy, params, pairs, beta=beta, method=method,
                                    hyper=hyper, tau=tau, batch_size=batch_size,
                                    n_batches=n_batches, rng=diag_rng)
        if step == steps:
            return
        idx = train_rng.integers(0, n, size=batch_size)
        _, g = value_and_grad(method, policy, params, pairs.subset(idx), beta=beta,
                              hyper=hyper)
        params = params - lr * g
        if not bool(torch.isfinite(params).all()):
            yield step + 1, None
            return


def use_threads(n: int) -> None:
    """Set torch's intra-op thread count (the studies run one core per process)."""
    torch.set_num_threads(int(n))
