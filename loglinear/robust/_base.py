"""Shared pieces of the exact robust solvers: results, validation, the ball constraint.

Every robust problem here acts on the parameter of the data as given: the loss is
l_i(theta) = softplus(-m_i) with the margin m_i = (2y_i - 1) beta (theta . x_i - o_i) of
:func:`loglinear.losses.margins`, and the kinks of the robust objectives sit at theta = 0
of that parameterisation (docs/theory.md §2.2-2.3). Data built with ``centered=True``
(o = 0) put the kink at theta = theta_ref. What a solve reports, its statuses and
certificates are in docs/theory.md §3.7.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Callable

import numpy as np

from ..data import PreferenceData
from ..losses import _check_beta, _check_theta, margins, softplus
from ..newton import ball_multiplier_root

CERT_TOL = 1e-6          # a smooth solve whose KKT residual exceeds this is "inaccurate"
VERIFY_RTOL = 1e-7      # verify(): primal value of the worst case vs the objective
BUDGET_RTOL = 1e-7      # verify(): the worst case lies in the ball up to this relative slack
CONT_STAGES = 12        # radius continuation r (1 - 2^-k), k = 1..CONT_STAGES - 1, then r


class RobustSolverError(RuntimeError):
    """A robust solver failed or returned an inaccurate status."""


@dataclass(frozen=True)
class Transport:
    """A finitely supported Wasserstein worst case: atom k sits at (x[k], y[k])
    (docs/theory.md §3.3 for the far-travelling W1 atom and its shortfall).

    Attributes:
        x: (k, d) transported feature differences x'.
        y: (k,) labels after the adversary (flipped where it paid off).
        weight: (k,) masses, summing to one.
        source: (k,) index of the data atom each mass came from.
        cost: the transport cost sum_k weight_k c(source_k, k)^p actually spent.
        shortfall: an upper bound on sup - E_P[l] for this P (positive when the
            supremum is not attained, as for W1 with a binding Lipschitz term: there a
            vanishing mass travels far; the bound is how far this member falls short).
    """

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    source: np.ndarray
    cost: float
    shortfall: float = 0.0


@dataclass(frozen=True)
class Verification:
    """Outcome of :meth:`RobustResult.verify` (truthy when every check passed;
    docs/theory.md §3.7)."""

    ok: bool
    primal_value: float
    objective: float
    divergence: float
    radius: float
    message: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, kw_only=True)
class RobustResult:
    """An exact robust solve (docs/theory.md §3.7), immutable once built.

    Built by keyword only. ``info`` is copied at creation and exposed read-only (a
    :class:`types.MappingProxyType`); to add to it, build a new result with
    ``dataclasses.replace(res, info={**res.info, key: value})``.

    Attributes:
        theta: (d,) the robust minimiser.
        objective: the exact worst-case loss at ``theta``.
        dual: the dual multiplier: lambda (KL) or the Wasserstein multiplier
            (lambda for p = 1, eta for p = 2); ``inf`` at radius 0 for KL, where the
            dual infimum is only approached as lambda -> infinity.
        worst_case: KL: (n,) weights p_i; Wasserstein: a :class:`Transport`.
        status: ``"converged"``, ``"collapsed"`` (theta = 0 exactly, at or beyond the
            collapse radius), ``"nominal"`` (radius 0, solved by fit_dpo) or
            ``"inaccurate"`` (certificate above ``CERT_TOL``).
        certificate: the KKT residual: the distance from 0 of the subdifferential of
            the objective at ``theta`` (including the ball multiplier when bounded); the
            exceptions (kinks, collapses, finite kappa) are listed in docs/theory.md §3.7.
        solver: ``"newton"``, ``"closed-form"``, ``"active-set"``, ``"cvxpy-clarabel"``...
        seconds: wall time.
        kind: ``"kl"`` or ``"wasserstein"``.
        radius, beta, p, kappa, bound: the problem.
        bound_multiplier: the multiplier of ||theta|| <= bound (0 when inactive).
        info: solver-specific details (iterations, raw solver value...), read-only.
    """

    theta: np.ndarray
    objective: float
    dual: float
    worst_case: object
    status: str
    certificate: float
    solver: str
    seconds: float
    kind: str
    radius: float
    beta: float
    p: int = 1
    kappa: float = np.inf
    bound: float | None = None
    bound_multiplier: float = 0.0
    data: PreferenceData | None = field(default=None, repr=False)
    info: Mapping = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # a private copy behind a read-only view: neither the solver that built the dict
        # nor a caller can change a result after the fact
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    def __reduce__(self):
        # a mappingproxy cannot be pickled or deep-copied: rebuild from the fields
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs["info"] = dict(self.info)
        return _rebuild_result, (kwargs,)

    def _ball(self) -> tuple[str, list[str]]:
        """The ball's name in :data:`loglinear.robust.BALLS` (``kl``, ``w1``, ``w2``), and
        the label-flip cost and the bound when they are part of the problem."""
        extras = [] if self.kind == "kl" or not np.isfinite(self.kappa) else [
            f"kappa={float(self.kappa):g}"]
        extras += [] if self.bound is None else [f"bound={float(self.bound):g}"]
        return ("kl" if self.kind == "kl" else f"w{self.p}"), extras

    def __repr__(self) -> str:
        # one line, no arrays: theta, the worst case and the data stay available as fields
        name, extras = self._ball()
        return (f"RobustResult({', '.join([name, *extras])}, radius={float(self.radius):.6g}, "
                f"status={self.status!r}, certificate={float(self.certificate):.2e}, "
                f"||theta||={float(np.linalg.norm(self.theta)):.6g}, "
                f"objective={float(self.objective):.6g}, solver={self.solver!r}, "
                f"seconds={float(self.seconds):.3g})")

    def summary(self) -> str:
        """A few lines: the problem, the status and its certificate, theta's size, the
        objective with its dual multiplier, and the worst case in brief."""
        wc = self.worst_case
        if isinstance(wc, Transport):
            worst = f"{len(wc.weight)} atoms, transport cost {float(wc.cost):.4g}" + (
                f", shortfall <= {float(wc.shortfall):.3g}" if wc.shortfall else "")
        elif wc is None:
            worst = "none"
        else:
            w = np.asarray(wc, dtype=float)
            worst = f"{w.size} pair weights, max {float(w.max()):.4g}" if w.size else "empty"
            if w.size and self.data is not None and self.data.n == w.size:
                q = self.data.weight
                worst += f" (max p/q {float(np.max(w[q > 0] / q[q > 0])):.4g})"
        name, extras = self._ball()
        lines = [f"RobustResult: {name} ball" + (f" ({', '.join(extras)})" if extras else "")
                 + f", radius {float(self.radius):.6g}, beta {float(self.beta):g}",
                 f"  status       {self.status} (certificate {float(self.certificate):.2e}; "
                 f"{self.solver}, {float(self.seconds):.3g} s)",
                 f"  theta        d = {np.size(self.theta)}, ||theta|| = "
                 f"{float(np.linalg.norm(self.theta)):.6g}",
                 f"  objective    {float(self.objective):.6g} (dual {float(self.dual):.6g})",
                 f"  worst case   {worst}"]
        if self.bound is not None:
            lines.append(f"  bound        ||theta|| <= {float(self.bound):g}, multiplier "
                         f"{float(self.bound_multiplier):.4g}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self) if cycle else self.summary())

    def verify(self, *, rtol: float = VERIFY_RTOL) -> Verification:
        """Re-evaluate the worst case in the primal: it lies in the ball and attains the value.

        KL: KL(p || q) <= rho (1 + rtol) and sum_i p_i l_i(theta) = objective.
        Wasserstein: the transport cost is at most radius^p and the expected loss
        under the transported distribution is within ``shortfall`` of the objective.
        """
        data, theta, beta = self.data, self.theta, self.beta
        scale = max(1.0, abs(self.objective))
        if self.kind == "kl":
            p = np.asarray(self.worst_case)
            q = data.weight
            if np.any(p < 0) or abs(p.sum() - 1) > 1e-9 or np.any((q == 0) & (p > 0)):
                return Verification(False, np.nan, self.objective, np.nan, self.radius,
                                    "worst case is not a distribution absolutely "
                                    "continuous w.r.t. the data")
            pos = p > 0
            div = float(np.sum(p[pos] * np.log(p[pos] / q[pos])))
            val = float(p @ pair_loss(theta, data, beta=beta))
            shortfall = 0.0
        else:
            wc: Transport = self.worst_case
            # the transported atoms keep their source's offset (docs/theory.md §2.4)
            moved = PreferenceData(wc.x.copy(), wc.y.copy(), offset=data.offset[wc.source])
            val = float(wc.weight @ softplus(-margins(theta, moved, beta=beta)))
            # recompute the cost from scratch rather than trusting wc.cost
            dist = np.linalg.norm(wc.x - data.x[wc.source], axis=1)
            flip = wc.y != data.y[wc.source]
            c = dist + np.where(flip, self.kappa if np.isfinite(self.kappa) else np.inf, 0.0)
            div = float(wc.weight @ (c ** self.p)) if not np.any(np.isinf(c[wc.weight > 0])) \
                else np.inf
            mass = np.bincount(wc.source, weights=wc.weight, minlength=data.n)
            if not np.allclose(mass, data.weight, atol=1e-12, rtol=1e-9):
                return Verification(False, val, self.objective, div, self.radius,
                                    "transport plan does not have the data as its source marginal")
            shortfall = wc.shortfall
        budget = self.radius ** (self.p if self.kind == "wasserstein" else 1)
        in_ball = div <= budget * (1 + BUDGET_RTOL) + 1e-12
        attains = val <= self.objective + rtol * scale and \
            val >= self.objective - shortfall - rtol * scale
        ok = bool(in_ball and attains)
        msg = "ok" if ok else (
            f"divergence {div:.6g} vs budget {budget:.6g}; primal {val:.12g} vs objective "
            f"{self.objective:.12g} (shortfall allowance {shortfall:.3g})")
        return Verification(ok, val, self.objective, div, self.radius, msg)


def _rebuild_result(kwargs: dict) -> RobustResult:
    return RobustResult(**kwargs)


def pair_loss(theta: np.ndarray, data: PreferenceData, *, beta: float) -> np.ndarray:
    """Per-pair DPO loss softplus(-m_i), shape (n,)."""
    return softplus(-margins(theta, data, beta=beta))


def check_problem(data, beta, radius, bound, method, methods) -> tuple[float, float]:
    """Validate the arguments shared by every robust solve."""
    if not isinstance(data, PreferenceData):
        raise ValueError(f"data must be a PreferenceData, got {type(data).__name__}")
    beta = _check_beta(beta)
    radius = float(radius)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    if bound is not None and not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive finite radius or None, got {bound}")
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    return beta, radius


check_theta = _check_theta      # one validation of theta for the whole package


FLOAT32_GRAM_SIZE = 2_000_000   # n*d above which Hessians (search directions only) use float32


_X32: list = [None, None]


def weighted_gram(x: np.ndarray, w: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """sum_i w_i x_i x_i^T, in float32 for large data (it only steers Newton steps)."""
    if x.size >= FLOAT32_GRAM_SIZE and not exact:
        # one-entry cache: data arrays are read-only, so the identity check is enough
        if _X32[0] is not x:
            _X32[0], _X32[1] = x, x.astype(np.float32)
        x32 = _X32[1]
        g = ((x32 * w[:, None].astype(np.float32)).T @ x32).astype(np.float64)
    else:
        g = (x * w[:, None]).T @ x
    return 0.5 * (g + g.T)


def zero_offset(data: PreferenceData) -> bool:
    return not np.any(data.offset)


def accurate(rep) -> bool:
    """A Newton report that converged with a small gradient: next to a kink Newton can
    stop on its decrement test (no decrease representable) with a large gradient."""
    return rep.converged and rep.grad_norm <= CERT_TOL


def grad_at_zero(data: PreferenceData, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(grad L(0), sigma(-m(0))): the nominal gradient at the kink theta = 0, and each
    pair's loss slope there."""
    s0 = 1.0 / (1.0 + np.exp(margins(np.zeros(data.d), data, beta=beta)))
    return data.x.T @ (data.weight * -s0 * data.sign * beta), s0


