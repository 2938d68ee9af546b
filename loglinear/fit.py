r"""Maximum-likelihood fits of margin losses (DPO, IPO) by Newton's method.

.. math::  \hat\theta = \arg\min_{\|\theta\|_2 \le B} \sum_i q_i\, l_i(\theta)

with l_i = phi(m_i) a margin loss of :mod:`loglinear.losses` (docs/theory.md §2.2).
Separable data (a direction v with z_i . v >= 0 for every pair and > 0 for some, so the
DPO loss decreases forever along v) has no finite minimiser: it is detected by a linear
program and reported with :class:`SeparableDataError` unless a bound B is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from .data import PreferenceData, require_data
from .losses import _check_beta, dpo_margin_terms, get_loss, margin_line, margins, objective
from .newton import ball_multiplier_root, newton

SINGULAR_RTOL = 1e-10
SATURATED_MARGIN = 20.0  # sigma(-20) ~ 2e-9: past this a pair no longer pulls on theta
HESS_REUSE = 1e-3  # relative move below which the previous Hessian is reused
FLOAT32_HESS_SIZE = 1_000_000  # n * d from which the Hessian is formed in float32
EAGER_LP = 1_000  # n * d up to which separability is checked before fitting (a HiGHS LP
                   # costs ~10 ms; past this it runs only when a fit looks separable)


class SeparableDataError(ValueError):
    """The weighted loss has no finite minimiser: the data are (quasi-)separable."""

    def __init__(self, direction: np.ndarray, message: str):
        super().__init__(message)
        self.direction = direction


class FitError(RuntimeError):
    """An optimiser did not reach its tolerance."""


@dataclass(frozen=True)
class FitResult:
    """A fitted parameter with its certificate.

    Attributes:
        theta: (d,) the estimate.
        objective: the weighted loss at ``theta``.
        grad_norm: the certificate, ||grad L + mu theta|| (mu = 0 unless the bound binds).
        iterations: Newton iterations (summed over inner solves when the bound binds).
        status: ``"converged"``.
        seconds: wall time.
        loss: registry name of the loss.
        bound_multiplier: mu >= 0 of the ball constraint (0 if inactive).
        min_hessian_eig: smallest eigenvalue of the Hessian at theta.
        unique: False when the Hessian is singular (relative eigenvalue below 1e-10) and
            the bound is inactive: the minimisers then form an affine set (theta is the
            one Newton reached from 0) and the parameter is not identifiable from the data.
    """

    theta: np.ndarray
    objective: float
    grad_norm: float
    iterations: int
    status: str
    seconds: float
    loss: str = "dpo"
    bound_multiplier: float = 0.0
    min_hessian_eig: float = float("nan")
    unique: bool = True
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        # one line, no arrays: the full fields stay available as attributes
        return (f"FitResult({self.loss}, status={self.status!r}, grad_norm="
                f"{float(self.grad_norm):.2e}, ||theta||={float(np.linalg.norm(self.theta)):.6g}"
                f", objective={float(self.objective):.6g}, iterations={int(self.iterations)}, "
                f"seconds={float(self.seconds):.3g})")

    def summary(self) -> str:
        """A few lines: the loss, the status and its certificate, theta's size, the objective."""
        lines = [f"FitResult: {self.loss} fit, {self.status} after {int(self.iterations)} "
                 f"iterations ({float(self.seconds):.3g} s)",
                 f"  certificate  ||grad|| = {float(self.grad_norm):.2e}",
                 f"  theta        d = {np.size(self.theta)}, ||theta|| = "
                 f"{float(np.linalg.norm(self.theta)):.6g}"
                 + ("" if self.unique else " (not identifiable: singular Hessian)"),
                 f"  objective    {float(self.objective):.6g}",
                 f"  min eig(H)   {float(self.min_hessian_eig):.3g}"]
        if self.bound_multiplier:
            lines.append(f"  bound        active, multiplier {float(self.bound_multiplier):.4g}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self) if cycle else self.summary())


def separating_direction(data: PreferenceData, *, tol: float = 1e-9) -> np.ndarray | None:
    """A unit v with z_i . v >= 0 for all weighted pairs and sum q_i z_i . v > 0, or None.

    Solved as the LP  max_v sum_i q_i z_i . v  s.t.  z_i . v >= 0,  -1 <= v <= 1.
    """
    keep = data.weight > 0
    z, q = data.z[keep], data.weight[keep]
    res = linprog(-(q @ z), A_ub=-z, b_ub=np.zeros(z.shape[0]), bounds=[(-1, 1)] * data.d,
                  method="highs")
    if res.status != 0:
        raise FitError(f"separability LP failed: {res.message}")
    scale = float(np.max(np.abs(z))) if z.size else 1.0
    if -res.fun <= tol * max(scale, 1e-300):
        return None
    v = res.x / np.linalg.norm(res.x)
    return v


# Margin losses with a one-exp evaluator of (phi, phi', phi''): used in place of three
# separate calls (benchmarks/fit_dpo.py: the fit is a few passes over x, so these count).
_FAST_TERMS = {"dpo": dpo_margin_terms}


class _MarginProblem:
    """Value/gradient/Hessian of sum_i q_i phi(m_i) + ridge/2 ||theta||^2 with the margins
    cached, so that the line search and the next evaluation share one pass over x."""

    def __init__(self, data, beta, loss, ridge):
        self.data, self.beta, self.ridge = data, beta, ridge
        self.spec = get_loss(loss, margin=True)
        self.fast = _FAST_TERMS.get(loss)
        self.sb = data.sign * beta
        self.q = data.weight
        self._key = None
        self._m = None
        self._value_key = None
        self._value = None
        self._hess = None
        self._hess_at = None
        self._x32 = None

    def margins(self, theta):
        if self._key is not None and np.array_equal(theta, self._key):
            return self._m
        m = margins(theta, self.data, beta=self.beta)
        self._key, self._m = theta.copy(), m
        return m

    def pieces(self, m, need_value, need_hess):
        if self.fast is not None:
            return self.fast(m, value=need_value)
        b = self.beta
        return (self.spec.phi(m, b) if need_value else None, self.spec.dphi(m, b),
                self.spec.d2phi(m, b) if need_hess else None)

    def __call__(self, theta, need_hess):
        m = self.margins(theta)
        cached = self._value if self._value_key is self._key else None
        v, d1, d2 = self.pieces(m, cached is None, need_hess)
        if cached is not None:
            value = cached
        else:
            value = float(self.q @ v) + 0.5 * self.ridge * float(theta @ theta)
        grad = self.data.x.T @ (self.q * d1 * self.sb) + self.ridge * theta
        hess = None
        if need_hess:
            hess = self._hessian(theta, d2)
        return value, grad, hess

    def _hessian(self, theta, d2):
        # Near the optimum the Hessian barely moves: reuse it (a chord step; the gradient
        # stays exact, so the fixed point and the certificate are unchanged).
        if self._hess is not None and np.linalg.norm(theta - self._hess_at) <= (
                HESS_REUSE * (1.0 + np.linalg.norm(theta))):
            return self._hess
        c = self.q * d2 * self.beta**2
        x = self.data.x
        if x.size >= FLOAT32_HESS_SIZE:
            # The Hessian only steers the step; float32 halves the GEMM for large data.
            x32 = self._x32 if self._x32 is not None else x.astype(np.float32)
            self._x32 = x32
            hess = ((x32 * c[:, None].astype(np.float32)).T @ x32).astype(np.float64)
        else:
            hess = (x * c[:, None]).T @ x
        hess = 0.5 * (hess + hess.T)
        hess[np.diag_indices_from(hess)] += self.ridge
        self._hess, self._hess_at = hess, theta.copy()
        return hess

    def line(self, theta, step):
        base, dm = margin_line(theta, step, self.data, beta=self.beta)

        def along(t):
            m = base + t * dm
            pt = theta + t * step
            # the accepted trial is evaluated next: reuse its margins and value
            self._key, self._m = pt, m
            v = self.pieces(m, True, False)[0]
            self._value_key = pt
            self._value = float(self.q @ v) + 0.5 * self.ridge * float(pt @ pt)
            return self._value

        return along


def _margin_newton(data, beta, loss, ridge, x0, gtol, max_iter):
    prob = _MarginProblem(data, beta, loss, ridge)
    return newton(prob, x0, gtol=gtol, max_iter=max_iter, line=prob.line)


def fit_margin(data: PreferenceData, *, beta: float, loss: str = "dpo",
               bound: float | None = None, gtol: float = 1e-10, max_iter: int = 200,
               theta0: np.ndarray | None = None) -> FitResult:
    """Fit any registered margin loss; see :func:`fit_dpo`."""
    t0 = time.perf_counter()
    data = require_data(data, "data")
    beta = _check_beta(beta)
    if bound is not None and not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive finite radius or None, got {bound}")
    x0 = np.zeros(data.d) if theta0 is None else np.asarray(theta0, dtype=float)
    spec = get_loss(loss, margin=True)
    vanishing = spec.phi(np.array([50.0]), beta)[0] < 1e-12
    # Small problems: settle separability up front (an LP costs microseconds there).
    # Large ones: only when the Newton run looks suspicious (saturated margins, divergence).
    direction = separating_direction(data) if vanishing and data.n * data.d <= EAGER_LP else None
    if direction is None or bound is None:
        with np.errstate(over="ignore", invalid="ignore"):
            rep = _margin_newton(data, beta, loss, 0.0, x0, gtol, max_iter)
        m = margins(rep.x, data, beta=beta)
        saturated = np.max(m[data.weight > 0]) > SATURATED_MARGIN
        if vanishing and direction is None and data.n * data.d > EAGER_LP and (
                saturated or not rep.converged):
            direction = separating_direction(data)
    else:
        rep = None
    iters = 0 if rep is None else rep.iterations
    if (direction is None and rep.converged
            and (bound is None or np.linalg.norm(rep.x) <= bound)):
        theta, mult, gnorm, status = rep.x, 0.0, rep.grad_norm, "converged"
    elif bound is None:
        if direction is not None:
            raise SeparableDataError(
                direction,
                "the data are separable: the loss decreases without bound along direction "
                f"{np.round(direction, 4).tolist()}, so no finite minimiser exists; pass "
                "bound=B to fit on the ball ||theta|| <= B",
            )
        raise FitError(f"Newton did not converge ({rep.status}, grad norm {rep.grad_norm:.3g} "
                       f"after {rep.iterations} iterations)")
    else:
        theta, mult, gnorm, inner = _fit_on_sphere(data, beta, loss, bound, gtol, max_iter)
        iters += inner
        if not gnorm <= gtol:       # converged only with the KKT certificate
            raise FitError(f"the fit on the ball ||theta|| <= {bound:g} did not reach its "
                           f"tolerance: KKT residual {gnorm:.3g} > gtol {gtol:g}")
        status = "converged"
    if mult == 0.0 and rep is not None and rep.hess is not None:
        value, hess = rep.value, rep.hess
    else:
        obj = objective(theta, data, beta=beta, loss=loss)
        value, hess = obj.value, obj.hess
    eigs = np.linalg.eigvalsh(hess)
    unique = mult > 0 or eigs[0] > SINGULAR_RTOL * max(eigs[-1], 1e-300)
    return FitResult(theta, value, gnorm, iters, status, time.perf_counter() - t0, loss,
                     mult, float(eigs[0]), bool(unique), {"separating_direction": direction})


def _fit_on_sphere(data, beta, loss, bound, gtol, max_iter):
    """Solve min L(theta) s.t. ||theta|| <= B when the constraint binds.

    KKT: grad L + mu theta = 0 with ||theta|| = B; theta(mu) minimises L + mu/2 ||theta||^2
    and ||theta(mu)|| decreases in mu, so mu is a 1-D root (Brent on log mu).
    """
    iters = [0]
    warm = [np.zeros(data.d)]

    def norm_gap(log_mu):
        rep = _margin_newton(data, beta, loss, float(np.exp(log_mu)), warm[0], gtol * 1e-2,
                             max_iter)
        iters[0] += rep.iterations
        warm[0] = rep.x
        return float(np.linalg.norm(rep.x)) - bound

    hi = np.log(max(float(np.linalg.norm(objective(np.zeros(data.d), data, beta=beta,
                                                   loss=loss).grad)) / bound, 1e-12)) + 1.0
    log_mu = ball_multiplier_root(norm_gap, hi=hi, tol=1e-14, error=FitError)
    mu = float(np.exp(log_mu))
    rep = _margin_newton(data, beta, loss, mu, warm[0], gtol * 1e-2, max_iter)
    theta = rep.x * (bound / np.linalg.norm(rep.x))
    g = objective(theta, data, beta=beta, loss=loss, hessian=False).grad
    # KKT multiplier from stationarity, projected on theta (mu >= 0 at the active bound).
    mu = max(0.0, -float(g @ theta) / bound**2)
    return theta, mu, float(np.linalg.norm(g + mu * theta)), iters[0] + rep.iterations


def fit_dpo(data: PreferenceData, *, beta: float, bound: float | None = None,
            gtol: float = 1e-10, max_iter: int = 200) -> FitResult:
    r"""The DPO estimate: Newton's method with an Armijo line search.

    .. math::  \hat\theta = \arg\min_{\|\theta\|\le B} \sum_i q_i\,\mathrm{softplus}(-m_i)

    Args:
        data: weighted preference data (samples or an exact population).
        beta: the DPO temperature, > 0.
        bound: optional ball radius B; ``None`` means unconstrained.
        gtol: gradient-norm tolerance (the certificate).
        max_iter: Newton iteration cap.

    Returns:
        :class:`FitResult` with ``theta``, ``objective`` and the certificate.

    Raises:
        SeparableDataError: no finite minimiser exists and no bound was given.
        FitError: the optimiser did not converge.
    """
    return fit_margin(data, beta=beta, loss="dpo", bound=bound, gtol=gtol, max_iter=max_iter)
