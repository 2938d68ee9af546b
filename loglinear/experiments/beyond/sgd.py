"""Plain minibatch SGD on neural (or log-linear) policies, with gradient diagnostics.

The torch side of :mod:`loglinear.experiments.beyond.stability`: that module builds the
environments, data and records; this one differentiates the methods' objectives
(:func:`loglinear.torch.neural.objective`, docs/theory.md §4.1-§4.2), runs SGD and measures,
at fixed parameters, the full-data gradient, the minibatch-gradient variance and the
methods' penalties.

Every function takes the method's hyperparameter by name: ``rho`` (WDPO) or ``tau``
(KLDPO); ``neural.OBJECTIVES[method].kwargs(value)`` builds that keyword from one value per
method. ``hyper=`` (the old generic name) still works, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...registry import Registry
from ...stats import effective_sample_size, empirical_variance
from ...torch import neural as nn

# The method's penalty: its objective minus the weighted loss, from the weighted loss, the
# log-sum-exp tau log sum q e^{l/tau}, the rms input gradient and the method's keywords.
PENALTIES: Registry = Registry("objective", {
    "dpo": lambda loss, lse, gx_rms, kw: 0.0,
    "wdpo": lambda loss, lse, gx_rms, kw: kw["rho"] * gx_rms,
    "kldpo": lambda loss, lse, gx_rms, kw: float(lse) - loss,
})


def value_and_grad(name: str, policy, params, pairs, *, beta: float,
                   rho: float | None = None, tau: float | None = None,
                   hyper: float | None = None):
    """(objective value, gradient tensor) of the named objective at ``params``."""
    kw = nn.objective_kwargs(name, rho=rho, tau=tau, hyper=hyper)
    p = params.detach().clone().requires_grad_(True)
    v = nn.objective(name, policy, p, pairs, beta=beta, **kw)
    (g,) = torch.autograd.grad(v, p)
    return float(v.detach()), g


def minibatch_gradients(name: str, policy, params, pairs, *, beta: float,
                        rho: float | None = None, tau: float | None = None,
                        hyper: float | None = None, batch_size: int, n_batches: int,
                        rng: np.random.Generator):
    """(K, p) minibatch gradients of the named objective at fixed params (i.i.d. batches)."""
    kw = nn.objective_kwargs(name, rho=rho, tau=tau, hyper=hyper)
    n = pairs.sign.shape[0]
    out = []
    for _ in range(int(n_batches)):
        idx = rng.integers(0, n, size=int(batch_size))
        out.append(value_and_grad(name, policy, params, pairs.subset(idx), beta=beta,
                                  **kw)[1].numpy())
    return np.stack(out)


def _method_kwargs(method, rho, tau, hyper, ess_tau):
    """(the method's keywords, the ESS temperature). Old calls (``hyper=``) passed the ESS
    temperature as ``tau``."""
    if hyper is not None:
        ess_tau, tau = tau, None
    kw = nn.objective_kwargs(method, rho=rho, tau=tau, hyper=hyper, stacklevel=3)
    return kw, kw.get("tau", ess_tau)


def diagnostics(policy, params, pairs, *, beta: float, method: str, rho: float | None = None,
                tau: float | None = None, ess_tau: float | None = None,
                hyper: float | None = None, batch_size: int, n_batches: int,
                rng: np.random.Generator) -> dict:
    """The stability study's measurements at fixed params (see its module docstring).

    ``rho``/``tau`` are the method's hyperparameter; the ESS and the KL premium columns use
    the KLDPO temperature ``tau`` of a KLDPO method and ``ess_tau`` for the others. (With
    the deprecated ``hyper=``, ``tau`` keeps its old meaning, the ESS temperature.)
    """
    kw, t = _method_kwargs(method, rho, tau, hyper, ess_tau)
    obj, g = value_and_grad(method, policy, params, pairs, beta=beta, **kw)
    mb = minibatch_gradients(method, policy, params, pairs, beta=beta, **kw,
                             batch_size=batch_size, n_batches=n_batches, rng=rng)
    var = empirical_variance(mb)
    mean_norm2 = float(np.sum(mb.mean(0) ** 2))
    losses, gx = nn.pair_losses(policy, params.detach(), pairs, beta=beta, input_grads=True)
    q = pairs.weight
    loss = float((q * losses).sum().detach())
    gx_rms = float(torch.sqrt((q * gx).sum()).detach())
    with torch.no_grad():
        lse = t * torch.logsumexp(torch.log(q) + losses / t, dim=0)
        w = torch.softmax(torch.log(q) + losses / t, dim=0)
    penalty = PENALTIES.get(method)(loss, lse, gx_rms, kw)
    return dict(loss=loss, objective=obj, grad_norm=float(g.norm()),
                grad_var=var, grad_var_rel=var / mean_norm2 if mean_norm2 > 0 else float("nan"),
                mb_grad_norm=float(np.mean(np.linalg.norm(mb, axis=1))), penalty=penalty,
                grad_x_rms=gx_rms, ess=effective_sample_size(w.numpy(), q.numpy()))


def sgd(policy, params0: np.ndarray, pairs, *, beta: float, method: str,
        rho: float | None = None, tau: float | None = None, ess_tau: float | None = None,
        hyper: float | None = None, lr: float, batch_size: int, steps: int, every: int,
        n_batches: int, train_rng: np.random.Generator, diag_rng: np.random.Generator,
        extra=None):
    """Run ``steps`` SGD steps from ``params0``; yields (step, diagnostics) every ``every``
    steps (step 0 included). A non-finite iterate ends the run with (step, None).
    Hyperparameters as in :func:`diagnostics`; ``extra`` (optional) maps the parameters
    (a numpy array) to more columns of the diagnostics (the policy's strength)."""
    kw, t = _method_kwargs(method, rho, tau, hyper, ess_tau)
    params = torch.tensor(params0, dtype=torch.float64)
    n = pairs.sign.shape[0]
    for step in range(steps + 1):
        if step % every == 0:
            diag = diagnostics(policy, params, pairs, beta=beta, method=method, **kw,
                               ess_tau=t, batch_size=batch_size, n_batches=n_batches,
                               rng=diag_rng)
            yield step, (diag if extra is None else diag | extra(params.numpy()))
        if step == steps:
            return
        idx = train_rng.integers(0, n, size=batch_size)
        _, g = value_and_grad(method, policy, params, pairs.subset(idx), beta=beta, **kw)
        params = params - lr * g
        if not bool(torch.isfinite(params).all()):
            yield step + 1, None
            return


def use_threads(n: int) -> None:
    """Set torch's intra-op thread count (the studies run one core per process)."""
    torch.set_num_threads(int(n))
