r"""The estimation-rate and coverage study: config -> tidy records on disk.

For every environment (setting), sample size n, replicate seed, estimator and radius
schedule, draw n preference pairs, fit the estimator and record ||w_hat - w_target||_2,
where w = theta - theta_ref (centered parameterisation, o = 0, docs/theory.md §2.3) and the
target is exact:

* DPO: w* = omega / beta (the population DPO optimum, in closed form);
* robust estimators: their optimum on the enumerated population (weights equal to the
  exact atom probabilities) at the same hyperparameter value.

**Count compression.** A sample of n i.i.d. pairs from a finite environment is, for any
weighted M-estimator, equivalent to the vector of multinomial counts over the population
atoms (s, a1, a2, y): the empirical measure is sum_k (c_k / n) delta_{atom_k}.
``env.sample_counts`` draws the counts directly, so a fit at n = 10^6 touches at most
S A^2 2 atoms and costs the same as at n = 10^3.

**Determinism.** The data of row (setting, n, seed) come from
``SeedSequence([config.seed, crc32(setting), n, seed])``; they do not depend on the
execution order, the number of workers or the estimator (all estimators of a row see the
same sample: common random numbers). Only the ``seconds`` column varies between runs.

**Resume.** Rows go to ``records.csv`` one line at a time (see
:mod:`loglinear.experiments.records`); a rerun skips finished keys. Targets go to
``targets.csv`` in the same way.
"""

from __future__ import annotations

import json
import time
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...env import LogLinearEnv
from ...estimation import coverage
from ..config import to_jsonable, write_resolved
from ..estimators import get_estimator
from ..records import RecordStore, read_records
from .config import NO_SCHEDULE, EnvSpec, RatesConfig, Schedule

__all__ = ["NO_SCHEDULE", "ROW_COLUMNS", "ROW_KEY", "TARGET_COLUMNS", "TARGET_KEY",
           "EnvSpec", "RatesConfig", "Schedule", "environment", "hyperparameters", "main",
           "run"]

ROW_KEY = ["setting", "estimator", "schedule", "n", "seed"]
ROW_COLUMNS = ROW_KEY + [
    "param", "error", "error_star", "error_sigma", "norm_hat", "at_zero", "atoms",
    "lambda_min_sample", "concentration", "spectrum_min", "lambda_min", "tr_hinv",
    "tr_sandwich", "status", "seconds",
]
TARGET_KEY = ["setting", "estimator", "param"]
TARGET_COLUMNS = TARGET_KEY + [
    "theta", "norm", "error_star", "tr_hinv", "tr_sandwich", "dual", "collapse_radius",
    "local_status", "status", "seconds",
]
ZERO_TOL = 1e-7  # ||w_hat|| below this counts as collapsed to the kink w = 0


# ----------------------------------------------------------------- the plan
def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


