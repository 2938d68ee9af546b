r"""The estimation-rate and coverage study: config -> tidy records on disk.

For every environment (setting, draw), sample size n, replicate seed, estimator and
radius schedule, draw n preference pairs, fit the estimator and record its errors against
its exact target, in parameter space (||w_hat - w_target||_2, and the Sigma-norm) and in
policy space (E_s KL and TV between pi_target and pi_hat), and the same against DPO's
optimum theta*. Here w = theta - theta_ref (centered parameterisation, o = 0,
docs/theory.md §2.3), and the targets are exact:

* DPO: w* = omega / beta (the population DPO optimum, in closed form);
* the other estimators: their optimum on the enumerated population (weights equal to the
  exact atom probabilities) at the same hyperparameter value.

**One Theta.** Every estimator, and every target, is fitted on the same ball
Theta = {||w|| <= B} (``config.bound``), so a separable sample (no finite minimiser) has
an estimate on the sphere rather than an error. A row is ``ok`` only when its fit is
certified (gradient or KKT residual below the solver's tolerance, see
:class:`~loglinear.experiments.estimators.EstimatorFit`) and inside Theta; otherwise its
status is ``separable`` (no finite minimiser and no bound) or ``failed: <reason>``, with
the reason in ``failure``. ``on_boundary`` marks estimates on the sphere and
``separable`` samples that are (quasi-)separable, whatever the estimator.

**Count compression.** A sample of n i.i.d. pairs from a finite environment is, for any
weighted M-estimator, equivalent to the vector of multinomial counts over the population
atoms (s, a1, a2, y): the empirical measure is sum_k (c_k / n) delta_{atom_k}.
``env.sample_counts`` draws the counts directly, so a fit at n = 10^6 touches at most
S A^2 2 atoms and costs the same as at n = 10^3.

**Determinism.** Environment (setting, draw) comes from
``SeedSequence([config.seed, crc32(geometry), draw, env_seed])`` (``geometry`` defaults to
the setting's name; with env_seed = 0, draw 0 is the environment ``SeedSequence([seed,
crc32(name), 0])`` of the earlier one-draw studies), the data of row (setting, draw, n,
seed) from ``SeedSequence([config.seed, crc32(setting), draw, n, seed])``. Nothing depends
on the execution order, the number of workers or the estimator (all estimators of a row
see the same sample: common random numbers). Only ``seconds`` varies between runs.

**Resume.** Rows go to ``records.csv`` one line at a time (see
:mod:`loglinear.experiments.records`); a rerun skips finished keys. Targets go to
``targets.csv`` in the same way. Adding seeds or draws keeps the finished rows.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..config import to_jsonable, write_resolved
from ..estimators import get_estimator
from ..records import RecordStore, read_records
from .config import NO_SCHEDULE, EnvSpec, RatesConfig, Schedule
from .units import (
    BOUNDARY_RTOL,
    COLLAPSE,
    ROW_COLUMNS,
    ROW_KEY,
    TARGET_COLUMNS,
    TARGET_KEY,
    ZERO_TOL,
    _hyper_key,
    _run_chunk,
    _stable,  # noqa: F401  (the documented seeding, used to reproduce a row)
    _target_chunk,
    environment,
)

__all__ = ["BOUNDARY_RTOL", "NO_SCHEDULE", "ROW_COLUMNS", "ROW_KEY", "TARGET_COLUMNS",
           "TARGET_KEY", "ZERO_TOL", "EnvSpec", "RatesConfig", "Schedule", "environment",
           "hyperparameters", "main", "run"]


# ----------------------------------------------------------------- the plan
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


def _read_targets(out: Path):
    return read_records(out / "targets.csv", dtype={"hyperparameter": str},
                        keep_default_na=False)


def _run_targets(config: RatesConfig, out: Path, combos, *, drop, execute) -> dict:
    """Phase 1: collapse radii, then exact population targets (resumable). Returns the plan
    (setting, draw, estimator, schedule) -> {n: hyperparameter}."""
    targets = RecordStore(out / "targets.csv", TARGET_COLUMNS, TARGET_KEY).open(drop=drop)
    draws = range(config.draws)
    try:
        items = sorted({(COLLAPSE, st.name, d, e, None) for e, s in combos
                        if s is not None and s.uses_collapse(get_estimator(e))
                        for st in config.settings for d in draws})
        items = [i for i in items if not targets.done(dict(
            setting=i[1], draw=i[2], estimator=i[3], hyperparameter=COLLAPSE))]
        execute(_target_chunk, items, desc="collapse radii", sink=targets.write_many)
        tdf = _read_targets(out)
        collapse = {(r.setting, int(r.draw), r.estimator): float(r.collapse_radius)
                    for r in tdf[tdf.hyperparameter == COLLAPSE].itertuples()}
        plan = {}  # (setting, draw, est, sched) -> {n: hyperparameter}
        for st in config.settings:
            for d in draws:
                for e, s in combos:
                    if s is None:
                        plan[(st.name, d, e, NO_SCHEDULE)] = {n: None for n in config.n}
                        continue
                    cr = collapse.get((st.name, d, e))
                    if s.uses_collapse(get_estimator(e)) and not (cr is not None and cr > 0):
                        continue  # no usable collapse radius (recorded in targets.csv)
                    plan[(st.name, d, e, s.name)] = hyperparameters(config, st.name, e, s, cr)
        items = sorted({("target", k[0], k[1], k[2], p) for k, by_n in plan.items()
                        for p in by_n.values()},
                       key=lambda t: (t[1], t[2], t[3], _hyper_key(t[4])))
        items = [i for i in items if not targets.done(dict(
            setting=i[1], draw=i[2], estimator=i[3], hyperparameter=_hyper_key(i[4])))]
        execute(_target_chunk, items, desc="targets", sink=targets.write_many)
    finally:
        targets.close()
    return plan


def _run_rows(config: RatesConfig, out: Path, plan: dict, *, drop, max_rows, execute) -> None:
    """Phase 2: one unit = one sample (setting, draw, n, seed) shared by all estimators."""
    tdf = _read_targets(out)
    tdf = tdf[tdf.hyperparameter != COLLAPSE]
    tmap = {(r.setting, int(r.draw), r.estimator, r.hyperparameter): r
            for r in tdf.itertuples()}
    store = RecordStore(out / "records.csv", ROW_COLUMNS, ROW_KEY).open(drop=drop)
    try:
        units, pending = [], 0
        # Seed-major order: an interrupted study holds complete (setting, draw, n) grids for
        # its first seeds rather than complete settings, so a partial analysis stays balanced.
        for seed in range(config.seeds):
            for d in range(config.draws):
                for st in config.settings:
                    for n in config.n:
                        jobs_here = []
                        for (sname, sd, e, sched), by_n in plan.items():
                            if sname != st.name or sd != d or store.done(dict(
                                    setting=sname, draw=d, estimator=e, schedule=sched, n=n,
                                    seed=seed)):
                                continue
                            t = tmap.get((sname, d, e, _hyper_key(by_n[n])))
                            if t is None or t.status != "ok":
                                continue  # the target failed: reported from targets.csv
                            jobs_here.append((e, sched, by_n[n], np.array(json.loads(t.theta)),
                                              float(t.tr_hinv), float(t.tr_sandwich)))
                        if jobs_here and (max_rows is None or pending < max_rows):
                            units.append((st.name, d, n, seed, jobs_here))
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
