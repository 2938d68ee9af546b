"""``loglinear solve``: solve an exact robust DPO problem and print the result, its
certificate and its worst case.

The data come from a file (``--data FILE``: CSV, TSV, parquet, ``.npz`` or JSON lines, read
by :func:`loglinear.io.read_preferences`; ``--features/--label/--weight/--offset`` name the
columns) or from a random environment (``--env random``): its exact population by default,
or ``--n`` sampled pairs. Environment data are centered (zero offsets, parameter
w = theta - theta_ref) unless ``--offsets`` is given.

The worst case is summarised: for KL, the pairs the adversary up-weights most (largest
p_i / q_i); for a Wasserstein ball, the transport (mass moved, mean and largest shift,
labels flipped) and the atoms that use most of the budget. The budget of a W_p ball is
eps^p (for W2 the squared radius), printed apart from the radius eps.

``--json`` prints the same as JSON; JSON has no infinity, so non-finite numbers are
written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
"""

from __future__ import annotations

import json
import math

import numpy as np

NAME = "solve"
HELP = ("Solve KL / W1 / W2 robust DPO exactly on a data file (CSV, TSV, parquet, .npz, JSON "
        "lines) or a random environment; print the certificate and the worst case.")

# flags that map to a ball's solve options of the same name; passed only when given, and
# refused by a ball that does not take them
OPTION_FLAGS = ("kappa", "bound")
DATA_COLUMN_FLAGS = ("features", "label", "weight", "offset")
MOVED_TOL = 1e-12  # a transported atom closer than this to its source has not moved


def add_arguments(p) -> None:
    from loglinear.io import add_data_arguments
    from loglinear.robust import BALLS

    src = p.add_mutually_exclusive_group(required=True)
    add_data_arguments(p, group=src)
    src.add_argument("--env", choices=["random"], help="a random log-linear environment")
    p.add_argument("--ball", choices=sorted(BALLS), default="kl", help="ambiguity set")
    p.add_argument("--radius", type=float, default=None,
                   help="ball radius: rho for KL, epsilon for W1/W2 (default: --fraction of "
                        "the collapse radius)")
    p.add_argument("--fraction", type=float, default=0.5,
                   help="radius as a fraction of the collapse radius when --radius is absent")
    p.add_argument("--kappa", type=float, default=None,
                   help="label-flip cost, for the balls that take it (default: inf, labels "
                        "never flip)")
    p.add_argument("--beta", type=float, default=None,
                   help="DPO temperature (default: the environment's, or 1.0 for files)")
    p.add_argument("--bound", type=float, default=None,
                   help="solve on the ball ||theta|| <= B (needed on separable data)")
    p.add_argument("--method", choices=["auto", "newton", "cvxpy"], default="auto",
                   help="solver")
    p.add_argument("--compare", action="store_true",
                   help="also solve with cvxpy and compare (kl and w1 have a cvxpy form)")
    p.add_argument("--top", type=int, default=5,
                   help="worst-case pairs (KL) or atoms (Wasserstein) to list")
    env = p.add_argument_group("random environment (--env random)")
    env.add_argument("--n", type=int, default=None,
                     help="sample n pairs (default: the exact population)")
    env.add_argument("--states", type=int, default=6, help="number of states S")
    env.add_argument("--actions", type=int, default=5, help="actions per state A")
    env.add_argument("--dim", type=int, default=4, help="feature dimension d")
    env.add_argument("--seed", type=int, default=0, help="seed of the environment and sample")
    env.add_argument("--offsets", action="store_true",
                     help="keep the reference offsets (theta parameterisation)")
    p.add_argument("--intervals", type=float, nargs="?", const=0.95, default=None,
                   metavar="LEVEL",
                   help="also print Wald intervals for theta and the objective from the "
                        "plug-in sandwich covariance (loglinear.inference; the sample's own "
                        "target theta(radius)); LEVEL defaults to 0.95")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (non-finite numbers as \"inf\", \"nan\")")