@lru_cache(maxsize=64)
def _environment(spec: EnvSpec, seed: int):
    """The environment, its centered population, w* and lambda_min (cached per process)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable(spec.name),
                                                        spec.env_seed]))
    env = LogLinearEnv.random(
        rng, n_states=spec.n_states, n_actions=spec.n_actions, dim=spec.dim, beta=spec.beta,
        concentration=spec.concentration, spectrum=spec.spectrum,
        reward_scale=spec.reward_scale, ref_scale=spec.ref_scale, state_dist=spec.state_dist)
    pop = env.population(centered=True)
    w_star = env.theta_star() - env.theta_ref
    return env, pop, w_star, coverage(pop).lambda_min


def environment(config: RatesConfig, setting: str):
    """(env, centered population, w*, lambda_min) of a named setting."""
    spec = {s.name: s for s in config.settings}[setting]
    return _environment(spec, config.seed)


def _param_key(value) -> str:
    return "" if value is None else repr(float(value))


def hyperparameters(config: RatesConfig, setting: str, est_name: str, schedule: Schedule,
                    collapse_radius: float | None = None) -> dict[int, float]:
    """n -> hyperparameter of an estimator under a schedule."""
    est = get_estimator(est_name)
    base = (schedule.collapse_fraction * collapse_radius if schedule.uses_collapse(est)
            else schedule.scale[est_name])
    return {n: est.hyperparameter(base=base, exponent=schedule.exponent, n=n,
                                  reference_n=schedule.reference_n) for n in config.n}


def _combos(config: RatesConfig):
    """(estimator, schedule or None) pairs of the study."""
    out = []
    for name in config.estimators:
        est = get_estimator(name)
        if est.param is None:
            out.append((name, None))
        else:
            out.extend((name, s) for s in config.schedules if s.applies(est))
    return out


# -------------------------------------------------------------------- targets
def _target_row(config: RatesConfig, setting: str, est_name: str, param) -> dict:
    """The exact population target of one estimator at one hyperparameter value."""
    env, pop, w_star, _ = environment(config, setting)
    est = get_estimator(est_name)
    beta = env.beta
    t0 = time.perf_counter()
    row = dict(setting=setting, estimator=est_name, param=_param_key(param), dual=np.nan,
               collapse_radius=np.nan, tr_hinv=np.nan, tr_sandwich=np.nan, local_status="")
    try:
        w = est.target(env, pop, beta=beta, param=param, bound=config.bound)
        row.update(theta=json.dumps([float(v) for v in w]), norm=float(np.linalg.norm(w)),
                   error_star=float(np.linalg.norm(w - w_star)), status="ok")
    except Exception as exc:  # recorded, never silent: the report lists failures
        row.update(theta="", norm=np.nan, error_star=np.nan,
                   status=f"failed: {type(exc).__name__}: {str(exc)[:200]}",
                   seconds=time.perf_counter() - t0)
        return row
    row["dual"] = est.population_dual(pop, w, beta=beta, param=param)
    try:
        la = est.local(pop, w, beta=beta, param=param)
        row.update(tr_hinv=la.tr_hinv, tr_sandwich=la.tr_sandwich, local_status="ok")
    except (ValueError, np.linalg.LinAlgError) as exc:
        row["local_status"] = f"none: {str(exc)[:120]}"
    row["seconds"] = time.perf_counter() - t0
    return row


def _collapse_row(config, setting, est_name) -> dict:
    env, pop, _, _ = environment(config, setting)
    t0 = time.perf_counter()
    try:
        r = get_estimator(est_name).collapse(pop, beta=env.beta)
        status = "ok"
    except Exception as exc:
        r, status = np.nan, f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    return dict(setting=setting, estimator=est_name, param="collapse", theta="", norm=np.nan,
                error_star=np.nan, tr_hinv=np.nan, tr_sandwich=np.nan, dual=np.nan,
                collapse_radius=r, local_status="", status=status,
                seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------ rows
def _unit_rows(config: RatesConfig, setting: str, n: int, seed: int, jobs: list) -> list[dict]:
    """Fit every pending (estimator, schedule, param, target) job on one sample."""
    env, pop, w_star, lam_min = environment(config, setting)
    spec = {s.name: s for s in config.settings}[setting]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _stable(setting), n,
                                                        seed]))
    data = env.sample_counts(n, rng, centered=True)
    cov = coverage(data)
    rows = []
    for est_name, sched_name, param, target, tr_hinv, tr_sand in jobs:
        est = get_estimator(est_name)
        t0 = time.perf_counter()
        row = dict(setting=setting, estimator=est_name, schedule=sched_name, n=n, seed=seed,
                   param=np.nan if param is None else float(param), atoms=data.n,
                   lambda_min_sample=cov.lambda_min, concentration=spec.concentration,
                   spectrum_min=min(spec.spectrum) if spec.spectrum else 1.0,
                   lambda_min=lam_min, tr_hinv=tr_hinv, tr_sandwich=tr_sand)
        try:
            w = est.fit(data, beta=env.beta, param=param, bound=config.bound)
            diff = w - target
            row.update(error=float(np.linalg.norm(diff)),
                       error_star=float(np.linalg.norm(w - w_star)),
                       error_sigma=float(np.sqrt(max(diff @ cov.sigma @ diff, 0.0))),
                       norm_hat=float(np.linalg.norm(w)),
                       at_zero=bool(np.linalg.norm(w) < ZERO_TOL), status="ok")
        except Exception as exc:  # recorded with its reason; error left NaN on purpose
            row.update(error=np.nan, error_star=np.nan, error_sigma=np.nan, norm_hat=np.nan,
                       at_zero=False, status=f"failed: {type(exc).__name__}: {str(exc)[:200]}")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def _run_chunk(config: RatesConfig, units: list) -> list[dict]:
    out = []
    for setting, n, seed, jobs in units:
        out.extend(_unit_rows(config, setting, n, seed, jobs))
    return out


def _target_chunk(config: RatesConfig, items: list) -> list[dict]:
    out = []
    for kind, setting, est_name, param in items:
        out.append(_collapse_row(config, setting, est_name) if kind == "collapse"
                   else _target_row(config, setting, est_name, param))
    return out


# -------------------------------------------------------------------- execution
def _execute(func, config, chunks, *, jobs, scheduler, desc, total, sink, progress):
    """Run ``func(config, chunk)`` over chunks locally (joblib) or on Dask, feeding each
    finished chunk's rows to ``sink`` as soon as it arrives."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not progress, unit="row")
    try:
        if scheduler:
            from dask.distributed import Client, as_completed

            client = scheduler if not isinstance(scheduler, str) else Client(scheduler)
            try:
                futs = client.map(func, [config] * len(chunks), chunks, pure=False)
                for fut in as_completed(futs):
                    rows = fut.result()
                    sink(rows)
                    bar.update(len(rows))
            finally:
                if isinstance(scheduler, str):
                    client.close()
        elif jobs == 1:
            for chunk in chunks:
                rows = func(config, chunk)
                sink(rows)
                bar.update(len(rows))
        else:
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=jobs, return_as="generator_unordered")
            for rows in par(delayed(func)(config, c) for c in chunks):
                sink(rows)
                bar.update(len(rows))
    finally:
        bar.close()


