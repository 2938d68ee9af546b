"""Benchmark: loglinear against the tools a user would otherwise pick, side by side.

* DPO in the log-linear class is logistic regression without intercept on z = (2y-1) x
  with coefficients beta theta: ``fit_dpo`` against scikit-learn's ``LogisticRegression``
  (no penalty, no intercept; solvers lbfgs and newton-cholesky), at equal accuracy: every
  solver's theta within ``--atol`` of a tight reference fit (scikit-learn's tolerances are
  tightened until it gets there, or its row says it did not).
* Exact KL-, W1- (kappa = inf and kappa = 1) and W2-robust DPO: ``solve_kl`` /
  ``solve_wasserstein`` against the ``dro`` package (namkoong-lab) and ``skwdro``, where
  they import. How each peer states each problem, and why the problems are the same, is in
  ``benchmarks/_peers_dro.py``. Radii are 0.3 x each ball's collapse radius. The reference
  is our solve, with its status (``converged`` carries a KKT certificate <= 1e-6); each
  peer runs with its default settings and its row gives its reported objective against
  ours (they must agree to 1e-6 relative, or the row says MISMATCH), the exact robust value
  at its theta against ours (never below it where ours is optimal, or the row says so),
  its max |theta difference|, and whether it reached equal accuracy (theta within 1e-6
  and objective within 1e-8 relative).

Ratios are peer time / our time (> 1: loglinear is faster), best of ``--repeat``, all
measured in this run; a peer run longer than ``--slow`` seconds, or one that failed, is not
repeated. The cvxpy-based peers run up to ``--dro-max-n`` / ``--skwdro-max-n`` (skwdro
builds its constraints one atom at a time in python). Single-threaded BLAS unless
OMP_NUM_THREADS is set. ``--markdown`` ends with one table for README's benchmark section.

    PYTHONPATH=DIR python benchmarks/peers.py [--repeat 3] [--sizes 1e3,1e4,1e5]
        [--dims 4,16] [--dpo-dims 4,16,64] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from functools import partial

os.environ.setdefault("OMP_NUM_THREADS", "1")

import _peers_dro as rp  # noqa: E402  (benchmarks/, the script's own folder)
import numpy as np  # noqa: E402

from loglinear import PreferenceData, fit_dpo  # noqa: E402

SLOW_S = 5.0    # a peer run longer than this is not repeated


def _best(fn, repeat, slow=np.inf):
    """(best seconds, last output, exception or None): best of ``repeat`` runs; a run that
    raises, or takes longer than ``slow``, ends the repeats."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fn()
        except Exception as exc:     # a peer's solver failed: report it, keep going
            return time.perf_counter() - t0, None, exc
        best = min(best, time.perf_counter() - t0)
        if best > slow:
            break
    return best, out, None


def make_data(n: int, d: int, seed: int) -> PreferenceData:
    """Zero-offset logistic preferences, ||x_i|| ~ 1, from a seed fixed by (seed, n, d)."""
    rng = np.random.default_rng([seed, n, d])
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    theta = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ theta))).astype(float)
    return PreferenceData(x, y)