def radius_continuation(solve_at: Callable, radius: float, x0: np.ndarray):
    """``solve_at(radius, x)`` after warm-started solves at radius (1 - 2^-k), k = 1..11.

    Near a collapse radius the robust optimum lies close to the kink at theta = 0, and
    Newton from the DPO fit can stall there (the line search fails). The optimum moves
    continuously with the radius, so each stage starts inside the next one's region of
    fast convergence. ``solve_at`` returns a Newton report (``.converged``, ``.x``); the
    first stage that fails is returned as is.
    """
    x = np.asarray(x0, float)
    for k in range(1, CONT_STAGES):
        rep = solve_at(radius * (1.0 - 0.5**k), x)
        if not rep.converged:
            return rep
        x = rep.x
    return solve_at(radius, x)


def on_ball(solve_ridge: Callable[[float, np.ndarray], np.ndarray], grad_at: Callable,
            d: int, bound: float, theta_free: np.ndarray | None):
    r"""Minimise a convex V on ||theta|| <= B given a ridge solver (docs/theory.md §3.7).

    ``solve_ridge(mu, theta0)`` returns argmin V + mu/2 ||theta||^2. When the constraint
    binds, ||theta(mu)|| decreases in mu and the KKT point is the root of
    ||theta(mu)|| = B (Brent on log mu); the multiplier is then read off stationarity.

    Returns (theta, mu).
    """
    if theta_free is not None and np.linalg.norm(theta_free) <= bound:
        return theta_free, 0.0
    warm = [np.zeros(d) if theta_free is None else theta_free * (bound /
                                                                  np.linalg.norm(theta_free))]

    def gap(log_mu):
        th = solve_ridge(float(np.exp(log_mu)), warm[0])
        warm[0] = th
        return float(np.linalg.norm(th)) - bound

    log_mu = ball_multiplier_root(gap, error=RobustSolverError)
    theta = solve_ridge(float(np.exp(log_mu)), warm[0])
    theta = theta * (bound / np.linalg.norm(theta))
    g = grad_at(theta)
    mu = max(0.0, -float(g @ theta) / bound**2)
    return theta, mu


@dataclass(frozen=True)
class WassersteinValue:
    """The exact Wasserstein worst case at a fixed theta (docs/theory.md §3.3-3.5).

    Attributes:
        value: sup over the ball of E_P l (the dual value).
        dual: the multiplier (lambda for p = 1, eta for p = 2; inf at radius 0 for p = 2).
        grad: (d,) the Danskin gradient E_{P*} grad_theta l; at theta = 0 the
            minimum-norm subgradient.
        transport: the worst case as a :class:`Transport`.
        losses: (n,) nominal per-pair losses.
        nominal: sum_i q_i l_i.
        p, kappa: the problem.
    """

    value: float
    dual: float
    grad: np.ndarray
    transport: Transport
    losses: np.ndarray
    nominal: float
    p: int
    kappa: float


def min_norm(g0: np.ndarray, r: float) -> np.ndarray:
    """The smallest element of g0 + r * (unit ball)."""
    n0 = float(np.linalg.norm(g0))
    return g0 * max(0.0, 1.0 - r / n0) if n0 > 0 else g0
