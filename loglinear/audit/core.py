r"""The numbers of a preference-data audit (:func:`audit`).

Given weighted pairs (x_i, y_i, q_i), the audit computes, with the project's own tools:

* **coverage** (docs/theory.md §5.2): the spectrum of :math:`\Sigma = \sum_i q_i x_i x_i^\top`,
  :math:`\lambda_{\min}`, the effective dimension :math:`(\mathrm{tr}\,\Sigma)^2 /
  \mathrm{tr}\,\Sigma^2` (the participation ratio: d for a flat spectrum, 1 for one
  direction), and the directions the data barely explore (the eigenvectors of the smallest
  eigenvalues), each with the pair that explores it most;
* **the DPO fit** (:func:`loglinear.fit_dpo`) and its plug-in sandwich standard errors
  (:func:`loglinear.inference.intervals`, docs/theory.md §5.8); on separable data, where no
  finite fit exists, the fit on the ball :math:`\|\theta\| \le B`, said so;
* **collapse radii** (docs/theory.md §3.2, §3.6): :math:`\rho_0` of the KL ball and
  :math:`\varepsilon_0` of the W1 and W2 balls, beyond which robust training returns the
  reference (defined for zero offsets);
* **the suggested temperature** (:func:`loglinear.approx.calibrate.suggest_tau`,
  docs/theory.md §4.3): the smallest KLDPO temperature whose weights on the DPO fit's losses
  keep an effective sample fraction ``min_ess``, its implied KL radius :math:`\rho(\tau)`
  (exact KL-DRO at :math:`\rho(\tau)` is KLDPO at tau, docs/theory.md §4.2) and the shift
  of the data that worst case makes;
* **the exact KL worst case** at a stated radius (:func:`loglinear.robust.solve_kl`,
  docs/theory.md §3.1): :math:`p_i \propto q_i e^{l_i(\theta_\rho)/\lambda^\star}` at the
  robust optimum; the pairs with the largest :math:`p_i/q_i` are those the robust objective
  leans on most: the pairs the fit disagrees with most, candidates for label noise.
"""

from __future__ import annotations

import time

import numpy as np

from ..approx.calibrate import implied_radius_kl, loss_spread, suggest_tau, tau_for_ess
from ..approx.kldpo import kldpo_weights
from ..data import PreferenceData, require_data
from ..estimation import coverage
from ..fit import SeparableDataError, fit_dpo
from ..losses import dpo_loss, margins
from ..robust import collapse_radius_kl, collapse_radius_wasserstein, solve_kl
from ..stats import effective_sample_size
from .results import (
    AuditReport,
    CollapseRadii,
    CoverageSummary,
    FitSummary,
    Shift,
    Suggestion,
    WeakDirection,
    WorstCase,
)

SEPARABLE_MARGIN = 10.0  # default ball on separable data: no margin beyond 10 (sigma(-10) ~ 5e-5)
WEAK_DIRECTIONS = 3      # directions the data barely explore that the report lists
TOP_LOADINGS = 3         # features named per weak direction ...
LOADING_FLOOR = 0.1      # ... with a loading at least this fraction of the largest
RANK_RTOL = 1e-10        # eigenvalues below this fraction of the largest count as zero
MIN_ESS = 0.9            # the tau rule's effective sample fraction (approx.calibrate)
COLLAPSE_FRACTION = 0.5  # default radius when the tau rule has no answer: this * rho_0


# ------------------------------------------------------------------------ pieces
def _shift(p, q, losses) -> Shift:
    pos = q > 0
    return Shift(0.5 * float(np.abs(p - q).sum()), effective_sample_size(p, q),
                 float(np.max(p[pos] / q[pos])), float((p - q) @ losses))


def coverage_summary(data: PreferenceData, names, *, k: int = WEAK_DIRECTIONS
                     ) -> CoverageSummary:
    """The coverage spectrum of ``data`` and its ``k`` weakest directions."""
    cov = coverage(data)
    vals = np.clip(cov.eigvals, 0.0, None)
    top = float(vals[-1])
    total = float(vals.sum())
    eff = total**2 / float(vals @ vals) if top > 0 else 0.0
    rank = int(np.sum(vals > RANK_RTOL * top)) if top > 0 else 0
    weak = []
    for j in range(min(k, data.d)):
        v = cov.eigvecs[:, j]
        contrib = data.weight * (data.x @ v) ** 2
        i = int(np.argmax(contrib))
        order = np.argsort(-np.abs(v), kind="stable")[:TOP_LOADINGS]
        order = order[np.abs(v[order]) >= LOADING_FLOOR * np.abs(v[order[0]])]
        weak.append(WeakDirection(float(vals[j]), v, tuple((names[o], float(v[o]))
                                                           for o in order),
                                  i, float(contrib[i] / contrib.sum()) if contrib.sum() > 0
                                  else 0.0))
    return CoverageSummary(vals, cov.eigvecs, float(vals[0]), top, eff, rank, tuple(weak))


