r"""Exact robust solutions and the paper's surrogates, for the exploration notebooks.

The robust side of :mod:`loglinear.experiments.explore` (which re-exports these sweeps):
the exact solution as the radius grows to the collapse radius (docs/theory.md §3.2, §3.6),
and the WDPO and KLDPO surrogates against the exact solutions they approximate
(docs/theory.md §4.1, §4.2). Balls are looked up in ``loglinear.robust.BALLS``. Every sweep
returns tidy records (a list of dicts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..approx import fit_kldpo, fit_wdpo, implied_radius_kl, rho_for_w2_radius
from ..env import LogLinearEnv
from ..robust import BALLS

__all__ = ["kl_surrogate_sweep", "shrinkage_path", "wasserstein_surrogate_sweep"]


def shrinkage_path(env: LogLinearEnv, *, fractions: Sequence[float], kind: str = "kl"
                   ) -> list[dict]:
    r"""The exact population robust solution as the radius grows to the collapse radius.

    Radius = fraction * collapse radius of the ball ``kind`` (a key of
    ``loglinear.robust.BALLS``: "kl", "w1", "w2"), solved on the centred population
    (w = theta - theta_ref, so w = 0 is pi_ref). For each radius: ||w_rho|| / ||w*||
    (w* the DPO optimum), cos(w_rho, w*), KL(pi_theta || pi_ref) and the expected reward
    of pi_theta, with theta = theta_ref + w_rho, and the solver's dual variable.

    For KL and a linear Bradley-Terry reward the two labels of every pair balance at
    w = c w* with c = lambda*/(1 + lambda*) (the tilted weights q_y e^{l_y/lambda} make the
    pair's gradient vanish), so ``norm_ratio`` equals lambda*/(1 + lambda*) and ``cosine``
    equals 1; ``tests/test_explore.py`` checks this.

    Returns:
        records ``kind, fraction, radius, norm_ratio, cosine, kl_to_ref, reward, dual,
        status``.
    """
    ball = BALLS.get(kind)
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be >= 0, got {fractions}")
    pop = env.population(centered=True)
    w_star = env.theta_star() - env.theta_ref
    rho0 = ball.collapse_radius(pop, beta=env.beta)
    rows = []
    for f in fractions:
        res = ball.solve(pop, beta=env.beta, radius=f * rho0)
        w = np.asarray(res.theta, float)
        theta = env.theta_ref + w
        value = env.value(theta)
        nw = float(np.linalg.norm(w))
        cos = float(w @ w_star / (nw * np.linalg.norm(w_star))) if nw > 0 else 0.0
        rows.append({"kind": kind, "fraction": f, "radius": f * rho0,
                     "norm_ratio": nw / float(np.linalg.norm(w_star)), "cosine": cos,
                     "kl_to_ref": value.kl, "reward": value.reward, "dual": float(res.dual),
                     "status": res.status})
    return rows


def wasserstein_surrogate_sweep(data, *, beta: float, fractions: Sequence[float]
                                ) -> list[dict]:
    r"""Exact W1/W2 solutions and the WDPO surrogates at the same radius.

    Radius eps = fraction * the W2 collapse radius of ``data``. Methods: ``exact-w1``
    and ``exact-w2`` (``loglinear.robust.solve_wasserstein``, kappa = inf), ``wdpo-paper``
    with rho = eps (Gao et al.'s first-order W2 expansion) and ``wdpo-official`` with
    rho = ``rho_for_w2_radius(eps, form="official")`` (calibrated at the DPO fit).

    Every theta is scored by the exact W2 worst-case loss V_2(theta) at eps, so
    ``excess`` = V_2(theta) - V_2(theta_exact-w2) >= 0 is the robustness a surrogate
    gives up; ``distance`` = ||theta - theta_exact-w2||; ``rho`` is the WDPO penalty
    weight (NaN for the exact solutions, whose hyperparameter is ``radius``).

    Returns:
        records ``method, fraction, radius, rho, norm, distance, worst_case_w2, excess,
        status``.
    """
    beta = float(beta)
    w1, w2 = BALLS.get("w1"), BALLS.get("w2")
    eps0 = w2.collapse_radius(data, beta=beta)
    rows = []
    for f in fractions:
        eps = float(f) * eps0
        fits = {"exact-w2": (np.nan, w2.solve(data, beta=beta, radius=eps)),
                "exact-w1": (np.nan, w1.solve(data, beta=beta, radius=eps)),
                "wdpo-paper": (eps, fit_wdpo(data, beta=beta, rho=eps, form="paper"))}
        if eps > 0:
            rho = rho_for_w2_radius(eps, data, beta=beta, form="official")
            fits["wdpo-official"] = (rho, fit_wdpo(data, beta=beta, rho=rho, form="official"))
        ref = np.asarray(fits["exact-w2"][1].theta, float)
        v_ref = float(w2.value(ref, data, beta=beta, radius=eps).value)
        for method, (rho, fit) in fits.items():
            theta = np.asarray(fit.theta, float)
            v = float(w2.value(theta, data, beta=beta, radius=eps).value)
            rows.append({"method": method, "fraction": float(f), "radius": eps,
                         "rho": float(rho), "norm": float(np.linalg.norm(theta)),
                         "distance": float(np.linalg.norm(theta - ref)),
                         "worst_case_w2": v, "excess": v - v_ref, "status": fit.status})
    return rows


def kl_surrogate_sweep(data, *, beta: float, taus: Sequence[float]) -> list[dict]:
    r"""KLDPO at each temperature tau against the exact KL-DRO solution it implies.

    For the paper form the fixed point theta_tau solves exact KL-DRO at the radius
    rho(tau) = KL(P* || q) (``loglinear.approx.implied_radius_kl``) with dual lambda* = tau
    (docs/theory.md §4.2). This sweep measures that identity (``distance``, ``dual``) and
    the official capped form's distance from the same exact solution.

    Returns:
        records ``tau, radius, collapse_radius, dual, norm_exact, distance_paper,
        distance_official``.
    """
    kl_ball = BALLS.get("kl")
    rho0 = kl_ball.collapse_radius(data, beta=beta)
    rows = []
    for tau in taus:
        tau = float(tau)
        paper = fit_kldpo(data, beta=beta, tau=tau, form="paper")
        official = fit_kldpo(data, beta=beta, tau=tau, form="official")
        radius = implied_radius_kl(tau, data, beta=beta, theta=paper.theta)
        exact = kl_ball.solve(data, beta=beta, radius=radius)
        ref = np.asarray(exact.theta, float)
        rows.append({"tau": tau, "radius": radius, "collapse_radius": rho0,
                     "dual": float(exact.dual), "norm_exact": float(np.linalg.norm(ref)),
                     "distance_paper": float(np.linalg.norm(paper.theta - ref)),
                     "distance_official": float(np.linalg.norm(official.theta - ref))})
    return rows
