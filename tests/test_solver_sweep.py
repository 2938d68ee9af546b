"""A random sweep of the exact robust solvers over the regimes where they used to fail.

Per family (KL, W1 with kappa = inf, W1 with finite kappa, W2): n from 5 to 2000, d from 1
to 20, beta in {0.1, 1, 5}, uniform and Dirichlet weights, offsets, and random, separable,
nearly separable and duplicated-row data, at radii from 0.02 to 0.999 of the collapse
radius. Every solve must end "converged" (certificate at most 1e-6) or "collapsed", never
"inaccurate", never raise (except SeparableDataError where no finite minimiser exists), and
take at most MAX_SECONDS. The documented cvxpy fallback is allowed (its result carries its
own certificate); how often it ran is printed.

The full sweep (SWEEP_FULL instances per family, 5 radii each) runs only with
``LOGLINEAR_SWEEP=1``; ``LOGLINEAR_SWEEP_OUT=prefix`` writes every solve's record. Latest
figures (one core, the machine shared): 0 solves inaccurate, failed or uncertified in any
family; KL used the documented cvxpy fallback on degenerate small samples, W1 with finite
kappa never; W2's slowest solve (8 atoms in 20 dimensions, 2% of eps_0) takes about 3 s
alone.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from loglinear import PreferenceData, SeparableDataError
from loglinear.robust import (
    collapse_radius_kl,
    collapse_radius_wasserstein,
    solve_kl,
    solve_wasserstein,
)

SWEEP_FULL = 50      # instances per family: x 5 radii = 250 problems
MAX_SECONDS = 5.0
FRACTIONS = (0.02, 0.1, 0.5, 0.9, 0.999)
KINDS = ("random", "separable", "nearly-separable", "duplicated")
FAMILIES = ("kl", "w1", "w1-kappa", "w2")


def instance(seed: int):
    """One random problem: (data, beta, kind, offsets?)."""
    rng = np.random.default_rng(np.random.SeedSequence([2026, seed]))
    kind = KINDS[seed % len(KINDS)]
    n = int(np.exp(rng.uniform(np.log(5), np.log(2000))))
    d = int(rng.integers(1, 21))
    beta = (0.1, 1.0, 5.0)[seed // len(KINDS) % 3]
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    score = x @ w
    if kind == "random":
        y = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(float)
    else:
        y = (score > 0).astype(float)
        if kind == "nearly-separable":
            y[int(np.argmin(np.abs(score)))] = 1 - y[int(np.argmin(np.abs(score)))]
    if kind == "duplicated":
        idx = rng.integers(0, n, size=n)
        x, y = x[idx], y[idx]
    weight = rng.dirichlet(np.ones(n)) if seed % 2 else None
    offset = 0.5 * rng.normal(size=n) if seed % 3 == 0 else None
    data = PreferenceData(x, y, offset=offset, weight=weight, normalize=weight is not None)
    return data, beta, kind


def solve(family: str, seed: int) -> list[dict]:
    """Every radius fraction of one instance of one family, as records."""
    data, beta, kind = instance(seed)
    rng = np.random.default_rng(seed)
    rows = []
    if family == "kl":
        base = collapse_radius_kl(data.centered(), beta=beta)
        run = lambda r: solve_kl(data, beta=beta, radius=r,
                                 bound=5.0 if kind != "random" else None)
    else:
        p = 2 if family == "w2" else 1
        kappa = float(rng.uniform(0.2, 2.0)) if family == "w1-kappa" else np.inf
        base = collapse_radius_wasserstein(data, beta=beta, p=p)
        run = lambda r: solve_wasserstein(data, beta=beta, radius=r, p=p, kappa=kappa)
    for frac in FRACTIONS:
        radius = frac * base if np.isfinite(base) else frac
        row = dict(family=family, seed=seed, kind=kind, n=data.n, d=data.d, beta=beta,
                   fraction=frac, radius=radius)
        t0 = time.perf_counter()
        try:
            res = run(radius)
            row.update(status=res.status, certificate=res.certificate,
                       fallback="fallback_reason" in res.info)
        except SeparableDataError:
            row.update(status="separable", certificate=0.0, fallback=False)
        except Exception as exc:    # recorded, then judged below
            row.update(status=f"error: {type(exc).__name__}: {exc}", certificate=np.inf,
                       fallback=False)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def _judge(rows):
    print(f"{sum(r['fallback'] for r in rows)} of {len(rows)} solves used the cvxpy fallback")
    bad = [r for r in rows
           if r["status"] not in ("converged", "collapsed", "separable")
           or r["certificate"] > 1e-6 or r["seconds"] > MAX_SECONDS]
    assert not bad, "\n".join(map(str, bad[:10]))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LOGLINEAR_SWEEP") != "1",
                    reason="the full solver sweep runs with LOGLINEAR_SWEEP=1")
@pytest.mark.parametrize("family", FAMILIES)
def test_full_sweep(family):
    rows = [r for seed in range(SWEEP_FULL) for r in solve(family, seed)]
    out = os.environ.get("LOGLINEAR_SWEEP_OUT")
    if out:
        with open(f"{out}.{family}.json", "w") as f:
            json.dump(rows, f, default=float)
    _judge(rows)