def _separable_bound(data, beta) -> float:
    return SEPARABLE_MARGIN / (beta * float(np.linalg.norm(data.x, axis=1).max()))


def fit_summary(data: PreferenceData, *, beta: float, bound: float | None) -> FitSummary:
    """The DPO fit (on the ball ``bound``, or on a default ball when the data are
    separable) and its sandwich standard errors."""
    from .. import inference

    default_bound = False
    try:
        fit = fit_dpo(data, beta=beta, bound=bound)
    except SeparableDataError:
        bound, default_bound = _separable_bound(data, beta), True
        fit = fit_dpo(data, beta=beta, bound=bound)
    direction = fit.info.get("separating_direction")
    m = margins(fit.theta, data, beta=beta)
    se = lo = hi = None
    note = None
    try:
        ci = inference.intervals(fit, data, 0.95, beta=beta)
        se, lo, hi = ci.se, ci.lo, ci.hi
    except ValueError as exc:
        note = str(exc)
    return FitSummary(fit.theta, float(fit.objective), float(data.weight @ (m > 0)),
                      float(fit.grad_norm), direction is not None,
                      None if direction is None else np.asarray(direction, float), bound,
                      float(fit.bound_multiplier), se, lo, hi, note, default_bound)


def collapse_radii(data: PreferenceData, *, beta: float) -> CollapseRadii:
    """rho_0 and eps_0 (W1, W2) of ``data``; ``None`` for nonzero offsets."""
    if np.any(data.offset != 0):
        return CollapseRadii(None, None, None, "the collapse radii are defined for zero "
                             "offsets only (robust training then returns the reference at "
                             "theta = 0); these data have nonzero offsets")
    return CollapseRadii(collapse_radius_kl(data, beta=beta),
                         collapse_radius_wasserstein(data, beta=beta, p=1),
                         collapse_radius_wasserstein(data, beta=beta, p=2))


def suggestion(data: PreferenceData, fit: FitSummary, *, beta: float,
               min_ess: float = MIN_ESS) -> Suggestion:
    """The tau rule (docs/theory.md §4.3) and the worst-case shift its radius implies.

    Raises:
        ValueError: the rule has no answer (equal losses, no tau in its range).
    """
    q = data.weight
    if fit.bound is None:
        s = suggest_tau(data, beta=beta, min_ess=min_ess)
        theta, note = s.theta, None
        tau, tau0, rho, sd = s.tau, s.tau_first_order, s.implied_radius, s.loss_sd
    else:
        # on a ball (and on separable data, where KLDPO has no finite solution) the rule's
        # weights are taken at the bounded DPO fit
        theta = fit.theta
        tau = tau_for_ess(theta, data, beta=beta, min_ess=min_ess)
        sd = loss_spread(theta, data, beta=beta)
        tau0 = sd / np.sqrt(-np.log(min_ess))
        rho = implied_radius_kl(tau, data, beta=beta, theta=theta)
        note = (f"tau and rho(tau) are evaluated at the DPO fit on the ball ||theta|| <= "
                f"{fit.bound:.4g}" + (" (the data are separable, so KLDPO has no finite "
                                      "solution)" if fit.separable else ""))
    losses = dpo_loss(theta, data, beta=beta)
    p = kldpo_weights(losses, q, tau=tau)
    return Suggestion(float(tau), float(tau0), float(min_ess), float(rho), float(sd),
                      np.asarray(theta), _shift(p, q, losses), note)


def worst_case(data: PreferenceData, *, beta: float, radius: float, rule: str,
               bound: float | None) -> WorstCase:
    """The exact KL worst case at the robust optimum of radius ``radius``."""
    res = solve_kl(data, beta=beta, radius=radius, bound=bound)
    p = np.asarray(res.worst_case, float)
    q = data.weight
    ratio = np.divide(p, q, out=np.zeros_like(p), where=q > 0)
    losses = dpo_loss(res.theta, data, beta=beta)
    return WorstCase(float(radius), rule, res.theta, float(res.objective), res.status,
                     float(res.dual), p, ratio, losses, margins(res.theta, data, beta=beta),
                     _shift(p, q, losses))


