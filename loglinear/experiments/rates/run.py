r"""The estimation-rate and coverage study: config -> tidy records on disk.

For every environment (setting), sample size n, replicate seed, estimator and radius
schedule, draw n preference pairs, fit the estimator and record ||w_hat - w_target||_2,
where w = theta - theta_ref (centered parameterisation, o = 0) and the target is exact:

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
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...env import LogLinearEnv
from ...estimation import coverage, kl_dual_variable, local_asymptotics
from ..config import from_mapping, load_toml, to_jsonable, write_resolved
from ..estimators import ESTIMATORS, get_estimator
from ..records import RecordStore, read_records

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
NO_SCHEDULE = "none"


# ---------------------------------------------------------------------- config
@dataclass(frozen=True)
class EnvSpec:
    """One environment ("setting") of the study; see :meth:`LogLinearEnv.random`.

    Attributes:
        name: the ``setting`` column.
        n_states, n_actions, dim, beta, reward_scale, ref_scale, state_dist: as in
            ``LogLinearEnv.random``.
        concentration: sampling-policy concentration (0 = uniform; larger = worse coverage).
        spectrum: per-coordinate feature scales; a small entry makes lambda_min -> 0.
        env_seed: seed of the environment draw (combined with the config seed).
    """

    name: str
    n_states: int = 8
    n_actions: int = 6
    dim: int = 4
    beta: float = 1.0
    concentration: float = 0.0
    spectrum: tuple[float, ...] | None = None
    reward_scale: float = 1.0
    ref_scale: float = 0.0
    state_dist: str = "uniform"
    env_seed: int = 0

    def __post_init__(self):
        if not self.name or "," in self.name:
            raise ValueError(f"setting name must be non-empty without commas, got {self.name!r}")
        if self.spectrum is not None:
            object.__setattr__(self, "spectrum", tuple(float(v) for v in self.spectrum))
            if len(self.spectrum) != self.dim:
                raise ValueError(f"setting {self.name}: spectrum needs {self.dim} entries")
        if self.n_states < 1 or self.n_actions < 2 or self.dim < 1:
            raise ValueError(f"setting {self.name}: need n_states >= 1, n_actions >= 2, dim >= 1")
        if not self.beta > 0:
            raise ValueError(f"setting {self.name}: beta must be > 0")


@dataclass(frozen=True)
class Schedule:
    """A radius schedule: hyperparameter(n) = base * (n / reference_n)^{-exponent}.

    The base is ``collapse_fraction`` times the estimator's population collapse radius
    (the radius at which the robust optimum becomes w = 0) when that is set and the
    estimator has one; otherwise ``scale[estimator]``. ``only`` (if non-empty) restricts the
    schedule to those estimators. A temperature (KLDPO) gets
    base * (n / reference_n)^{+exponent}. Estimators without a hyperparameter (DPO) ignore
    schedules; an estimator with neither a scale nor a collapse radius skips the schedule.
    """

    name: str
    exponent: float = 0.0
    scale: dict = field(default_factory=dict)
    collapse_fraction: float | None = None
    reference_n: float = 1.0
    only: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "only", tuple(self.only))
        if not self.name or self.name == NO_SCHEDULE:
            raise ValueError(f"schedule name must be non-empty and not {NO_SCHEDULE!r}")
        unknown = sorted((set(self.scale) | set(self.only)) - set(ESTIMATORS))
        if unknown:
            raise ValueError(f"schedule {self.name}: unknown estimators {unknown}")
        if any(not float(v) > 0 for v in self.scale.values()):
            raise ValueError(f"schedule {self.name}: scales must be positive")
        if self.collapse_fraction is not None and not self.collapse_fraction > 0:
            raise ValueError(f"schedule {self.name}: collapse_fraction must be > 0")
        if not self.reference_n > 0:
            raise ValueError(f"schedule {self.name}: reference_n must be > 0")
        object.__setattr__(self, "scale", {k: float(v) for k, v in self.scale.items()})

    def uses_collapse(self, est) -> bool:
        return self.collapse_fraction is not None and est.collapse is not None

    def applies(self, est) -> bool:
        if est.param is None or (self.only and est.name not in self.only):
            return False
        return self.uses_collapse(est) or est.name in self.scale


@dataclass(frozen=True)
class RatesConfig:
    """The study: settings x n x seeds x estimators x schedules.

    Attributes:
        name: study name (written into the resolved config).
        seed: master seed; every random draw derives from it and the row key.
        n: sample sizes.
        seeds: replicates per (setting, n); seed ids 0..seeds-1.
        estimators: registry names (see :data:`ESTIMATORS`).
        settings: the environments.
        schedules: radius schedules for the robust estimators.
        bound: B, the radius of Theta = {||theta|| <= B}: DPO is fitted on it and the
            section 5 constants use it.
        delta: confidence level of the theory bounds.
    """

    name: str
    seed: int
    n: tuple[int, ...]
    settings: tuple[EnvSpec, ...]
    estimators: tuple[str, ...] = ("dpo",)
    schedules: tuple[Schedule, ...] = ()
    seeds: int = 50
    bound: float = 5.0
    delta: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        if not self.n or min(self.n) < 2:
            raise ValueError(f"n must be a non-empty list of sizes >= 2, got {self.n}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        for e in self.estimators:
            get_estimator(e)
        names = [s.name for s in self.settings]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"settings need unique names, got {names}")
        snames = [s.name for s in self.schedules]
        if len(set(snames)) != len(snames):
            raise ValueError(f"schedules need unique names, got {snames}")
        if not self.bound > 0 or not 0 < self.delta < 1:
            raise ValueError("bound must be > 0 and delta in (0, 1)")

    @classmethod
    def from_toml(cls, path) -> RatesConfig:
        raw = dict(load_toml(path))
        defaults = raw.pop("env", {})
        settings = tuple(from_mapping(EnvSpec, {**defaults, **s}, where=f"{path} [[setting]]")
                         for s in raw.pop("setting", []))
        schedules = tuple(from_mapping(Schedule, s, where=f"{path} [[schedule]]")
                          for s in raw.pop("schedule", []))
        for k in ("n", "estimators"):
            if k in raw:
                raw[k] = tuple(raw[k])
        return from_mapping(cls, {**raw, "settings": settings, "schedules": schedules},
                            where=str(path))


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
    """(estimator, schedule or None) pairs of the study, available estimators only."""
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
        w = w_star if est_name == "dpo" else est.fit(pop, beta=beta, param=param,
                                                     bound=config.bound)
        row.update(theta=json.dumps([float(v) for v in w]), norm=float(np.linalg.norm(w)),
                   error_star=float(np.linalg.norm(w - w_star)), status="ok")
    except Exception as exc:  # recorded, never silent: the report lists failures
        row.update(theta="", norm=np.nan, error_star=np.nan,
                   status=f"failed: {type(exc).__name__}: {str(exc)[:200]}",
                   seconds=time.perf_counter() - t0)
        return row
    if est.local_kind == "kl":
        row["dual"] = kl_dual_variable(_losses(pop, w, beta), pop.weight, param)
    elif est.local_kind == "kldpo":
        row["dual"] = float(param)
    try:
        la = local_asymptotics(est.local_kind, pop, w, beta=beta,
                               param=0.0 if param is None else param)
        row.update(tr_hinv=la.tr_hinv, tr_sandwich=la.tr_sandwich, local_status="ok")
    except (ValueError, np.linalg.LinAlgError) as exc:
        row["local_status"] = f"none: {str(exc)[:120]}"
    row["seconds"] = time.perf_counter() - t0
    return row


def _losses(pop, w, beta):
    m = pop.sign * beta * (pop.x @ w - pop.offset)
    return np.logaddexp(0.0, -m)


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


def run(config: RatesConfig, out, *, jobs: int = 1, scheduler=None, progress: bool = True,
        max_rows: int | None = None, retry_failed: bool = False) -> Path:
    """Run (or resume) the study; returns the records path.

    Args:
        config: the study.
        out: output directory (``config.json``, ``targets.csv``, ``records.csv``).
        jobs: local worker processes (joblib); ignored when ``scheduler`` is given.
        scheduler: a Dask scheduler address ``tcp://HOST:PORT`` (or a ``Client``).
        progress: show tqdm bars.
        max_rows: stop after scheduling this many pending rows (for tests and benchmarks).
        retry_failed: compute again the targets and rows whose status records a failure
            (they are removed from the records first), e.g. after a solver fix.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(config, out)
    write_resolved(config, out / "config.json")
    combos = [(e, s) for e, s in _combos(config) if get_estimator(e).available()]
    parts = max(1, jobs) * 4 if not scheduler else 64

    # Phase 1: collapse radii, then exact population targets (resumable).
    drop = _failed if retry_failed else None
    targets = RecordStore(out / "targets.csv", TARGET_COLUMNS, TARGET_KEY).open(drop=drop)
    try:
        items = sorted({("collapse", st.name, e, None) for e, s in combos
                        if s is not None and s.uses_collapse(get_estimator(e))
                        for st in config.settings})
        items = [i for i in items if not targets.done(dict(setting=i[1], estimator=i[2],
                                                           param="collapse"))]
        _execute(_target_chunk, config, _chunks(items, parts), jobs=jobs, scheduler=scheduler,
                 desc="collapse radii", total=len(items), sink=targets.write_many,
                 progress=progress and bool(items))
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
        _execute(_target_chunk, config, _chunks(items, parts), jobs=jobs, scheduler=scheduler,
                 desc="targets", total=len(items), sink=targets.write_many,
                 progress=progress and bool(items))
    finally:
        targets.close()
    tdf = read_records(out / "targets.csv", dtype={"param": str}, keep_default_na=False)
    tdf = tdf[tdf.param != "collapse"]
    tmap = {(r.setting, r.estimator, r.param): r for r in tdf.itertuples()}

    # Phase 2: one unit = one sample (setting, n, seed) shared by all estimators.
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
        _execute(_run_chunk, config, _chunks(units, parts), jobs=jobs, scheduler=scheduler,
                 desc="rows", total=pending, sink=store.write_many, progress=progress)
    finally:
        store.close()
    return out / "records.csv"


def main(config_path, out, *, jobs: int = 1, scheduler=None, progress: bool = True,
         retry_failed: bool = False) -> Path:
    """Entry point: parse the TOML config and run the study."""
    return run(RatesConfig.from_toml(config_path), out, jobs=jobs, scheduler=scheduler,
               progress=progress, retry_failed=retry_failed)