MAX_CHUNK = 8  # units per task: small enough that finished rows reach disk promptly


def _chunks(items: list, parts: int) -> list[list]:
    if not items:
        return []
    size = max(1, min(MAX_CHUNK, int(np.ceil(len(items) / parts))))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _check_resume(config: RatesConfig, out: Path) -> None:
    """Refuse to mix records of a different study design in one directory."""
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = to_jsonable(config)
    fixed = ("seed", "settings", "bound")
    diff = [k for k in fixed if old.get(k) != new.get(k)]
    old_s = {s["name"]: s for s in old.get("schedules", [])}
    diff += [f"schedule {s['name']}" for s in new["schedules"]
             if s["name"] in old_s and old_s[s["name"]] != s]
    if diff:
        raise ValueError(f"{out} holds records of a different design ({', '.join(diff)} "
                         "changed); use a fresh --out directory")


def _failed(row: dict) -> bool:
    return row.get("status", "").startswith("failed")


def _run_targets(config: RatesConfig, out: Path, combos, *, drop, execute) -> dict:
    """Phase 1: collapse radii, then exact population targets (resumable). Returns the plan
    (setting, estimator, schedule) -> {n: hyperparameter}."""
    targets = RecordStore(out / "targets.csv", TARGET_COLUMNS, TARGET_KEY).open(drop=drop)
    try:
        items = sorted({("collapse", st.name, e, None) for e, s in combos
                        if s is not None and s.uses_collapse(get_estimator(e))
                        for st in config.settings})
        items = [i for i in items if not targets.done(dict(setting=i[1], estimator=i[2],
                                                           param="collapse"))]
        execute(_target_chunk, items, desc="collapse radii", sink=targets.write_many)
        tdf = read_records(out / "targets.csv", dtype={"param": str}, keep_default_na=False)
        collapse = {(r.setting, r.estimator): float(r.collapse_radius)
                    for r in tdf[tdf.param == "collapse"].itertuples()}
        plan = {}  # (setting, est, sched) -> {n: param}
        for st in config.settings:
            for e, s in combos:
                if s is None:
                    plan[(st.name, e, NO_SCHEDULE)] = {n: None for n in config.n}
                else:
                    cr = collapse.get((st.name, e))
                    if s.uses_collapse(get_estimator(e)) and not (cr is not None and cr > 0):
                        continue  # no usable collapse radius (recorded in targets.csv)
                    plan[(st.name, e, s.name)] = hyperparameters(config, st.name, e, s, cr)
        items = sorted({("target", k[0], k[1], p) for k, by_n in plan.items()
                        for p in by_n.values()}, key=lambda t: (t[1], t[2], _param_key(t[3])))
        items = [i for i in items if not targets.done(dict(setting=i[1], estimator=i[2],
                                                           param=_param_key(i[3])))]
        execute(_target_chunk, items, desc="targets", sink=targets.write_many)
    finally:
        targets.close()
    return plan


