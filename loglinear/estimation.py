"""Coverage, estimation errors, the theory's constants and bounds, and the local
asymptotics of the estimators (docs/theory.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

from .data import PreferenceData, require_data
from .losses import dpo_margin_terms, margins
from .registry import Registry, named_hyperparameter


class Coverage(NamedTuple):
    """Sigma = sum_i q_i x_i x_i^T with its spectrum (ascending) and eigenvectors."""

    sigma: np.ndarray
    lambda_min: float
    eigvals: np.ndarray
    eigvecs: np.ndarray


def coverage(data: PreferenceData) -> Coverage:
    r"""The coverage matrix Sigma_P = E_P[x x^T] of a weighted dataset and lambda_min.

    Assumption 2 of the paper asks lambda_min(Sigma_P) >= lambda > 0. Raises TypeError
    when ``data`` is not a :class:`PreferenceData`.
    """
    data = require_data(data)
    sigma = (data.x * data.weight[:, None]).T @ data.x
    sigma = 0.5 * (sigma + sigma.T)
    vals, vecs = np.linalg.eigh(sigma)
    return Coverage(sigma, float(vals[0]), vals, vecs)


def estimation_error(theta_hat, target) -> float:
    """||theta_hat - target||_2, computed without overflow (the norm of a vector with
    entries near 1e200 is finite, but the sum of their squares is not)."""
    diff = np.asarray(theta_hat, float) - np.asarray(target, float)
    top = float(np.max(np.abs(diff), initial=0.0))
    if top == 0.0 or not np.isfinite(top):  # zero, or non-finite input: as np.linalg.norm
        return float(np.linalg.norm(diff))
    return top * float(np.linalg.norm(diff / top))


# --------------------------------------------------------------------------------------
# Theory constants and bounds (docs/theory.md §5.1-§5.4; the constants are reconstructed)
# --------------------------------------------------------------------------------------

class TheoryConstants(NamedTuple):
    """gamma = beta^2 e^{4 beta B} / (1 + e^{4 beta B})^2 and K = log(1 + e^{4 beta B})."""

    gamma: float
    K: float


def theory_constants(*, beta: float, bound: float) -> TheoryConstants:
    r"""The strong-convexity and loss-bound constants (docs/theory.md §5.1).

    .. math::  \gamma = \frac{\beta^2 e^{4\beta B}}{(1+e^{4\beta B})^2},\qquad
               K = \log(1 + e^{4\beta B})

    (|h| <= 4B bounds the margin on Theta = {||theta|| <= B}).
    """
    if not (beta > 0 and bound > 0):
        raise ValueError(f"beta and bound must be positive, got beta={beta}, bound={bound}")
    t = 4.0 * beta * bound
    # e^t / (1 + e^t)^2 = sigma(t) sigma(-t), computed stably for large t.
    gamma = beta**2 * float(np.exp(-np.logaddexp(0.0, t) - np.logaddexp(0.0, -t)))
    return TheoryConstants(gamma, float(np.logaddexp(0.0, t)))


def _check_bound_args(n, lam, delta):
    n = np.asarray(n, dtype=float)
    if np.any(n < 1):
        raise ValueError("n must be >= 1")
    if not lam > 0:
        raise ValueError(f"the coverage constant lambda must be > 0, got {lam}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    return n


def theorem1_bound(n, *, beta: float, bound: float, lam: float, delta: float = 0.05):
    r"""Theorem 1 (WDPO), as a bound on the error itself (the square root of the paper's).

    .. math::  \|\theta_n - \theta\|_2 \le \Big(\frac{4K}{\gamma\lambda}
               \sqrt{\frac{\log(2/\delta)}{2n}}\Big)^{1/2} = O(n^{-1/4})
    """
    n = _check_bound_args(n, lam, delta)
    c = theory_constants(beta=beta, bound=bound)
    return np.sqrt(4.0 * c.K / (c.gamma * lam) * np.sqrt(np.log(2.0 / delta) / (2.0 * n)))


def theorem2_bound(n, *, beta: float, bound: float, lam: float, dual_lo: float,
                   dual_hi: float, delta: float = 0.05):
    r"""Theorem 2 (KLDPO): Theorem 1 with 4K replaced by 4 lambda_hi e^{K / lambda_lo}.

    ``dual_lo``/``dual_hi`` bound the KL dual variable over the relevant thetas (the paper
    leaves them implicit; the rates study plugs in the population dual lambda*; the whole
    constant is reconstructed, docs/theory.md §5.3).
    """
    n = _check_bound_args(n, lam, delta)
    if not (0 < dual_lo <= dual_hi):
        raise ValueError(f"need 0 < dual_lo <= dual_hi, got {dual_lo}, {dual_hi}")
    c = theory_constants(beta=beta, bound=bound)
    lead = 4.0 * dual_hi * np.exp(min(c.K / dual_lo, 700.0))
    return np.sqrt(lead / (c.gamma * lam) * np.sqrt(np.log(2.0 / delta) / (2.0 * n)))


def proposition1_bound(n, *, beta: float, bound: float, dim: int, delta: float = 0.05,
                       C: float = 1.0):
    r"""Proposition 1 (DPO) in the Sigma_D norm, with an explicit constant C (default 1).

    .. math::  \|\theta_n - \theta^*\|_{\Sigma_D} \le C\,\frac{\beta}{\gamma}
               \sqrt{\frac{d + \log(1/\delta)}{n}}

    The paper states only O(.); this is the Zhu-Jordan-Jiao (2023) form, where the score
    beta sigma(.) s x has norm <= beta and the loss is gamma-strongly convex in the
    Sigma_D norm. The rates report shows the empirical constant instead of trusting C.
    """
    n = np.asarray(n, dtype=float)
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    c = theory_constants(beta=beta, bound=bound)
    return C * beta / c.gamma * np.sqrt((dim + np.log(1.0 / delta)) / n)


# --------------------------------------------------------------------------------------
# Local asymptotics of the (robust) M-estimators at their population optimum
# --------------------------------------------------------------------------------------

class LocalAsymptotics(NamedTuple):
    """sqrt(n)(theta_n - theta) -> N(0, V), V = H^{-1} J H^{-1} (sandwich).

    hessian: (d, d) H of the population objective; covariance: V; tr_hinv: tr H^{-1};
    tr_sandwich: tr V. Predictions: RMSE ~ sqrt(tr V / n) (and sqrt(tr H^{-1} / n), which
    equals it only for the well-specified DPO likelihood, where J = H).
    """

    hessian: np.ndarray
    covariance: np.ndarray
    tr_hinv: float
    tr_sandwich: float


def _atoms(pop: PreferenceData, w, beta):
    """Per-atom margins m, losses l, gradients g (n, d), sigma(m) sigma(-m) and a = sigma(-m)."""
    w = np.asarray(w, dtype=float)
    sb_x = (pop.sign * beta)[:, None] * pop.x
    m = margins(w, pop, beta=beta)
    l, d1, d2 = dpo_margin_terms(m)
    return m, l, d1[:, None] * sb_x, d2, -d1, sb_x


def _sandwich(H, infl, q) -> LocalAsymptotics:
    """V = H^{-1} (sum_j q_j psi_j psi_j^T) H^{-1} from the derivatives psi_j of the
    population gradient in the direction delta_j - q."""
    Hinv = np.linalg.inv(0.5 * (H + H.T))
    J = (infl * q[:, None]).T @ infl
    V = Hinv @ J @ Hinv
    return LocalAsymptotics(H, V, float(np.trace(Hinv)), float(np.trace(V)))


def kl_dual_variable(losses, q, radius) -> float:
    r"""lambda* = argmin_{lambda > 0} lambda rho + lambda log sum_i q_i e^{l_i / lambda}.

    The derivative rho + log Z - E_p[l]/lambda is increasing in lambda (its derivative is
    Var_p(l)/lambda^3), so lambda* is a 1-D root; 0.0 means the worst case sits on the
    maximal losses (the edge case of docs/theory.md §3.1).
    """
    l = np.asarray(losses, float)
    keep = q > 0
    l, q = l[keep], q[keep]
    # Shift so that max l = 0: dG is shift-invariant, and without the shift log Z and
    # E_p[l]/lambda are both ~ l_max/lambda and cancel catastrophically at small lambda.
    l = l - l.max()
    spread = float(-l.min())
    if spread <= 1e-15 or radius <= 0:
        return np.inf

    def dG(log_lam):
        lam = np.exp(log_lam)
        u = l / lam
        lz = logsumexp(u, b=q)
        p = np.exp(np.log(q) + u - lz)
        return radius + lz - float(p @ l) / lam

    lo, hi = np.log(spread) - 40.0, np.log(spread) + 40.0
    if dG(lo) > 0:
        return 0.0
    if dG(hi) < 0:
        return np.inf
    return float(np.exp(brentq(dG, lo, hi, xtol=1e-13, rtol=1e-13)))


def _local_dpo(pop, w, *, beta):
    m, l, g, c, a, sb_x = _atoms(pop, w, beta)
    q = pop.weight
    return _sandwich((sb_x * (c * q)[:, None]).T @ sb_x, g - q @ g, q)


def _local_w1(pop, w, *, beta, radius):
    nw = float(np.linalg.norm(w))
    if nw < 1e-12:
        raise ValueError("w1 optimum at the kink w = 0: no local normal limit")
    m, l, g, c, a, sb_x = _atoms(pop, w, beta)
    q = pop.weight
    u = w / nw
    H = (sb_x * (c * q)[:, None]).T @ sb_x + radius * beta * (np.eye(pop.d) - np.outer(u, u)) / nw
    return _sandwich(H, g - q @ g, q)


def _local_tilted(pop, w, beta, lam, *, profiled):
    """KLDPO at temperature lam, and (``profiled``) the KL dual profiled over lambda*."""
    if not (0 < lam < np.inf):
        raise ValueError(f"KL dual variable lambda* = {lam}: no local normal limit")
    m, l, g, c, a, sb_x = _atoms(pop, w, beta)
    q = pop.weight
    u = l / lam
    logp = np.log(np.where(q > 0, q, 1e-300)) + u
    p = np.exp(logp - np.logaddexp.reduce(logp))
    r = np.where(q > 0, p / np.where(q > 0, q, 1.0), 0.0)
    gc = g - p @ g
    Hp = (sb_x * (c * p)[:, None]).T @ sb_x + (gc * p[:, None]).T @ gc / lam
    infl = r[:, None] * gc
    if not profiled:
        return _sandwich(Hp, infl, q)
    lbar = float(p @ l)
    var_l = float(p @ (l - lbar) ** 2)
    cov_gl = (gc * (p * (l - lbar))[:, None]).sum(0)
    H = Hp - np.outer(cov_gl, cov_gl) / (lam * var_l)
    # G_wl G_ll^{-1} = (-cov_gl / lam^2) (lam^3 / var_l) = -lam cov_gl / var_l
    corr = -lam * cov_gl / var_l
    infl = infl - np.outer(r - 1.0 - r * (l - lbar) / lam, corr)
    return _sandwich(H, infl, q)


def _local_kl(pop, w, *, beta, radius):
    l = _atoms(pop, w, beta)[1]
    return _local_tilted(pop, w, beta, kl_dual_variable(l, pop.weight, radius), profiled=True)


def _local_kldpo(pop, w, *, beta, tau):
    return _local_tilted(pop, w, beta, float(tau), profiled=False)


@dataclass(frozen=True)
class LocalKind:
    """A kind of :func:`local_asymptotics`: ``compute(pop, w, *, beta[, hyperparameter])``
    and the name of its one hyperparameter (``None``: none)."""

    name: str
    compute: Callable[..., LocalAsymptotics]
    hyperparameter: str | None


def local_asymptotics(kind: str, pop: PreferenceData, w, *, beta: float,
                      radius: float | None = None, rho: float | None = None,
                      tau: float | None = None, param: float | None = None
                      ) -> LocalAsymptotics:
    r"""Hessian and sandwich covariance of an estimator at its population optimum ``w``
    (docs/theory.md §5.6).

    Per atom: l_i = softplus(-m_i), g_i = -sigma(-m_i) s_i beta x_i,
    H_i = sigma(m_i) sigma(-m_i) beta^2 x_i x_i^T; psi_j is the derivative of the
    population gradient along the mixture direction delta_j - q, so
    V = H^{-1} E_q[psi psi^T] H^{-1}.

    kinds (:data:`LOCAL_KINDS`), each with its one hyperparameter:
      ``dpo``: H = E_q H_i, psi_j = g_j - E_q g.
      ``w1`` (kappa = inf, ``radius`` eps): objective L + eps beta ||w||, so
        H = E_q H_i + eps beta (I - u u^T)/||w|| with u = w/||w||; psi as DPO.
      ``kl`` (``radius``): the profiled dual F(w) = min_lambda G(w, lambda),
        G = lambda rho + lambda log E_q e^{l/lambda}; with p_i = q_i e^{l_i/lambda*}/Z,
        H = E_p H_i + (1/lambda)[Cov_p(g) - Cov_p(g,l) Cov_p(g,l)^T / Var_p(l)]
        (G_ww - G_wl G_ll^{-1} G_lw with G_ll = Var_p(l)/lambda^3,
        G_wl = -Cov_p(g,l)/lambda^2), and with r_j = p_j/q_j,
        psi_j = r_j (g_j - gbar) - G_wl G_ll^{-1} (r_j - 1 - r_j (l_j - lbar)/lambda).
      ``kldpo`` (temperature ``tau``): F = tau log E_q e^{l/tau},
        H = E_p H_i + Cov_p(g)/tau, psi_j = r_j (g_j - gbar).
      ``wdpo`` (paper form, penalty ``rho``): F = L + rho beta ||w|| S, S^2 = E_q sigma(-m)^2;
        H by central differences of the analytic gradient, psi analytic.

    A missing hyperparameter is 0. ``param`` (deprecated) is the kind's hyperparameter.

    Raises ValueError at a kink (w = 0 for w1/wdpo, lambda* = 0 for kl), where the
    estimator is not asymptotically normal, and for a hyperparameter the kind does not take.
    """
    spec = LOCAL_KINDS.get(kind)
    given = named_hyperparameter(f"local_asymptotics kind {kind!r}", spec.hyperparameter,
                                 {"radius": radius, "rho": rho, "tau": tau},
                                 deprecated=param, old_name="param", stacklevel=2)
    kw = {} if spec.hyperparameter is None else {
        spec.hyperparameter: float(given.get(spec.hyperparameter, 0.0))}
    return spec.compute(pop, np.asarray(w, dtype=float), beta=beta, **kw)


def _wdpo_grad(pop, w, beta, rho, q):
    m, l, g, c, a, sb_x = _atoms(pop, w, beta)
    nw = float(np.linalg.norm(w))
    S = float(np.sqrt(q @ a**2))
    da = -c[:, None] * sb_x  # grad of a_i = sigma(-m_i)
    dS = (q * a) @ da / S
    return q @ g + rho * beta * (w / nw * S + nw * dS)


def _local_wdpo(pop, w, *, beta, rho):
    nw = float(np.linalg.norm(w))
    if nw < 1e-12:
        raise ValueError("wdpo optimum at the kink w = 0: no local normal limit")
    q = pop.weight
    d = pop.d
    h = 1e-6 * max(1.0, nw)
    H = np.empty((d, d))
    for k in range(d):
        e = np.zeros(d)
        e[k] = h
        H[:, k] = (_wdpo_grad(pop, w + e, beta, rho, q)
                   - _wdpo_grad(pop, w - e, beta, rho, q)) / (2 * h)
    m, l, g, c, a, sb_x = _atoms(pop, w, beta)
    S = float(np.sqrt(q @ a**2))
    da = -c[:, None] * sb_x
    A = (q * a) @ da  # sum_i q_i a_i grad a_i
    dS_q = (a**2 - S**2) / (2 * S)  # derivative of S along delta_j - q
    dA_q = a[:, None] * da - A
    dgradS = dA_q / S - np.outer(dS_q, A) / S**2
    infl = (g - q @ g) + rho * beta * (np.outer(dS_q, w / nw) + nw * dgradS)
    return _sandwich(0.5 * (H + H.T), infl, q)


LOCAL_KINDS: Registry[LocalKind] = Registry("kind of local asymptotics", {
    "dpo": LocalKind("dpo", _local_dpo, None),
    "w1": LocalKind("w1", _local_w1, "radius"),
    "kl": LocalKind("kl", _local_kl, "radius"),
    "kldpo": LocalKind("kldpo", _local_kldpo, "tau"),
    "wdpo": LocalKind("wdpo", _local_wdpo, "rho"),
})


# ---------------------------------------------------------------- rewards / values
def kl_regularised_optimum(env, reward=None) -> float:
    r"""The best achievable :math:`E[r] - \beta KL(\pi\|\pi_{ref})` over all policies.

    .. math:: V^* = \sum_s \mu(s)\,\beta\log\sum_a \pi_{ref}(a|s)\,e^{r(s,a)/\beta},

    attained by :math:`\pi^*\propto\pi_{ref}e^{r/\beta}`; ``env.value(theta, r).objective``
    is at most this, and the difference is the regret of theta under r.
    """
    r = env.reward if reward is None else np.asarray(reward, dtype=float)
    if r.shape != (env.n_states, env.n_actions):
        raise ValueError(f"reward must be an (S, A) table, got {r.shape}")
    logref = env.log_policy(env.theta_ref)
    return float(env.state_dist @ (env.beta * logsumexp(logref + r / env.beta, axis=1)))


# Kinds whose derivations need more room (IPO, W2 as a joint M-estimator in (w, eta), the
# official surrogate forms; docs/theory.md §5.8) live in loglinear/_local_extra.py.
from . import _local_extra  # noqa: E402

_local_extra.register(LOCAL_KINDS, LocalKind, LocalAsymptotics)
