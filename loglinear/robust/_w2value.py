r"""The exact W2 worst case at a fixed theta: the multiplier eta*, the tie split and the
transport (docs/theory.md §3.5, outer problem).

.. math::
    V(\theta) = \inf_{\eta\ge0}\ \eta\varepsilon^2 + \sum_i q_i\,\varphi(u_i, \beta\|\theta\|,
    \eta), \qquad u_i = -m_i,

with the inner supremum phi of :mod:`._w2inner`. The eta-derivative is
eps^2 - sum_i q_i t_i^2 (envelope theorem), so eta* spends the budget exactly; at a jump
of t(eta) the tied atoms split their mass between their two maximisers. At theta = 0
moving gains nothing: V(0) = L(0), and eta is reported as 0.
"""

from __future__ import annotations

import numpy as np

from ..losses import margins, softplus
from ._base import RobustSolverError, Transport, WassersteinValue, min_norm
from ._w2inner import inner_sup, ordered_maxima, sigmoid, tie_eta

ETA_RTOL = 1e-13
TIE_RTOL = 1e-12
FEW_JUMPS = 8       # up to this many distinct ties in the bracket: try them first; more: secant


class _Bracket:
    """eta* lies in [lo, hi]: the evaluations at both ends (t, far mask, phi, alt_phi,
    alt_t), their budgets sum q t^2, and the Illinois weights of the secant."""

    def __init__(self):
        self.lo, self.hi, self.ends, self.spent = 0.0, np.inf, {}, {}
        self.weight, self.last = {"lo": 1.0, "hi": 1.0}, None

    def update(self, eta, spent, eps, end):
        side, other = ("hi", "lo") if eps**2 - spent > 0 else ("lo", "hi")
        setattr(self, side, eta)
        self.ends[side], self.spent[side], self.weight[side] = end, spent, 1.0
        if self.last == side:       # Illinois: an end kept twice in a row counts half
            self.weight[other] *= 0.5
        self.last = side


def _far(u, b, end):
    """Which atoms sit on their far local maximum (u + b t > 0 below the cusp) at a bracket
    end ``(t, far, ...)``; ``far`` overrides it where the end is a tie point."""
    t, far = end[:2]
    return (u + b * t > 0) if far is None else far


def _tie_start(j, br):
    """A first guess for the tie point of atom j in (lo, hi): the secant (or the tangent)
    of its gap phi_far - phi_near in 1/eta through the bracket ends where both its local
    maxima exist (:func:`._w2inner.tie_eta`); None where neither has both."""
    lo, hi, pts = br.lo, br.hi, []
    for eta, (t, _, phi, alt_phi, alt_t) in ((lo, br.ends["lo"]), (hi, br.ends["hi"])):
        if np.isfinite(alt_phi[j]) and t[j] != alt_t[j]:
            sgn = 1.0 if t[j] > alt_t[j] else -1.0      # +1 where t is the far maximum
            pts.append((1.0 / eta, sgn * (phi[j] - alt_phi[j]),
                        eta * eta * sgn * (t[j] ** 2 - alt_t[j] ** 2)))
    if len(pts) == 2 and pts[0][1] != pts[1][1]:
        (x0, d0, _), (x1, d1, _) = pts
        x = x0 - d0 * (x1 - x0) / (d1 - d0)
    elif pts and pts[0][2] > 0:
        x = pts[0][0] - pts[0][1] / pts[0][2]
    else:
        return None
    return 1.0 / x if x > 0 and lo < 1.0 / x < hi else None


def _jumps(u, q, b, br):
    """The atoms whose maximiser jumps from their far to their near local maximum as eta
    crosses (lo, hi) (u + b t changes sign; below the cusp b^2/8 only a jump does that),
    or None where not known (no finite bracket yet) or none can (lo above the cusp)."""
    if not ("lo" in br.ends and "hi" in br.ends) or br.lo >= b * b / 8.0:
        return None
    return np.flatnonzero((q > 0) & _far(u, b, br.ends["lo"]) & ~_far(u, b, br.ends["hi"]))