def _run_rows(config: RatesConfig, out: Path, plan: dict, *, drop, max_rows, execute) -> None:
    """Phase 2: one unit = one sample (setting, n, seed) shared by all estimators."""
    tdf = read_records(out / "targets.csv", dtype={"param": str}, keep_default_na=False)
    tdf = tdf[tdf.param != "collapse"]
    tmap = {(r.setting, r.estimator, r.param): r for r in tdf.itertuples()}
    store = RecordStore(out / "records.csv", ROW_COLUMNS, ROW_KEY).open(drop=drop)
    try:
        units, pending = [], 0
        # Seed-major order: an interrupted study holds complete (setting, n) grids for its
        # first seeds rather than complete settings, so a partial analysis stays balanced.
        for seed in range(config.seeds):
            for st in config.settings:
                for n in config.n:
                    jobs_here = []
                    for (sname, e, sched), by_n in plan.items():
                        if sname != st.name or store.done(dict(setting=sname, estimator=e,
                                                               schedule=sched, n=n, seed=seed)):
                            continue
                        t = tmap.get((sname, e, _param_key(by_n[n])))
                        if t is None or t.status != "ok":
                            continue  # the target failed: reported from targets.csv
                        jobs_here.append((e, sched, by_n[n], np.array(json.loads(t.theta)),
                                          float(t.tr_hinv), float(t.tr_sandwich)))
                    if jobs_here and (max_rows is None or pending < max_rows):
                        units.append((st.name, n, seed, jobs_here))
                        pending += len(jobs_here)
        execute(_run_chunk, units, desc="rows", sink=store.write_many, total=pending,
                always_show=True)
    finally:
        store.close()


def main(config: RatesConfig, out, *, jobs: int = 1, scheduler=None, progress: bool = True,
         max_rows: int | None = None, retry_failed: bool = False) -> Path:
    """Run (or resume) the study; returns the records directory.

    Args:
        config: the study (read a TOML file with
            ``experiments.config.load_config(RatesConfig, path)``).
        out: output directory (``config.json``, ``targets.csv``, ``records.csv``).
        jobs: local worker processes (joblib); ignored when ``scheduler`` is given.
        scheduler: a Dask scheduler address ``tcp://HOST:PORT`` (or a ``Client``).
        progress: show tqdm bars.
        max_rows: stop after scheduling this many pending rows (for tests and benchmarks).
        retry_failed: compute again the targets and rows whose status records a failure
            (they are removed from the records first), e.g. after a solver fix.
    """
    if not isinstance(config, RatesConfig):
        raise TypeError(f"main takes a RatesConfig, got {type(config).__name__}; read a TOML "
                        "file with loglinear.experiments.config.load_config(RatesConfig, path)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(config, out)
    write_resolved(config, out / "config.json")
    parts = max(1, jobs) * 4 if not scheduler else 64

    def execute(func, items, *, desc, sink, total=None, always_show=False):
        _execute(func, config, _chunks(items, parts), jobs=jobs, scheduler=scheduler,
                 desc=desc, total=len(items) if total is None else total, sink=sink,
                 progress=progress and (always_show or bool(items)))

    drop = _failed if retry_failed else None
    plan = _run_targets(config, out, _combos(config), drop=drop, execute=execute)
    _run_rows(config, out, plan, drop=drop, max_rows=max_rows, execute=execute)
    return out


def run(config: RatesConfig, out, *, jobs: int = 1, scheduler=None, progress: bool = True,
        max_rows: int | None = None, retry_failed: bool = False) -> Path:
    """Deprecated: use :func:`main`, which returns the records directory; this returns
    ``main(...) / "records.csv"``."""
    warnings.warn("loglinear.experiments.rates.run.run is deprecated; use main(config, out, "
                  "...), which returns the records directory", DeprecationWarning, stacklevel=2)
    return main(config, out, jobs=jobs, scheduler=scheduler, progress=progress,
                max_rows=max_rows, retry_failed=retry_failed) / "records.csv"
