r"""Training dynamics of preference objectives in a finite log-linear environment.

A fixed dataset of pairs (s_i, a^+_i, a^-_i) with weights q_i is trained on for many
epochs by gradient descent or Adam on w = theta - theta_ref (so w = 0 is pi_ref, the
convention of paper.md section 2). Every quantity behind the 3D-properties of DPO
(Yan et al., arXiv 2406.07327; paper.md section 6) is exact here:

* pi(chosen) and pi(rejected): sum_i q_i pi_w(a^\pm_i|s_i);
* the unseen mass U(s) = sum over actions in no pair of state s of pi_w(a|s), averaged
  over the states of the data with their data weight;
* the gradient components along the log-probabilities,
  d_i^\pm = \partial L / \partial \log\pi_w(a^\pm_i|s_i), where this decomposition exists,
  and the gradient-flow rates d/dt sum_i q_i log pi_w(a^\pm_i|s_i) = -<grad L, grad log pi>;
* KL(pi_w || pi_ref) and the value under the true reward (``LogLinearEnv.value``).

Objectives are looked up by name in :data:`OBJECTIVES` (one registry, no branching);
each maps (w, setting, **hyperparameters) to an :class:`Evaluation`. The chain rule for
the log-probability path uses grad_w log pi_w(a|s) = psi(s, a) - E_{pi_w(.|s)} psi(s, .).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
from scipy.special import log_softmax

from ...data import PreferenceData
from ...env import LogLinearEnv
from ...losses import get_loss, margins, objective

FEATURE_MATCH_TOL = 1e-9
FD_REL_STEP = 1e-6


class DynamicsDivergedError(ValueError):
    """A training run produced a non-finite objective, gradient or parameter."""


# --------------------------------------------------------------------------- setting
@dataclass(frozen=True, eq=False)
class PairSetting:
    """A finite environment together with a fixed dataset whose pairs carry actions.

    Args:
        env: the log-linear environment (features, pi_ref = pi_{theta_ref}, reward).
        data: pairs with ``state``, ``a1``, ``a2``; x must equal
            psi(s, a1) - psi(s, a2). Offsets are ignored: the setting works in
            w = theta - theta_ref with the centered data (o = 0).

    Attributes:
        centered: the centered dataset used by margin objectives.
        chosen, rejected, states: (n,) a^+ (= a1 if y = 1 else a2), a^-, s.
        seen: (S, A) True where the action appears in some pair of that state.
        state_weight: (S,) total data weight of each state's pairs.
    """

    env: LogLinearEnv
    data: PreferenceData
    centered: PreferenceData = field(init=False)
    chosen: np.ndarray = field(init=False)
    rejected: np.ndarray = field(init=False)
    states: np.ndarray = field(init=False)
    seen: np.ndarray = field(init=False)
    state_weight: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        env, data = self.env, self.data
        if not data.has_actions:
            raise ValueError("the data must carry state, a1 and a2 indices (PreferenceData"
                             "(..., state=, a1=, a2=)); LogLinearEnv.sample provides them")
        S, A = env.n_states, env.n_actions
        if data.d != env.dim:
            raise ValueError(f"data dimension {data.d} differs from the environment's {env.dim}")
        if data.state.max() >= S or max(data.a1.max(), data.a2.max()) >= A:
            raise ValueError(f"state/action indices exceed the environment's (S, A) = {(S, A)}")
        x = env.features[data.state, data.a1] - env.features[data.state, data.a2]
        if np.max(np.abs(x - data.x)) > FEATURE_MATCH_TOL:
            raise ValueError("data.x does not equal psi(s, a1) - psi(s, a2) of this environment")
        up = data.y == 1
        chosen = np.where(up, data.a1, data.a2)
        rejected = np.where(up, data.a2, data.a1)
        seen = np.zeros((S, A), dtype=bool)
        seen[data.state, data.a1] = True
        seen[data.state, data.a2] = True
        sw = np.bincount(data.state, weights=data.weight, minlength=S)
        for name, arr in (("centered", data.centered()), ("chosen", chosen),
                          ("rejected", rejected), ("states", data.state), ("seen", seen),
                          ("state_weight", sw)):
            if isinstance(arr, np.ndarray):
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def dim(self) -> int:
        return self.env.dim

    def theta(self, w) -> np.ndarray:
        return self.env.theta_ref + np.asarray(w, dtype=float)

    def log_policy(self, w) -> np.ndarray:
        """(S, A) log pi_w(a|s)."""
        return log_softmax(self.env.logits(self.theta(w)), axis=1)

    def grad_log_prob(self, policy: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(n, d) grad_w log pi_w(a_i|s_i) = psi(s_i, a_i) - E_{pi_w(.|s_i)} psi(s_i, .)."""
        mean_feat = np.einsum("sa,sad->sd", policy, self.env.features)
        return self.env.features[self.states, actions] - mean_feat[self.states]

    def unseen_mass(self, policy: np.ndarray) -> np.ndarray:
        """(S,) mass on actions that appear in no pair of the state."""
        return np.where(self.seen, 0.0, policy).sum(axis=1)

    def seen_mass(self, policy: np.ndarray) -> np.ndarray:
        """(S,) mass on actions that appear in some pair of the state."""
        return np.where(self.seen, policy, 0.0).sum(axis=1)