def _data(args):
    """(data, beta, description): the dataset, its temperature and where it came from."""
    from loglinear import LogLinearEnv
    from loglinear.io import data_from_args

    if args.data:
        data = data_from_args(args)
        beta = 1.0 if args.beta is None else args.beta
        return data, beta, {"source": "file", "path": args.data, "n": data.n}
    given = [f"--{k}" for k in DATA_COLUMN_FLAGS if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} name columns of a --data file; they do not "
                         "apply to --env")
    env_rng, data_rng = (np.random.default_rng(s)
                         for s in np.random.SeedSequence(args.seed).spawn(2))
    beta = 1.0 if args.beta is None else args.beta
    env = LogLinearEnv.random(env_rng, n_states=args.states, n_actions=args.actions,
                              dim=args.dim, beta=beta)
    centered = not args.offsets
    if args.n is None:
        data = env.population(exclude_ties=True, centered=centered)
        return data, env.beta, {"source": "population", "n": None}
    data = env.sample(args.n, data_rng, centered=centered)
    return data, env.beta, {"source": "sample", "n": args.n}


def _options(args, ball) -> dict:
    """The solve options given on the command line; one a ball does not take is an error."""
    given = {name: getattr(args, name) for name in OPTION_FLAGS
             if getattr(args, name) is not None}
    refused = sorted(set(given) - ball.options)
    if refused:
        flags = ", ".join(f"--{name}" for name in refused)
        raise ValueError(f"--ball {ball.name} does not take {flags} (it takes: "
                         f"{', '.join(f'--{o}' for o in sorted(ball.options))})")
    if args.method not in ball.methods:
        raise ValueError(f"--ball {ball.name} does not take --method {args.method} "
                         f"(methods: {', '.join(sorted(ball.methods))})")
    if args.compare and "cvxpy" not in ball.methods:
        from loglinear.robust import BALLS

        have = sorted(n for n, b in BALLS.items() if "cvxpy" in b.methods)
        raise ValueError(f"--compare solves again with cvxpy, and --ball {ball.name} has no "
                         f"cvxpy form (balls with one: {', '.join(have)})")
    if args.top < 0:
        raise ValueError(f"--top must be >= 0, got {args.top}")
    return given


def _solve(ball, data, **kwargs):
    from loglinear import SeparableDataError

    try:
        return ball.solve(data, **kwargs)
    except SeparableDataError as exc:  # the library's advice, in the CLI's spelling
        raise ValueError(str(exc).replace("bound=B", "--bound B")) from None


def worst_case_summary(res, data, top: int) -> dict:
    """The worst case of ``res`` in numbers: for KL the pairs with the largest
    p_i / q_i, for Wasserstein the transport and the atoms that spend most budget."""
    from loglinear.robust._base import pair_loss

    if res.kind == "kl":
        p, q = np.asarray(res.worst_case), data.weight
        ratio = np.divide(p, q, out=np.zeros_like(p), where=q > 0)
        loss = pair_loss(res.theta, data, beta=res.beta)
        order = np.argsort(-ratio, kind="stable")[:top]
        pos = p > 0
        return {
            "kind": "kl", "divergence": float(np.sum(p[pos] * np.log(p[pos] / q[pos]))),
            "budget": res.radius, "effective_pairs": float(1.0 / np.sum(p**2)),
            "max_ratio": float(ratio.max()),
            "top": [{"index": int(i), "p": float(p[i]), "q": float(q[i]),
                     "ratio": float(ratio[i]), "loss": float(loss[i]), "y": int(data.y[i])}
                    for i in order]}
    wc = res.worst_case
    shift = wc.x - data.x[wc.source]
    dist = np.linalg.norm(shift, axis=1)
    flipped = wc.y != data.y[wc.source]
    moved = (dist > MOVED_TOL) | flipped
    flip_cost = res.kappa if np.isfinite(res.kappa) else 0.0  # inf: nothing flips
    spend = wc.weight * (dist + np.where(flipped, flip_cost, 0.0))**res.p
    order = np.argsort(-spend, kind="stable")[:top]
    return {
        "kind": "wasserstein", "p": res.p, "cost": float(wc.cost),
        "budget": res.radius**res.p, "shortfall": float(wc.shortfall),
        "mass_moved": float(wc.weight[moved].sum()), "mass_flipped": float(
            wc.weight[flipped].sum()), "mean_shift": float(wc.weight @ dist),
        "max_shift": float(dist[wc.weight > 0].max(initial=0.0)),
        "mean_shift_vector": (wc.weight @ shift).tolist(),
        "top": [{"source": int(wc.source[k]), "mass": float(wc.weight[k]),
                 "shift": float(dist[k]), "flipped": bool(flipped[k]),
                 "cost": float(spend[k])} for k in order if spend[k] > 0]}