def _distinct(u, jumps):
    """How many distinct ties the jumping atoms have (duplicated atoms tie together);
    FEW_JUMPS + 1 for many."""
    return np.unique(u[jumps]).size if jumps.size <= 4 * FEW_JUMPS else FEW_JUMPS + 1


def _jump_point(u, b, br, jumps):
    """The next multiplier to try inside the bracket (lo, hi), given the atoms that jump in
    it: the cusp b^2/8 if the bracket straddles it (above it every phi_i is concave in t,
    t(eta) continuous), else the tie point of the jumping atom with the median u (tie
    points rise with u: d(phi_far - phi_near)/du = sigma_far - sigma_near > 0), which is
    eta* or halves the jumps left. Returns (eta, is_tie), or None.
    """
    lo, hi, cusp = br.lo, br.hi, b * b / 8.0
    if lo < cusp < hi:
        return cusp, False
    if hi > cusp or jumps is None or jumps.size == 0:
        return None
    j = jumps[np.argsort(u[jumps])[jumps.size // 2]]
    eta = float(tie_eta(u[j:j + 1], b, lo, hi, _tie_start(j, br))[0])
    return (eta, True) if lo < eta < hi else None


def _tie_verdict(u, q, b, eps, phi, t, alt_phi, alt_t):
    """At a tie point: whether eta* is here (the budget lies between the tied atoms all on
    their near and all on their far maximum), and the far mask of this bracket end (the
    tied atoms on the side the root is not)."""
    tie = (q > 0) & (alt_phi >= phi - TIE_RTOL * np.maximum(1.0, np.abs(phi)))
    far = u + b * t > 0
    if tie.any():
        lo, hi, _, _ = ordered_maxima(t[tie], alt_t[tie], phi[tie], alt_phi[tie])
        spent = float(q @ (t * t)) - float(q[tie] @ (t[tie] ** 2))
        s_near, s_far = spent + float(q[tie] @ lo**2), spent + float(q[tie] @ hi**2)
        if s_near <= eps**2 <= s_far:
            return True, far
        far[tie] = s_far < eps**2
    return False, far


def _newton_steps(eta, spent, eps, h2, lo, hi):
    """The Newton steps for sum q t^2 = eps^2 inside (lo, hi), None where outside: in
    (log eta, log sum q t^2), where it is close to linear (t ~ b sigma / (2 eta) for small
    and saturated t alike), and in eta."""
    if h2 <= 0:
        return None, None
    eta_log = None
    if spent > 0:
        with np.errstate(over="ignore"):
            eta_log = float(eta * np.exp(np.log(spent / eps**2) * spent / (eta * h2)))
    eta_lin = eta - (eps**2 - spent) / h2
    return ((eta_log if eta_log is not None and lo < eta_log < hi else None),
            (eta_lin if lo < eta_lin < hi else None))


def _secant(br, eps):
    """The Illinois secant step for sum q t^2 = eps^2 between the bracket ends, in (log
    eta, log sum q t^2); None where a sum is 0."""
    if not (br.spent.get("hi", 0) > 0 and br.spent.get("lo", 0) > 0):
        return None
    f_lo = br.weight["lo"] * np.log(br.spent["lo"] / eps**2)
    f_hi = br.weight["hi"] * np.log(br.spent["hi"] / eps**2)
    eta = float(np.exp(np.log(br.lo) + f_lo * np.log(br.hi / br.lo) / (f_lo - f_hi)))
    return (eta, False) if br.lo < eta < br.hi else None


def _next_trial(u, q, b, eps, eta, br, steps):
    """(eta, is_tie): the next multiplier to evaluate, in the order of :func:`_profile_eta`."""
    jumps = _jumps(u, q, b, br)
    many = jumps is not None and _distinct(u, jumps) > FEW_JUMPS
    nxt = None
    if jumps is not None and jumps.size:
        # many jumps: Newton's slope misses them, the secant through the ends sees them
        nxt = _secant(br, eps) if many else _jump_point(u, b, br, jumps)
    log_step, lin_step = steps
    if nxt is None and log_step is not None:
        nxt = (log_step, False)
    if nxt is None:
        nxt = _jump_point(u, b, br, jumps)
    if nxt is None and lin_step is not None:
        nxt = (lin_step, False)
    if nxt is None:
        lo, hi = br.lo, br.hi
        nxt = (2.0 * eta if not np.isfinite(hi) else
               (0.5 * hi if lo == 0 else np.sqrt(lo * hi)), False)
    return nxt


def _profile_eta(u, q, b, eps, eta0=None):
    """eta* = argmin_eta eta eps^2 + sum q phi_i(eta): the root of sum q t_i(eta)^2 = eps^2.

    sum q t^2 falls with eta, smoothly except where an atom's maximiser jumps from its
    far to its near local maximum (where the two tie); eta* often sits at such a jump
    (small or separable data), where Newton cannot land. The trials, inside the bracket:
    while few atoms jump in it, the tie point of one of them (:func:`._w2inner.tie_eta`:
    it is eta*, or the jumps left halve); while many, the Illinois secant through its
    ends (Newton's slope misses the jumps); else Newton in (log eta, log sum q t^2), close
    to linear, under Brent's safeguard (a step at most half the one before last); then a
    tie point, Newton in eta, geometric bisection. Each evaluation starts from the
    maximisers of the last, moved along their tangents. Returns (eta, phi, t, alt_phi,
    alt_t) with the inner suprema of :func:`inner_sup` at eta.
    """
    pos = q > 0
    if eta0 is None or not np.isfinite(eta0) or eta0 <= 0:
        s0 = sigmoid(u[pos])
        eta0 = b * np.sqrt(float(q[pos] @ s0**2)) / (2.0 * eps)
        if not eta0 > 0:     # every sigma(u) underflows: start where T = b / (2 eta) = eps
            eta0 = b / (2.0 * eps)
    br = _Bracket()
    eta, at_tie, start, moves = eta0, False, None, []
    for _ in range(300):
        phi, t, alt_phi, alt_t, dt = inner_sup(u, b, eta, start, slope=True)
        spent = float(q @ (t * t))
        far = None
        if at_tie:
            found, far = _tie_verdict(u, q, b, eps, phi, t, alt_phi, alt_t)
            if found:
                break
        br.update(eta, spent, eps, (t, far, phi, alt_phi, alt_t))
        if (abs(eps**2 - spent) <= ETA_RTOL * eps**2
                or (np.isfinite(br.hi) and br.hi - br.lo <= 4e-16 * br.hi)):
            break
        # d/d eta (eps^2 - sum q t^2) = -2 sum q t dt/d eta
        steps = _newton_steps(eta, spent, eps, -2.0 * float(q @ (t * dt)), br.lo, br.hi)
        if len(moves) >= 2:     # Brent's safeguard: Newton must at least halve its steps
            steps = [e if e and abs(np.log(e / eta)) <= 0.5 * moves[-2] else None
                     for e in steps]
        eta_next, at_tie = _next_trial(u, q, b, eps, eta, br, steps)
        start = (t, alt_t, dt, eta_next - eta)
        moves.append(abs(np.log(eta_next / eta)))
        eta = eta_next
    else:
        raise RobustSolverError("W2 multiplier root did not converge")
    return eta, phi, t, alt_phi, alt_t


def _tie_split(q, eps, phi, t, alt_phi, alt_t):
    """The fraction of each atom's mass the worst case sends to its other local maximum.

    Nonzero only when eta* sits at a jump of t(eta): there the tied atoms (both local
    maxima equal) split their mass so that the budget sum q t^2 = eps^2 is spent exactly.
    The tied atoms send one common fraction to their larger maximiser (any split that
    spends the budget is a worst case; this one is continuous in the data). Returns the
    fractions and the mask of the split atoms.
    """
    frac = np.zeros(q.shape[0])
    split = np.zeros(q.shape[0], dtype=bool)
    spent = float(q @ (t * t))
    tie = (q > 0) & (alt_phi >= phi - TIE_RTOL * np.maximum(1.0, np.abs(phi)))
    if abs(spent - eps**2) > 1e-10 * eps**2 and tie.any():
        lo, hi, _, _ = ordered_maxima(t[tie], alt_t[tie], phi[tie], alt_phi[tie])
        delta = float(q[tie] @ (hi**2 - lo**2))
        if delta != 0:
            base = spent + float(q[tie] @ (lo**2 - t[tie] ** 2))
            to_hi = min(1.0, max(0.0, (eps**2 - base) / delta))
            frac[tie] = np.where(t[tie] <= alt_t[tie], to_hi, 1.0 - to_hi)
            split = tie
    return frac, split


def w2_value(theta, data, *, beta: float, radius: float):
    """The exact W2 worst case at fixed theta (docs/theory.md §3.5); see
    :func:`loglinear.robust.wasserstein_value`."""
    q = data.weight
    m = margins(theta, data, beta=beta)
    losses = softplus(-m)
    nominal = float(q @ losses)
    norm = float(np.linalg.norm(theta))
    b = beta * norm
    eps = radius
    if b == 0 or eps == 0:
        s = 1.0 / (1.0 + np.exp(m))
        grad = data.x.T @ (q * -s * data.sign * beta)
        if b == 0:
            grad = min_norm(grad, eps * beta * float(np.sqrt(q @ s**2)))
        dual = np.inf if eps == 0 and b > 0 else 0.0
        tr = Transport(data.x.copy(), data.y.copy(), q.copy(), np.arange(data.n), 0.0)
        return WassersteinValue(nominal, dual, grad, tr, losses, nominal, 2, np.inf)
    u = -m
    eta, phi, t, alt_phi, alt_t = _profile_eta(u, q, b, eps)
    frac = _tie_split(q, eps, phi, t, alt_phi, alt_t)[0]
    value = eta * eps**2 + float(q @ phi)
    unit = theta / norm
    # the split atoms (few, often none) mix their two maximisers; done on them alone
    split = np.flatnonzero(frac)
    if split.size:
        # the value of the split worst case: eta* is a tie point only to rounding, where
        # the dual's slope in eta jumps; the split spends the budget, so this is
        # stationary in eta (equal to the dual at the exact tie)
        value += float(q[split] @ (frac[split] * (alt_phi[split] - phi[split])))
    sig = sigmoid(u + b * t)
    mix_s, mix_ts = sig, t * sig
    if split.size:
        f, ts = frac[split], t[split]
        sig_alt = sigmoid(u[split] + b * alt_t[split])
        mix_s = sig.copy()
        mix_s[split] = (1 - f) * sig[split] + f * sig_alt
        mix_ts[split] = (1 - f) * ts * sig[split] + f * alt_t[split] * sig_alt
    grad = data.x.T @ (q * -mix_s * data.sign * beta) + beta * float(q @ mix_ts) * unit
    if split.size == 0 and np.all(q > 0):       # the common case, without gathers
        xs = np.multiply.outer(data.sign * t, -unit)
        xs += data.x                             # = x - (sign t) unit, as below
        src = np.arange(data.n, dtype=np.int64)
        tr = Transport(xs, data.y.copy(), q * 1.0, src, float(q @ (t * t)))
        return WassersteinValue(value, float(eta), grad, tr, losses, nominal, 2, np.inf)
    main = np.flatnonzero((q > 0) & (frac < 1))
    alt = split[q[split] > 0]
    xs = np.vstack([data.x[main] - (data.sign[main] * t[main])[:, None] * unit,
                    data.x[alt] - (data.sign[alt] * alt_t[alt])[:, None] * unit])
    ws = np.concatenate([q[main] * (1 - frac[main]), q[alt] * frac[alt]])
    src = np.concatenate([main, alt]).astype(np.int64)
    cost = float(q @ ((1 - frac) * t * t + frac * alt_t * alt_t))
    tr = Transport(xs, data.y[src], ws, src, cost)
    return WassersteinValue(value, float(eta), grad, tr, losses, nominal, 2, np.inf)