# ------------------------------------------------------------------------ objectives
class Evaluation(NamedTuple):
    """An objective at one w.

    ``d_chosen`` / ``d_rejected`` (n,) are dL/d log pi(a^+_i|s_i) and dL/d log pi(a^-_i|s_i),
    data weights included, when L depends on w only through the pairs' log-probabilities
    (DPO, IPO, Flex-DPO, SFT, the reweighted KL objectives); None otherwise (the
    Wasserstein penalties depend on w directly).
    """

    value: float
    grad: np.ndarray
    d_chosen: np.ndarray | None = None
    d_rejected: np.ndarray | None = None


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered training objective: ``evaluate(w, setting, **params) -> Evaluation``."""

    name: str
    evaluate: Callable[..., Evaluation]
    params: tuple[str, ...]
    doc: str = ""
    potential: bool = True  # False: the step direction is not the gradient of ``value``


OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add an objective to :data:`OBJECTIVES` (a name may be registered once)."""
    if spec.name in OBJECTIVES:
        raise ValueError(f"objective {spec.name!r} is already registered")
    OBJECTIVES[spec.name] = spec
    return spec


def get_objective(name: str) -> ObjectiveSpec:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}") from None


def evaluate_objective(name: str, w, setting: PairSetting, **params) -> Evaluation:
    """Evaluate a registered objective, checking its hyperparameter names."""
    spec = get_objective(name)
    if set(params) != set(spec.params):
        raise ValueError(f"objective {name!r} takes hyperparameters {list(spec.params)}, "
                         f"got {sorted(params)}")
    w = np.asarray(w, dtype=float)
    if w.shape != (setting.dim,) or not np.all(np.isfinite(w)):
        raise ValueError(f"w must be a finite vector of shape ({setting.dim},)")
    ev = spec.evaluate(w, setting, **params)
    return Evaluation(float(ev.value), np.asarray(ev.grad, dtype=float), ev.d_chosen,
                      ev.d_rejected)


def _reweighted_margin(w, setting: PairSetting, loss: str, beta: float,
                       weight: np.ndarray) -> Evaluation:
    """sum_i W_i phi(m_i) with W held fixed: the per-pair chain rule of a margin loss."""
    data = setting.centered
    spec = get_loss(loss, margin=True)
    obj = objective(w, data, beta=beta, loss=loss, hessian=False, weight=weight)
    dc = weight * spec.dphi(obj.margins, beta) * beta  # m = beta (c - r)
    return Evaluation(obj.value, obj.grad, dc, -dc)


def _margin_objective(loss: str) -> Callable[..., Evaluation]:
    def evaluate(w, setting, *, beta):
        return _reweighted_margin(w, setting, loss, beta, setting.centered.weight)

    return evaluate


def _pair_objective(name: str) -> Callable[..., Evaluation]:
    pair = get_loss(name)

    def evaluate(w, setting, **params):
        logp = setting.log_policy(w)
        logp_ref = setting.log_policy(np.zeros(setting.dim))
        s, ap, am = setting.states, setting.chosen, setting.rejected
        c = logp[s, ap] - logp_ref[s, ap]
        r = logp[s, am] - logp_ref[s, am]
        terms = pair.terms(c, r, logp[s, ap], **params)
        q = setting.data.weight
        dc, dr = q * terms.d_chosen, q * terms.d_rejected
        policy = np.exp(logp)
        grad = (setting.grad_log_prob(policy, ap).T @ dc
                + setting.grad_log_prob(policy, am).T @ dr)
        return Evaluation(float(q @ terms.value), grad, dc, dr)

    return evaluate