def jsonable(obj):
    """``obj`` as strict JSON values: non-finite floats as "inf", "-inf" or "nan"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else
                                           ("inf" if v > 0 else "-inf"))
    return obj


def run(args) -> int:
    from loglinear import fit_dpo
    from loglinear.robust import BALLS

    ball = BALLS.get(args.ball)
    options = _options(args, ball)
    data, beta, source = _data(args)
    collapse = ball.collapse_radius(data, beta=beta) if not np.any(data.offset) else None
    if args.radius is not None:
        radius = args.radius
    elif collapse is None:
        raise ValueError("--radius is required: the collapse radius (the default's "
                         "reference) is defined for zero offsets only, and these data have "
                         "nonzero offsets")
    elif not (np.isfinite(collapse) and collapse > 0):
        raise ValueError(f"--radius is required: the collapse radius of these data is "
                         f"{collapse}, so --fraction gives no radius")
    else:
        if not 0 < args.fraction:
            raise ValueError(f"--fraction must be positive, got {args.fraction}")
        radius = args.fraction * collapse
    res = _solve(ball, data, beta=beta, radius=radius, method=args.method, **options)
    check = res.verify()
    kappa = options.get("kappa", float("inf"))
    budget = radius ** (res.p if res.kind == "wasserstein" else 1)
    out = {
        "ball": ball.name, **source, "atoms": data.n, "d": data.d, "beta": beta,
        "radius": radius, "budget": budget, "kappa": kappa, "collapse_radius": collapse,
        "theta": res.theta.tolist(), "objective": res.objective, "dual": res.dual,
        "status": res.status, "certificate": res.certificate, "solver": res.solver,
        "seconds": res.seconds,
        "verify": {"ok": check.ok, "primal_value": check.primal_value,
                   "divergence": check.divergence, "message": check.message},
        "worst_case": worst_case_summary(res, data, args.top),
    }
    try:
        out["nominal_objective"] = fit_dpo(data, beta=beta, bound=args.bound).objective
    except ValueError:  # separable data without --bound: no nominal minimum
        out["nominal_objective"] = None
    if args.compare:
        ref = _solve(ball, data, beta=beta, radius=radius, method="cvxpy", **options)
        out["cvxpy"] = {"objective": ref.objective, "seconds": ref.seconds,
                        "max_abs_theta_diff": float(np.abs(ref.theta - res.theta).max())}
    if args.intervals is not None:
        out["intervals"] = _intervals(res, data, beta, args.intervals)
    if args.json:
        print(json.dumps(jsonable(out), indent=2, allow_nan=False))
    else:
        _print_text(out, ball, res, check)
        if "intervals" in out:
            _print_intervals(out["intervals"])
    return 0 if check.ok else 1


def _intervals(res, data, beta, level) -> dict:
    """Per-coordinate and objective intervals, or the reason there are none (collapse,
    a kink, the ball's boundary: no normal limit there, docs/theory.md §5.8)."""
    from loglinear import inference

    if not 0 < level < 1:
        raise ValueError(f"--intervals LEVEL must lie in (0, 1), got {level}")
    try:
        iv = inference.intervals(res, data, level, beta=beta)
        ov = inference.objective_interval(res, data, level, beta=beta)
    except ValueError as err:
        return {"level": level, "available": False, "reason": str(err)}
    return {"level": level, "available": True, "se": iv.se.tolist(), "lo": iv.lo.tolist(),
            "hi": iv.hi.tolist(), "objective": [ov.lo, ov.hi],
            "n": float(inference.sample_size(data))}


def _print_intervals(iv: dict) -> None:
    pct = f"{100 * iv['level']:g}%"
    if not iv["available"]:
        print(f"intervals ({pct}): none: {iv['reason']}")
        return
    print(f"{pct} intervals (plug-in sandwich, n = {iv['n']:g}; target: this radius's "
          "population optimum):")
    for k, (lo, hi, se) in enumerate(zip(iv["lo"], iv["hi"], iv["se"])):
        print(f"  theta[{k}]  [{lo:.6g}, {hi:.6g}]  (se {se:.3g})")
    print(f"  objective [{iv['objective'][0]:.6g}, {iv['objective'][1]:.6g}]")


def _print_text(out: dict, ball, res, check) -> None:
    radius, collapse, budget = out["radius"], out["collapse_radius"], out["budget"]
    name = "rho" if res.kind == "kl" else "eps"
    print(f"# robust DPO: {ball.name.upper()} ball, radius {name} = {radius:.6g}"
          + (f" ({radius / collapse:.3g} of the collapse radius {collapse:.6g})"
             if collapse else ""))
    if res.kind == "wasserstein":
        print(f"transport budget eps^{res.p} = {budget:.6g}")
    pairs = {"file": f"{out['n']} pairs from {out.get('path')}",
             "sample": f"{out['n']} sampled pairs",
             "population": f"the exact population ({out['atoms']} atoms)"}[out["source"]]
    print(f"data: {pairs}, d={out['d']}, beta={out['beta']}"
          + (f", kappa={out['kappa']}" if "kappa" in ball.options else ""))
    print(f"theta     = {np.array2string(res.theta, precision=6)}")
    print(f"objective = {res.objective:.12g}   (nominal DPO {out['nominal_objective']})")
    print(f"dual      = {res.dual:.6g}")
    print(f"status    = {res.status} via {res.solver} in {res.seconds:.3f} s")
    print(f"certificate (KKT residual) = {res.certificate:.3e}")
    what = "KL(p || q)" if res.kind == "kl" else "transport cost"
    limit = f"rho = {budget:.6g}" if res.kind == "kl" else f"budget eps^{res.p} = {budget:.6g}"
    print(f"verify: {check.message} (primal {check.primal_value:.12g}, {what} "
          f"{check.divergence:.6g} <= {limit})")
    _print_worst_case(out["worst_case"])
    if "cvxpy" in out:
        c = out["cvxpy"]
        print(f"cvxpy: objective {c['objective']:.12g} in {c['seconds']:.3f} s, "
              f"max |dtheta| {c['max_abs_theta_diff']:.2e}")


def _print_worst_case(wc: dict) -> None:
    if wc["kind"] == "kl":
        print(f"worst case: reweights the pairs (effective number of pairs "
              f"{wc['effective_pairs']:.4g}, largest p_i/q_i {wc['max_ratio']:.4g})")
        if wc["top"]:
            print("  pairs it up-weights most:  index  p_i  q_i  p_i/q_i  loss  y")
        for r in wc["top"]:
            print(f"    {r['index']:>6d}  {r['p']:.4g}  {r['q']:.4g}  {r['ratio']:.4g}  "
                  f"{r['loss']:.4g}  {r['y']}")
        return
    print(f"worst case: moves mass {wc['mass_moved']:.4g} (flips {wc['mass_flipped']:.4g}); "
          f"mean shift {wc['mean_shift']:.4g}, largest {wc['max_shift']:.4g}; cost "
          f"{wc['cost']:.6g} of the budget {wc['budget']:.6g}"
          + (f"; shortfall {wc['shortfall']:.3g}" if wc["shortfall"] else ""))
    vector = np.array2string(np.asarray(wc["mean_shift_vector"]), precision=4)
    print(f"  mean shift vector = {vector}")
    if wc["top"]:
        print(f"  atoms spending most budget:  source  mass  ||dx||  flipped  "
              f"mass*cost^{wc['p']}")
    for r in wc["top"]:
        print(f"    {r['source']:>6d}  {r['mass']:.4g}  {r['shift']:.4g}  "
              f"{'yes' if r['flipped'] else 'no'}  {r['cost']:.4g}")
