r"""The Remark 3 phase-diagram study: config -> tidy records on disk (docs/theory.md §8).

For every environment (setting), sample size n, replicate seed, estimator and schedule
exponent a, draw n preference pairs, fit the estimator at its schedule's hyperparameter

.. math::  r_n = c\,(n/n_0)^{-a}\quad(\text{KLDPO: }\tau_n=\tau_0(n/n_0)^{+a}),

and record (``records.csv``, one row per fit):

* the error against theta* (DPO's population optimum, w* = omega / beta) and against the
  estimator's exact population target theta(r_n) (the estimator fitted to the enumerated
  population at the same r_n; ``targets.csv``, cached per (setting, estimator, r_n));
* the certificate of §8.4: (i) ``cert_true``, whether the robust objective on the sample at
  theta-hat, V_n(theta-hat), is at least the population risk L_P(theta-hat), and (ii)
  ``cert_shift``, whether it is at least the worst-case risk at theta-hat over the
  populations within the stated shift of P (the estimator's ball, of radius
  ``shift_fraction`` times its population collapse radius): both exact, the population being
  enumerable;
* whether the plug-in 95% Wald ellipsoid and per-coordinate intervals of
  :mod:`loglinear.inference` cover theta(r_n) and theta*;
* for DPO, the local-curvature bound of §9.2 and the paper's Proposition 1.

The constants of each setting (the hyperparameters at n0, the stated shifts, lambda_min) go
to ``environments.csv``; every invocation appends its timing to ``runs.csv``.

**One Theta.** Every estimator and target is fitted on Theta = {||w|| <= B}; a row is ``ok``
only when its fit is certified and inside Theta, otherwise its status says why.

**Determinism.** The environment of a setting comes from ``SeedSequence([seed,
crc32(geometry), env_seed])``, the sample of (setting, n, seed) from ``SeedSequence([seed,
crc32(setting), n, seed])``, compressed to multinomial counts over the atoms
(``env.sample_counts``: a fit at n = 10^6 costs what one at 10^2 does). Every estimator and
schedule of a sample sees the same pairs. Only ``seconds`` varies between runs.

**Resume.** Rows are appended one line at a time (:class:`RecordStore`); a rerun skips the
finished keys, so adding seeds, sizes, exponents or estimators keeps the rows already there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..config import start_study, to_jsonable
from ..parallel import execute
from ..records import RecordStore, read_records
from .config import Remark3Config
from .fits import get_fit
from .units import (
    ENV_COLUMNS,
    ENV_KEY,
    ROW_COLUMNS,
    ROW_KEY,
    TARGET_COLUMNS,
    TARGET_KEY,
    environment_rows,
    hyper_key,
    run_chunk,
    target_chunk,
)

RUN_KEY = ["started"]
RUN_COLUMNS = RUN_KEY + ["jobs", "rows_before", "rows_added", "rows_planned",
                         "ms_per_row", "estimated_seconds", "seconds"]
CALIBRATION_UNITS = 2   # samples fitted in the main process first, to time a row
MAX_CHUNK = 2           # samples per task: finished rows reach disk promptly
FIXED = ("seed", "settings", "collapse_fraction", "reference_n", "shift_fraction", "bound",
         "level", "delta")


def _check_resume(config: Remark3Config, out: Path) -> None:
    """Refuse to mix records of a different study design in one directory."""
    path = out / "config.json"
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), to_jsonable(config)
    diff = [k for k in FIXED if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"{out} holds records of a different design ({', '.join(diff)} "
                         "changed); use a fresh --out directory")


# ----------------------------------------------------------------- the plan
def _constants(config: Remark3Config, out: Path) -> dict:
    """Phase 1: the constants of every setting (``environments.csv``, resumable)."""
    with RecordStore(out / "environments.csv", ENV_COLUMNS, ENV_KEY) as store:
        for st in config.settings:
            rows = [r for r in environment_rows(config, st.name) if not store.done(r)]
            store.write_many(rows)
    df = read_records(out / "environments.csv", keep_default_na=False)
    return {(r.setting, r.kind, r.name): float(r.value) for r in df.itertuples()}


def plan(config: Remark3Config, constants: dict) -> dict:
    """(setting, estimator, a) -> {n: hyperparameter}; a is ``None`` for an estimator
    without a hyperparameter (DPO), which runs once per sample."""
    out = {}
    for st in config.settings:
        for name in config.estimators:
            fit = get_fit(name)
            if fit.calibrate is None:
                out[(st.name, name, None)] = {n: None for n in config.n}
                continue
            base = constants[(st.name, "base", name)]
            for a in config.exponents:
                out[(st.name, name, a)] = {n: fit.at(base, a=a, n=n,
                                                     reference_n=config.reference_n)
                                           for n in config.n}
    return out


def _targets(config: Remark3Config, out: Path, the_plan: dict, *, jobs, progress) -> dict:
    """Phase 2: the exact population targets, one per (setting, estimator, hyperparameter);
    returns (setting, estimator, key) -> (status, theta)."""
    with RecordStore(out / "targets.csv", TARGET_COLUMNS, TARGET_KEY) as store:
        items = sorted({(s, e, h) for (s, e, _), by_n in the_plan.items()
                        for h in by_n.values()}, key=lambda t: (t[0], t[1], hyper_key(t[2])))
        items = [i for i in items if not store.done(dict(
            setting=i[0], estimator=i[1], hyperparameter=hyper_key(i[2])))]
        execute(target_chunk, config, items, jobs=jobs, sink=store.write_many,
                progress=progress, desc="targets", max_chunk=MAX_CHUNK)
    df = read_records(out / "targets.csv", dtype={"hyperparameter": str},
                      keep_default_na=False)
    return {(r.setting, r.estimator, r.hyperparameter):
            (r.status, json.loads(r.theta) if r.theta else None) for r in df.itertuples()}


def _units(config, the_plan, targets, shifts, store) -> tuple[list, int]:
    """Pending samples (setting, n, seed, jobs, shifts), seed-major (an interrupted study
    holds complete (setting, n) grids for its first seeds), and their row count."""
    units, pending = [], 0
    for seed in range(config.seeds):
        for st in config.settings:
            for n in config.n:
                jobs = []
                for (sname, est, a), by_n in the_plan.items():
                    key = dict(setting=sname, estimator=est, a=a, n=n, seed=seed)
                    if sname != st.name or store.done(key):
                        continue
                    status, theta = targets[(sname, est, hyper_key(by_n[n]))]
                    if status != "ok":
                        continue  # the target failed: reported from targets.csv
                    jobs.append((est, a, by_n[n], theta))
                if jobs:
                    units.append((st.name, n, seed, jobs, shifts[st.name]))
                    pending += len(jobs)
    return units, pending


# -------------------------------------------------------------------- main
def main(config: Remark3Config, out, *, jobs: int = 1, progress: bool = True,
         log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the study; returns the records directory.

    The first samples are fitted in this process to time a row; ``log`` (e.g. ``print``)
    then receives the estimated wall time of the rest with ``jobs`` workers, and at the end
    the measured one. Both go to ``runs.csv``.

    Args:
        config: the study (read a TOML file with
            ``experiments.config.load_config(Remark3Config, path)``).
        out: the records directory (``config.json``, ``environments.csv``, ``targets.csv``,
            ``records.csv``, ``runs.csv``).
        jobs: local worker processes (joblib).
        progress: show tqdm bars.
        log: where the time estimate and the measured time go (``None``: nowhere).
    """
    out, started, t_start = start_study(config, Remark3Config, out, jobs=jobs,
                                        check_resume=_check_resume)
    say = log or (lambda _msg: None)
    constants = _constants(config, out)
    the_plan = plan(config, constants)
    targets = _targets(config, out, the_plan, jobs=jobs, progress=progress)
    shifts = {st.name: {ball: v for (s, kind, ball), v in constants.items()
                        if s == st.name and kind == "shift"} for st in config.settings}
    store = RecordStore(out / "records.csv", ROW_COLUMNS, ROW_KEY).open()
    before = len(store)
    try:
        units, pending = _units(config, the_plan, targets, shifts, store)
        say(f"remark3: {pending} rows to fit of {config.planned_rows()} planned "
            f"({before} already in {out / 'records.csv'})")
        t0 = time.perf_counter()
        first, rest = units[:CALIBRATION_UNITS], units[CALIBRATION_UNITS:]
        done_rows = sum(store.write_many(run_chunk(config, [u])) for u in first)
        per_row = (time.perf_counter() - t0) / max(done_rows, 1)
        left = sum(len(u[3]) for u in rest)
        estimate = time.perf_counter() - t_start + per_row * left / jobs
        if units:
            say(f"remark3: {1e3 * per_row:.1f} ms per row in one process; estimated "
                f"{estimate:.0f} s in all with --jobs {jobs} ({left} rows to go)")
        execute(run_chunk, config, rest, jobs=jobs, sink=store.write_many,
                progress=progress, desc="samples", max_chunk=MAX_CHUNK)
        added = len(store) - before
    finally:
        store.close()
    seconds = time.perf_counter() - t_start
    with RecordStore(out / "runs.csv", RUN_COLUMNS, RUN_KEY) as runs:
        runs.write(dict(started=started, jobs=jobs, rows_before=before, rows_added=added,
                        rows_planned=config.planned_rows(), ms_per_row=1e3 * per_row,
                        estimated_seconds=estimate if units else 0.0, seconds=seconds))
    say(f"remark3: {added} rows added in {seconds:.0f} s (estimated "
        f"{estimate if units else 0.0:.0f} s); records in {out}")
    return out