def _function(module: str, name: str):
    """``module.name``, imported on first use (the objective's module is optional)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"this objective needs {module}.{name}, which cannot be imported: "
                         f"{exc}") from exc


def _wdpo(form: str) -> Callable[..., Evaluation]:
    def evaluate(w, setting, *, beta, rho):
        value, grad = _function("loglinear.approx", "wdpo_objective")(
            w, setting.centered, beta=beta, rho=rho, form=form)
        return Evaluation(value, grad)

    return evaluate


def _kldpo_step(w, setting, beta, tau, form) -> Evaluation:
    """KLDPO as the algorithms run it: weights from the current losses, held constant."""
    data = setting.centered
    losses = get_loss("dpo").value(w, data, beta=beta)
    weight = np.asarray(_function("loglinear.approx", "kldpo_weights")(
        losses, data.weight, tau=tau, form=form), dtype=float)
    return _reweighted_margin(w, setting, "dpo", beta, weight)


def _kldpo_paper(w, setting, *, beta, tau):
    # The normalised step is the gradient of F = tau log sum q e^{l/tau}; report F.
    ev = _kldpo_step(w, setting, beta, tau, "paper")
    value, _ = _function("loglinear.approx", "kldpo_objective")(w, setting.centered,
                                                                beta=beta, tau=tau)
    return ev._replace(value=value)


def _kldpo_official(w, setting, *, beta, tau):
    # No potential: the step is sum W grad l with W capped and unnormalised; the value is
    # the loss the official code reports, sum W l.
    return _kldpo_step(w, setting, beta, tau, "official")


def _kl_exact(w, setting, *, beta, radius):
    res = _function("loglinear.robust", "kl_value")(w, setting.centered, beta=beta,
                                                    radius=radius)
    ev = _reweighted_margin(w, setting, "dpo", beta, np.asarray(res.weights, dtype=float))
    return ev._replace(value=res.value, grad=res.grad)


def _wasserstein_exact(w, setting, *, beta, radius, p):
    res = _function("loglinear.robust", "wasserstein_value")(w, setting.centered, beta=beta,
                                                        radius=radius, p=int(p))
    return Evaluation(res.value, res.grad)


for _spec in (
    ObjectiveSpec("dpo", _margin_objective("dpo"), ("beta",), "DPO (margin path)"),
    ObjectiveSpec("ipo", _margin_objective("ipo"), ("beta",), "IPO (margin path)"),
    ObjectiveSpec("flex-dpo", _pair_objective("flex-dpo"), ("beta_plus", "beta_minus"),
                  "Flex-DPO: separate beta+ and beta- (log-probability path)"),
    ObjectiveSpec("dpo-sft", _pair_objective("dpo-sft"), ("beta", "sft_weight"),
                  "DPO - sft_weight log pi(chosen) (log-probability path)"),
    ObjectiveSpec("wdpo-paper", _wdpo("paper"), ("beta", "rho"),
                  "WDPO, Algorithm 1: L + rho (sum q ||grad_x l||^2)^(1/2)"),
    ObjectiveSpec("wdpo-official", _wdpo("official"), ("beta", "rho"),
                  "WDPO as the official code runs it: sum q (l + rho ||grad_x l||^2)"),
    ObjectiveSpec("kldpo-paper", _kldpo_paper, ("beta", "tau"),
                  "KLDPO, Algorithm 2: normalised detached weights q exp(l / tau)"),
    ObjectiveSpec("kldpo-official", _kldpo_official, ("beta", "tau"),
                  "KLDPO as the official code runs it: min(exp((l - mean l)/tau), 10)",
                  potential=False),
    ObjectiveSpec("kl-exact", _kl_exact, ("beta", "radius"), "exact KL-DRO value"),
    ObjectiveSpec("wasserstein-exact", _wasserstein_exact, ("beta", "radius", "p"),
                  "exact Wasserstein-DRO value (kappa = inf)"),
):
    register_objective(_spec)


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


OPTIMIZERS: dict[str, type] = {"gd": _GD, "adam": _Adam}


# ----------------------------------------------------------------------- diagnostics
def dpo_probability_partials_fd(p_chosen, p_rejected, ref_chosen, ref_rejected, *,
                                beta: float, rel_step: float = FD_REL_STEP):
    r"""dl/dpi+ and dl/dpi- of l = -log sigma(beta log(pi+/ref+) - beta log(pi-/ref-)),
    by central finite differences in the probabilities themselves (relative steps).

    An independent numerical check of the identity (dl/dpi-)/(dl/dpi+) = -pi+/pi-.
    """
    def loss(pc, pr):
        return np.logaddexp(0.0, -beta * (np.log(pc / ref_chosen) - np.log(pr / ref_rejected)))

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
        "p_chosen": float(q @ pc),
        "p_rejected": float(q @ pr),
        "logp_chosen": float(q @ logp[s, ap]),
        "logp_rejected": float(q @ logp[s, am]),
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
    try:
        opt = OPTIMIZERS[optimizer](setting.dim, lr=float(lr))
    except KeyError:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZERS)}"
                         ) from None
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
