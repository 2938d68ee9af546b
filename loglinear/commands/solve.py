"""``loglinear solve``: solve an exact robust DPO problem and print the result and certificate.

The data come from a file (``--data PATH``, npz as written by ``PreferenceData.save`` or
parquet) or from a random environment (``--env random``): its exact population by
default, or ``--n`` sampled pairs. Environment data are centered (zero offsets,
parameter w = theta - theta_ref) unless ``--offsets`` is given.
"""

from __future__ import annotations

import json

import numpy as np

NAME = "solve"
HELP = "Solve KL / W1 / W2 robust DPO exactly on a dataset or environment; print the certificate."


# flags that map to a ball's solve options of the same name; passed only when given, and
# refused by a ball that does not take them
OPTION_FLAGS = ("kappa", "bound")


def add_arguments(p) -> None:
    from loglinear.robust import BALLS

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset file (.npz or .parquet)")
    src.add_argument("--env", choices=["random"], help="a random log-linear environment")
    p.add_argument("--ball", choices=sorted(BALLS), default="kl", help="ambiguity set")
    p.add_argument("--radius", type=float, default=None,
                   help="ball radius (rho for KL, epsilon for W); default: --fraction of the "
                        "collapse radius")
    p.add_argument("--fraction", type=float, default=0.5,
                   help="radius as a fraction of the collapse radius when --radius is absent")
    p.add_argument("--kappa", type=float, default=None,
                   help="label-flip cost, for the balls that take it (default inf: labels "
                        "never flip)")
    p.add_argument("--beta", type=float, default=None,
                   help="DPO temperature (default: the environment's, or 1.0 for files)")
    p.add_argument("--bound", type=float, default=None, help="ball ||theta|| <= B")
    p.add_argument("--method", choices=["auto", "newton", "cvxpy"], default="auto")
    p.add_argument("--compare", action="store_true",
                   help="also solve with cvxpy and compare (balls that have a cvxpy form)")
    p.add_argument("--n", type=int, default=None, help="sample n pairs instead of the population")
    p.add_argument("--states", type=int, default=6)
    p.add_argument("--actions", type=int, default=5)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offsets", action="store_true",
                   help="keep the reference offsets (theta parameterisation) for environments")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _data(args):
    from loglinear import LogLinearEnv, PreferenceData

    if args.data:
        return PreferenceData.load(args.data), 1.0 if args.beta is None else args.beta
    env_rng, data_rng = (np.random.default_rng(s)
                         for s in np.random.SeedSequence(args.seed).spawn(2))
    beta = 1.0 if args.beta is None else args.beta
    env = LogLinearEnv.random(env_rng, n_states=args.states, n_actions=args.actions,
                              dim=args.dim, beta=beta)
    centered = not args.offsets
    if args.n is None:
        return env.population(exclude_ties=True, centered=centered), env.beta
    return env.sample(args.n, data_rng, centered=centered), env.beta


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
    return given


def run(args) -> int:
    from loglinear import fit_dpo
    from loglinear.robust import BALLS

    ball = BALLS.get(args.ball)
    options = _options(args, ball)
    data, beta = _data(args)
    collapse = ball.collapse_radius(data, beta=beta) if not np.any(data.offset) else None
    if args.radius is not None:
        radius = args.radius
    elif collapse is not None and np.isfinite(collapse):
        radius = args.fraction * collapse
    else:
        raise SystemExit("--radius is required (no finite collapse radius for these data)")
    res = ball.solve(data, beta=beta, radius=radius, method=args.method, **options)
    check = res.verify()
    kappa = options.get("kappa", float("inf"))
    out = {
        "ball": ball.name, "n": data.n, "d": data.d, "beta": beta, "radius": radius,
        "kappa": kappa, "collapse_radius": collapse, "theta": res.theta.tolist(),
        "objective": res.objective, "dual": res.dual, "status": res.status,
        "certificate": res.certificate, "solver": res.solver, "seconds": res.seconds,
        "verify": {"ok": check.ok, "primal_value": check.primal_value,
                   "divergence": check.divergence, "message": check.message},
    }
    try:
        out["nominal_objective"] = fit_dpo(data, beta=beta, bound=args.bound).objective
    except ValueError:
        out["nominal_objective"] = None
    if args.compare and "cvxpy" in ball.methods:
        ref = ball.solve(data, beta=beta, radius=radius, method="cvxpy", **options)
        out["cvxpy"] = {"objective": ref.objective, "seconds": ref.seconds,
                        "max_abs_theta_diff": float(np.abs(ref.theta - res.theta).max())}
    if args.json:
        print(json.dumps(out, indent=2, default=float))
        return 0 if check.ok else 1
    print(f"# robust DPO: {ball.name.upper()} ball, radius {radius:.6g}"
          + (f" ({radius / collapse:.3g} of the collapse radius {collapse:.6g})"
             if collapse else ""))
    print(f"data: n={data.n}, d={data.d}, beta={beta}"
          + (f", kappa={kappa}" if "kappa" in ball.options else ""))
    print(f"theta     = {np.array2string(res.theta, precision=6)}")
    print(f"objective = {res.objective:.12g}   (nominal DPO {out['nominal_objective']})")
    print(f"dual      = {res.dual:.6g}")
    print(f"status    = {res.status} via {res.solver} in {res.seconds:.3f} s")
    print(f"certificate (KKT residual) = {res.certificate:.3e}")
    # the budget is radius^p (p = 1 for KL)
    print(f"verify: {check.message} (primal {check.primal_value:.12g}, "
          f"divergence {check.divergence:.6g} <= {radius ** res.p:.6g})")
    if "cvxpy" in out:
        c = out["cvxpy"]
        print(f"cvxpy: objective {c['objective']:.12g} in {c['seconds']:.3f} s, "
              f"max |dtheta| {c['max_abs_theta_diff']:.2e}")
    return 0 if check.ok else 1
