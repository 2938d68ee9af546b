r"""Training dynamics of preference objectives in a finite log-linear environment.

A fixed dataset of pairs (s_i, a^+_i, a^-_i) with weights q_i is trained on for many
epochs by gradient descent or Adam on w = theta - theta_ref (so w = 0 is pi_ref, the
convention of docs/theory.md §2.3). Every quantity behind the 3D-properties of DPO
(Yan et al., arXiv 2406.07327; docs/theory.md §6) is exact here:

* pi(chosen) and pi(rejected): sum_i q_i pi_w(a^\pm_i|s_i);
* the unseen mass U(s) = sum over actions in no pair of state s of pi_w(a|s), averaged
  over the states of the data with their data weight;
* the gradient components along the log-probabilities,
  d_i^\pm = \partial L / \partial \log\pi_w(a^\pm_i|s_i), where this decomposition exists,
  and the gradient-flow rates d/dt sum_i q_i log pi_w(a^\pm_i|s_i) = -<grad L, grad log pi>;
* KL(pi_w || pi_ref) and the value under the true reward (``LogLinearEnv.value``).

The setting lives in :mod:`.setting` and the objectives, looked up by name in
:data:`OBJECTIVES` (one registry, no branching), in :mod:`.objectives`; both are
re-exported here. This module holds the optimizers, the diagnostics and :func:`train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...losses import get_loss, margins
from ...registry import Registry
from .objectives import (
    OBJECTIVES,
    Evaluation,
    ObjectiveSpec,
    evaluate_objective,
    get_objective,
    register_objective,
)
from .setting import FEATURE_MATCH_TOL, PairSetting

__all__ = ["FEATURE_MATCH_TOL", "FD_REL_STEP", "OBJECTIVES", "OPTIMIZERS",
           "DynamicsDivergedError", "Evaluation", "ObjectiveSpec", "PairSetting", "Trajectory",
           "diagnostics", "dpo_probability_partials_fd", "evaluate_objective", "get_objective",
           "register_objective", "train"]

FD_REL_STEP = 1e-6


class DynamicsDivergedError(ValueError):
    """A training run produced a non-finite objective, gradient or parameter."""


# ------------------------------------------------------------------------ optimizers
class _GD:
    def __init__(self, dim: int, *, lr: float):
        self.lr = lr

    def direction(self, grad: np.ndarray) -> np.ndarray:
        return -self.lr * grad


class _Adam:
    """Adam (Kingma & Ba 2015) with bias correction and the usual defaults."""

    def __init__(self, dim: int, *, lr: float, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m, self.v, self.t = np.zeros(dim), np.zeros(dim), 0

    def direction(self, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad**2
        mhat = self.m / (1 - self.b1**self.t)
        vhat = self.v / (1 - self.b2**self.t)
        return -self.lr * mhat / (np.sqrt(vhat) + self.eps)


OPTIMIZERS: Registry[type] = Registry("optimizer", {"gd": _GD, "adam": _Adam})


# ----------------------------------------------------------------------- diagnostics
def dpo_probability_partials_fd(p_chosen, p_rejected, ref_chosen, ref_rejected, *,
                                beta: float, rel_step: float = FD_REL_STEP):
    r"""dl/dpi+ and dl/dpi- of l = -log sigma(beta log(pi+/ref+) - beta log(pi-/ref-)),
    by central finite differences in the probabilities themselves (relative steps).

    An independent numerical check of the identity (dl/dpi-)/(dl/dpi+) = -pi+/pi-.
    """
    phi = get_loss("dpo").phi

    def loss(pc, pr):
        return phi(beta * (np.log(pc / ref_chosen) - np.log(pr / ref_rejected)), beta)

    pc, pr = np.asarray(p_chosen, float), np.asarray(p_rejected, float)
    hc, hr = rel_step * pc, rel_step * pr
    dpc = (loss(pc + hc, pr) - loss(pc - hc, pr)) / (2 * hc)
    dpr = (loss(pc, pr + hr) - loss(pc, pr - hr)) / (2 * hr)
    return dpc, dpr


def diagnostics(setting: PairSetting, w, ev: Evaluation, *, beta: float) -> dict:
    """The exact 3D-property diagnostics at w (see the module docstring); ``beta`` is the
    DPO temperature used for the reference DPO loss and the gradient-ratio check."""
    logp = setting.log_policy(w)
    policy = np.exp(logp)
    logp_ref = setting.log_policy(np.zeros(setting.dim))
    s, ap, am = setting.states, setting.chosen, setting.rejected
    q = setting.data.weight
    # pi(chosen) and pi(rejected) of the pairs as designed (with label noise a pair has
    # rows of both labels); the gradient terms and the identity follow each row's label
    fp, fm = setting.favoured, setting.disfavoured
    pc, pr = policy[s, ap], policy[s, am]
    gp, gm = setting.grad_log_prob(policy, ap), setting.grad_log_prob(policy, am)
    sw = setting.state_weight
    value = setting.env.value(setting.theta(w))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        dpc, dpr = dpo_probability_partials_fd(pc, pr, np.exp(logp_ref[s, ap]),
                                               np.exp(logp_ref[s, am]), beta=beta)
        ratio = dpr / dpc
        ident = np.abs(ratio / (-pc / pr) - 1.0)
    finite = np.isfinite(ident)
    out = {
        "objective": ev.value,
        "grad_norm": float(np.linalg.norm(ev.grad)),
        "w_norm": float(np.linalg.norm(w)),
        "dpo_loss": float(q @ get_loss("dpo").value(w, setting.centered, beta=beta)),
        "margin": float(q @ margins(w, setting.centered, beta=beta)) / beta,
        "p_chosen": float(q @ policy[s, fp]),
        "p_rejected": float(q @ policy[s, fm]),
        "logp_chosen": float(q @ logp[s, fp]),
        "logp_rejected": float(q @ logp[s, fm]),
        "unseen_mass": float(sw @ setting.unseen_mass(policy)),
        "unseen_mass_max": float(setting.unseen_mass(policy)[sw > 0].max()),
        "flow_chosen": float(q @ (gp @ -ev.grad)),
        "flow_rejected": float(q @ (gm @ -ev.grad)),
        "d_logp_chosen": np.nan if ev.d_chosen is None else float(np.sum(ev.d_chosen)),
        "d_logp_rejected": np.nan if ev.d_rejected is None else float(np.sum(ev.d_rejected)),
        "log10_grad_ratio": float(np.median(np.log10(np.abs(ratio[finite]))))
        if finite.any() else np.nan,
        "identity_rel_err": float(ident[finite].max()) if finite.any() else np.nan,
        "reward": value.reward,
        "kl": value.kl,
    }
    return out


# ------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Trajectory:
    """A training run: the recorded rows (one dict per recorded step) and the final w."""

    objective: str
    params: dict
    optimizer: str
    lr: float
    records: tuple[dict, ...]
    w: np.ndarray

    def frame(self):
        """The records as a pandas DataFrame (one row per recorded step)."""
        import pandas as pd

        return pd.DataFrame(list(self.records))


def train(setting: PairSetting, objective_name: str, *, params: dict, lr: float,
          steps: int, optimizer: str = "gd", record_every: int = 1,
          dpo_beta: float | None = None, tags: dict | None = None) -> Trajectory:
    """Train w from 0 (pi_ref) on a fixed dataset for ``steps`` full-batch steps.

    Args:
        setting: environment and dataset.
        objective_name: a key of :data:`OBJECTIVES`; ``params`` its hyperparameters.
        lr: learning rate >= 0 (0 keeps pi_ref: a test contract).
        steps: number of updates; ``record_every``: record cadence (step 0 and the last
            step are always recorded).
        optimizer: ``"gd"`` or ``"adam"`` (:data:`OPTIMIZERS`).
        dpo_beta: beta of the reference DPO loss in the diagnostics (default
            ``params["beta"]``, or ``beta_plus`` for Flex-DPO).
        tags: extra columns copied into every record (scenario, method label, ...).

    Raises:
        DynamicsDivergedError: on a non-finite value, gradient or parameter.
    """
    if not (np.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a nonnegative finite number, got {lr}")
    steps, record_every = int(steps), int(record_every)
    if steps < 0 or record_every < 1:
        raise ValueError("steps must be >= 0 and record_every >= 1")
    opt = OPTIMIZERS.get(optimizer)(setting.dim, lr=float(lr))
    beta = dpo_beta if dpo_beta is not None else params.get("beta", params.get("beta_plus"))
    get_objective(objective_name)
    if beta is None:
        raise ValueError("pass dpo_beta: the objective has no beta hyperparameter")
    tags = dict(tags or {})
    w = np.zeros(setting.dim)
    rows = []
    for t in range(steps + 1):
        ev = evaluate_objective(objective_name, w, setting, **params)
        if not (np.isfinite(ev.value) and np.all(np.isfinite(ev.grad))):
            raise DynamicsDivergedError(
                f"{objective_name} diverged at step {t} (lr={lr}): non-finite objective or "
                "gradient; lower the learning rate")
        if t % record_every == 0 or t == steps:
            rows.append({**tags, "objective_name": objective_name, "step": t,
                         **diagnostics(setting, w, ev, beta=beta)})
        if t < steps:
            w = w + opt.direction(ev.grad)
            if not np.all(np.isfinite(w)):
                raise DynamicsDivergedError(f"{objective_name}: parameters overflowed at step "
                                            f"{t + 1} (lr={lr})")
    return Trajectory(objective_name, dict(params), optimizer, float(lr), tuple(rows), w)