def _texts(texts, n: int) -> tuple[dict, ...] | None:
    if texts is None:
        return None
    texts = list(texts)
    if len(texts) != n:
        raise ValueError(f"texts must have one entry per pair ({n}), got {len(texts)}")
    return tuple(dict(t) if isinstance(t, dict) else {"text": str(t)} for t in texts)


def _check_positive(name: str, value, *, upper: float = np.inf) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (np.isfinite(value) and 0 < value < upper):
        limit = "" if upper == np.inf else f" and < {upper:g}"
        raise ValueError(f"{name} must be a finite number > 0{limit}, got {value}")
    return value


def check_options(*, beta, radius, bound, min_ess) -> tuple:
    """(beta, radius, bound, min_ess) validated: beta, radius, bound finite and > 0 (radius
    and bound may be None), min_ess in (0, 1); a ValueError names the one that is not."""
    return (_check_positive("beta", beta),
            None if radius is None else _check_positive("radius", radius),
            None if bound is None else _check_positive("bound", bound),
            _check_positive("min_ess", min_ess, upper=1.0))


# ------------------------------------------------------------------------ audit
def audit(data: PreferenceData, *, beta: float = 1.0, texts=None, radius: float | None = None,
          bound: float | None = None, min_ess: float = MIN_ESS, feature_names=None,
          source: str = "data", embedding=None) -> AuditReport:
    """Audit a preference dataset: coverage, DPO fit and error bars, collapse radii, the
    suggested KL radius/temperature and the exact KL worst-case weight of every pair.

    Args:
        data: the pairs (feature differences x, labels y, weights q, offsets).
        beta: the DPO temperature (> 0).
        texts: optional, one entry per pair: a string or a dict of strings (e.g. prompt,
            chosen, rejected), listed beside the pairs the worst case leans on most.
        radius: the KL radius of the worst case; default the suggested rho(tau), else
            half the collapse radius rho_0.
        bound: fit on the ball ||theta|| <= bound; default none, and on separable data
            the ball on which no margin exceeds 10 (:data:`SEPARABLE_MARGIN`).
        min_ess: the tau rule's effective sample fraction, in (0, 1).
        feature_names: (d,) names of the features (default x0..x{d-1}).
        source: where the data came from (a file name), for the report.
        embedding: the :class:`loglinear.audit.text.Projection` that made the features from
            text, if any.

    Returns:
        :class:`AuditReport`. Parts without an answer are ``None`` and ``notes`` says why.

    Raises:
        TypeError: ``data`` is not a PreferenceData.
        ValueError: a bad argument (the message says which and what is allowed).
    """
    t0 = time.perf_counter()
    data = require_data(data)
    beta, radius, bound, min_ess = check_options(beta=beta, radius=radius, bound=bound,
                                                 min_ess=min_ess)
    names = tuple(feature_names) if feature_names is not None else tuple(
        f"x{j}" for j in range(data.d))
    if len(names) != data.d:
        raise ValueError(f"feature_names must name the {data.d} features, got {len(names)}")
    pair_texts = _texts(texts, data.n)
    notes = []
    cov = coverage_summary(data, names)
    fit = fit_summary(data, beta=beta, bound=bound)
    if fit.separable:
        notes.append(f"The data are separable: no finite DPO fit exists; the fit is on the "
                     f"ball ||theta|| <= {fit.bound:.4g}.")
    collapse = collapse_radii(data, beta=beta)
    if collapse.note:
        notes.append(f"No collapse radii: {collapse.note}.")
    try:
        suggested = suggestion(data, fit, beta=beta, min_ess=min_ess)
    except ValueError as exc:
        suggested = None
        notes.append(f"No suggested temperature: {exc}.")
    if radius is not None:
        rule = "given"
    elif suggested is not None and suggested.implied_radius > 0:
        radius, rule = suggested.implied_radius, "suggested"
    elif collapse.kl is not None and np.isfinite(collapse.kl) and collapse.kl > 0:
        radius, rule = COLLAPSE_FRACTION * collapse.kl, "half-collapse"
    else:
        rule = None
    wc = None
    if rule is None:
        notes.append("No worst case: give a radius (no suggested radius and no finite "
                     "collapse radius to take a default from).")
    else:
        wc = worst_case(data, beta=beta, radius=radius, rule=rule, bound=fit.bound)
    return AuditReport(data.n, data.d, beta, str(source), names, data, cov, fit, collapse,
                       suggested, wc, pair_texts, embedding, tuple(notes),
                       time.perf_counter() - t0)