def sklearn_fit(data: PreferenceData, beta: float, solver: str, tol: float):
    """theta from scikit-learn: logistic regression of the labels on x, coefficients
    beta theta, no intercept, no penalty."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(penalty=None, fit_intercept=False, solver=solver, tol=tol,
                               max_iter=10_000)
    model.fit(data.x, data.y.astype(int))
    return model.coef_.ravel() / beta


def dpo_rows(sizes, dims, repeat, atol, seed, table):
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("scikit-learn is not installed: pip install scikit-learn (no DPO comparison)")
        return
    beta = 1.0
    print(f"DPO fit vs scikit-learn at equal accuracy (max|theta - reference| <= {atol:g}; "
          "scikit-learn's tol tightened from 1e-6 by 100x until it gets there)")
    print(f"{'n':>8} {'d':>3} {'fit_dpo s':>10} {'lbfgs s':>9} {'ratio':>6} "
          f"{'newton-chol s':>13} {'ratio':>6}")
    for n in sizes:
        for d in dims:
            data = make_data(n, d, seed)
            ref = fit_dpo(data, beta=beta, gtol=1e-13).theta
            t_ours, fit, _ = _best(lambda data=data: fit_dpo(data, beta=beta), repeat)
            ours_ok = np.abs(fit.theta - ref).max() <= atol
            out = f"{n:>8} {d:>3} {t_ours:>10.4f}"
            for solver in ("lbfgs", "newton-cholesky"):
                tol, t_peer, ok = 1e-6, np.nan, False
                while tol >= 1e-16 and not ok:
                    t_peer, th, err = _best(lambda data=data, solver=solver, tol=tol:
                                            sklearn_fit(data, beta, solver, tol), repeat)
                    ok = err is None and np.abs(th - ref).max() <= atol
                    tol /= 100
                out += (f" {t_peer:>9.4f} {t_peer / t_ours:>6.2f}" if ok
                        else f" {'not reached':>16}")
                table.append(("DPO", n, d, t_ours, f"sklearn {solver}", t_peer if ok else None,
                              f"yes (tol {tol * 100:.0e})" if ok else "not reached"))
            print(out + ("" if ours_ok else "  (fit_dpo's default missed --atol)"))
    print("ratio = peer time / fit_dpo time (> 1: fit_dpo is faster)")


def _peer_line(problem, data, radius, ours, t_ours, lib, adapter, repeat, slow):
    """One peer on one problem: (cells, accuracy note, peer seconds or None)."""
    t_peer, fit, err = _best(partial(adapter, lib, data, radius), repeat, slow)
    if err is not None:
        msg = f"failed after {t_peer:.1f} s ({type(err).__name__}: {str(err)[:50]})"
        return f"{'-':>8} {'-':>7}", msg, None
    obj = ours.objective
    diff = (fit.objective - obj) / abs(obj)
    # the exact robust value at the peer's theta: >= ours where ours is the optimum
    gap = (problem.value(fit.theta, data, radius) - obj) / abs(obj)
    dth = float(np.abs(fit.theta - ours.theta).max())
    missed = [what for what, ok in (("theta", dth <= rp.THETA_ATOL),
                                    ("objective", abs(diff) <= rp.OBJ_RTOL)) if not ok]
    note = f"no ({', '.join(missed)})" if missed else "yes"
    if abs(diff) > rp.MATCH_RTOL:
        note += f"; MISMATCH: objectives differ by more than {rp.MATCH_RTOL:g}"
    if gap < -rp.REF_RTOL:
        note += "; the peer's theta is better than ours: the reference is not optimal"
    cells = (f"{t_peer:>8.4f} {t_peer / t_ours:>7.1f} {diff:>+9.1e} "
             f"{gap:>+9.1e} {dth:>8.1e}")
    return cells, note, t_peer


def robust_rows(sizes, dims, repeat, seed, caps, slow, table):
    libs = rp.load_peers()
    print()
    for name, lib in libs.items():
        if isinstance(lib, Exception):
            print(f"{name} is not importable here ({type(lib).__name__}: {str(lib)[:80]}); "
                  f"to compare with it: {rp.INSTALL_HINT}")
    print(f"Exact robust DPO vs the peers (radius {rp.RADIUS_FRACTION} x collapse "
          f"radius; equal accuracy = max|dtheta| <= {rp.THETA_ATOL:g} and relative "
          f"objective difference <= {rp.OBJ_RTOL:g})")
    print(f"{'problem':<7} {'n':>6} {'d':>3} {'ours s':>8} {'status':<9} {'peer':<7} "
          f"{'peer s':>8} {'ratio':>7} {'obj diff':>9} {'V(peer)':>9} {'max|dth|':>8}  "
          "equal accuracy")
    for n in sizes:
        for d in dims:
            data = make_data(n, d, seed)
            for problem in rp.PROBLEMS:
                radius = problem.radius(data)
                t_ours, ours, err = _best(partial(problem.solve, data, radius), repeat)
                head = f"{problem.name:<7} {n:>6} {d:>3}"
                if err is not None:
                    print(f"{head} {t_ours:>8.4f} failed: {type(err).__name__}: {err}")
                    continue
                head += f" {t_ours:>8.4f} {ours.status:<9}"
                lines = []
                for peer, adapter in problem.peers.items():
                    lib = libs[peer]
                    if isinstance(lib, Exception):
                        lines.append((peer, f"{'-':>8} {'-':>7}", "not importable", None))
                    elif n > caps[peer]:
                        lines.append((peer, f"{'-':>8} {'-':>7}",
                                      f"skipped (n > cap {caps[peer]:g})", None))
                    else:
                        lines.append((peer, *_peer_line(problem, data, radius, ours, t_ours,
                                                        lib, adapter, repeat, slow)))
                if not lines:
                    lines.append(("-", f"{'-':>8} {'-':>7}", problem.no_peer, None))
                elif all(t_peer is None and not note.startswith("failed")
                         for *_, note, t_peer in lines):     # one line for peers not run
                    lines = [("-", f"{'-':>8} {'-':>7}",
                              "; ".join(f"{peer}: {note}" for peer, _, note, _ in lines), None)]
                for peer, cells, note, t_peer in lines:
                    print(f"{head} {peer:<7} {cells:<45}  {note}", flush=True)
                    table.append((problem.name, n, d, t_ours, peer, t_peer, note))
    print("ratio = peer time / our time (> 1: loglinear is faster); obj diff = (peer's "
          "reported objective - ours) / ours; V(peer) = (exact robust value at the peer's "
          "theta - ours) / ours")


def _size(n: int) -> str:
    """1000 -> 1e3; other n as they are."""
    e = len(str(n)) - 1
    return f"1e{e}" if n == 10**e and e >= 3 else str(n)


def markdown(table) -> str:
    """The records as one markdown table (README's benchmark section)."""
    lines = ["| problem | n | d | loglinear (s) | peer | peer (s) | peer / loglinear | "
             "peer at equal accuracy |", "|---|---:|---:|---:|---|---:|---:|---|"]
    for problem, n, d, t_ours, peer, t_peer, note in table:
        peer_s = "-" if t_peer is None else f"{t_peer:.4f}"
        ratio = "-" if t_peer is None else f"{t_peer / t_ours:.1f}x"
        lines.append(f"| {problem} | {_size(n)} | {d} | {t_ours:.4f} | {peer} | {peer_s} | "
                     f"{ratio} | {note} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--sizes", default="1e3,1e4,1e5", help="n, comma-separated")
    ap.add_argument("--dims", default="4,16", help="d of the robust problems")
    ap.add_argument("--dpo-dims", default="4,16,64", help="d of the DPO comparison")
    ap.add_argument("--atol", type=float, default=2e-9, help="DPO equal-accuracy target")
    ap.add_argument("--dro-max-n", type=float, default=1e4, help="largest n given to dro")
    ap.add_argument("--skwdro-max-n", type=float, default=1e3,
                    help="largest n given to skwdro (its model is built in a python loop)")
    ap.add_argument("--slow", type=float, default=SLOW_S,
                    help="a peer run longer than this (s) is not repeated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true", help="end with a markdown table")
    args = ap.parse_args(argv)
    sizes = _ints(args.sizes)
    table: list[tuple] = []
    dpo_rows(sizes, _ints(args.dpo_dims), args.repeat, args.atol, args.seed, table)
    robust_rows(sizes, _ints(args.dims), args.repeat, args.seed,
                {"dro": args.dro_max_n, "skwdro": args.skwdro_max_n}, args.slow, table)
    if args.markdown:
        print("\n" + markdown(table))


if __name__ == "__main__":
    main()
