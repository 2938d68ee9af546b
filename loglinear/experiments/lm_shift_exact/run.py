"""Run (or resume) the exact preference-shift study over real text (docs/theory.md §10).

Outputs, in the records directory:

* ``config.json``: the resolved design; a rerun with a different design is refused.
* ``artifact.json``: the environment artifact's manifest (build settings, content hash).
* ``environment.csv``: the environment's constants (coverage spectrum, collapse radii,
  label noise, the hyperparameters per fraction).
* ``oracles.csv``: per alpha, the population DPO optimum of labels at that alpha and the
  reference, evaluated at that alpha (the normaliser of the gains, docs/theory.md §10.3).
* ``targets.csv``: the population optima (DPO's theta* and each robust target), evaluated
  exactly like the fits (rows with n = 0).
* ``records.csv``: one row per (kind, n, seed, estimator, fraction, t): the fit's status
  and certificate, exact held-out rewards at every alpha, KL to the reference, the
  policy-space errors, and the estimate itself.
* ``runs.csv``: each invocation's estimated and measured wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ...envs import emotion, load_artifact
from ..config import start_study, to_jsonable
from ..parallel import execute
from ..records import RecordStore, read_records
from .config import ExactShiftConfig
from .units import (
    ORACLE_COLUMNS,
    ROW_KEY,
    environments,
    hyperparameter,
    oracle_rows,
    parse_theta,
    row_columns,
    run_chunk,
    target_rows,
)

ENV_KEY = ["kind", "quantity"]
ENV_COLUMNS = ENV_KEY + ["value"]
RUN_KEY = ["started"]
RUN_COLUMNS = RUN_KEY + ["jobs", "rows_before", "rows_added", "estimated_seconds", "seconds"]
CALIBRATION_UNITS = 2
COVERAGE_DIMS = (2, 4, 8, 16, 32, 64, 128)


def _check_resume(config: ExactShiftConfig, out: Path) -> None:
    path = out / "config.json"
    if path.exists():
        old, new = json.loads(path.read_text()), to_jsonable(config)
        fixed = [k for k in new if k not in ("n", "seeds") and old.get(k) != new.get(k)]
        if fixed:
            raise ValueError(f"{out} holds records of a different design ({', '.join(fixed)} "
                             "changed); use a fresh --out directory")


def environment_rows(config: ExactShiftConfig, kind: str) -> list[dict]:
    """Coverage spectrum of Sigma (training population), label noise, collapse radii and
    the hyperparameter of every (estimator, fraction)."""
    train = environments(config, kind)[0]
    cov = train.coverage()
    eig = np.sort(np.linalg.eigvalsh(cov.sigma))
    p1 = train.preference_prob()
    joint = (train.state_dist[:, None, None] * train.sampling_policy[:, :, None]
             * train.sampling_policy[:, None, :]) * (1.0 - np.eye(train.n_actions))
    rows = [dict(kind=kind, quantity=f"eigenvalue_{i}", value=float(v))
            for i, v in enumerate(eig)]
    rows.append(dict(kind=kind, quantity="lambda_min", value=float(cov.lambda_min)))
    # P(the label names the higher-reward candidate), over pairs of distinct candidates
    agree = float(np.sum(joint * np.maximum(p1, 1.0 - p1)) / joint.sum())
    rows.append(dict(kind=kind, quantity="label_agreement", value=agree))
    # how concentrated the language model's own probabilities are over each prompt's
    # candidates: the mean largest probability and effective number 1 / sum p^2
    arrays, _ = load_artifact(config.artifact or None)
    lp = np.asarray(arrays["logp"][arrays["split"] == 0], float)
    p = np.exp(lp - lp.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows.append(dict(kind=kind, quantity="model_ref_max_prob", value=float(p.max(1).mean())))
    # coverage of the real embeddings as the projection keeps more principal components
    for d in COVERAGE_DIMS:
        if d <= arrays["pca_" + config.features].shape[1]:
            env_d = emotion(dim=d, features=config.features, path=config.artifact or None)
            rows.append(dict(kind=kind, quantity=f"lambda_min_dim{d}",
                             value=float(env_d.coverage().lambda_min)))
    rows.append(dict(kind=kind, quantity="model_ref_effective_candidates",
                     value=float(np.mean(1.0 / np.sum(p**2, axis=1)))))
    for e in config.estimators:
        for f in config.fractions:
            rows.append(dict(kind=kind, quantity=f"hyper_{e}_{f:g}",
                             value=hyperparameter(config, kind, e, f)))
    return rows


def _write_artifact_facts(config: ExactShiftConfig, path: Path) -> None:
    """The artifact's manifest and shape beside the records, so that the report needs the
    records alone."""
    arrays, manifest = load_artifact(config.artifact or None)
    split = arrays["split"]
    facts = dict(manifest, n_prompts={"train": int((split == 0).sum()),
                                      "heldout": int((split == 1).sum())},
                 candidates=int(arrays["logp"].shape[1]))
    path.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")


def main(config: ExactShiftConfig, out, *, jobs: int = 1, progress: bool = True,
         log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the study into ``out``; returns it. ``log`` receives the estimated
    and the measured wall time."""
    out, started, t_start = start_study(config, ExactShiftConfig, out, jobs=jobs,
                                        check_resume=_check_resume)
    say = log or (lambda _msg: None)
    _write_artifact_facts(config, out / "artifact.json")
    cols = row_columns(config)
    with RecordStore(out / "environment.csv", ENV_COLUMNS, ENV_KEY) as store:
        for kind in config.kinds:
            store.write_many([r for r in environment_rows(config, kind) if not store.done(r)])
    with RecordStore(out / "oracles.csv", ORACLE_COLUMNS, ["kind", "alpha"]) as store:
        for kind in config.kinds:
            if not store.done(dict(kind=kind, alpha=config.alphas[-1])):
                store.write_many([r for r in oracle_rows(config, kind) if not store.done(r)])
    with RecordStore(out / "targets.csv", cols, ROW_KEY) as store:
        for kind in config.kinds:
            if not store.done(dict(kind=kind, n=0, seed=0, estimator="dpo", fraction=0.0,
                                   t=1.0)):
                store.write_many(target_rows(config, kind))
    tg = read_records(out / "targets.csv", keep_default_na=False)
    targets = {}
    for kind in config.kinds:
        sub = tg[tg.kind == kind]
        targets[kind] = {(kind, r.estimator, float(r.fraction)):
                         (float(r.hyper) if r.estimator != "dpo" else None,
                          parse_theta(r.theta)) for r in sub.itertuples()}
    store = RecordStore(out / "records.csv", cols, ROW_KEY).open()
    before = len(store)
    try:
        # a unit's rows are written in order, so its last row marks it complete
        last = dict(estimator=config.estimators[-1], fraction=config.fractions[-1], t=1.0)
        units = [(k, n, s, targets[k]) for k in config.kinds for n in config.n
                 for s in range(config.seeds)
                 if not store.done(dict(kind=k, n=n, seed=s, **last))]
        say(f"lm-shift-exact: {len(units)} samples to fit of "
            f"{len(config.kinds) * len(config.n) * config.seeds} ({before} rows already in "
            f"{out / 'records.csv'})")
        # the largest samples first: the estimate and the load balance are better
        units.sort(key=lambda u: -u[1])
        t0 = time.perf_counter()
        first, rest = units[:CALIBRATION_UNITS], units[CALIBRATION_UNITS:]
        for u in first:
            store.write_many(run_chunk(config, [u]))
        per_unit = (time.perf_counter() - t0) / max(len(first), 1)
        # a unit's cost grows with its number of distinct atoms, about like log n here
        weight = {n: np.log(max(n, 10)) for n in config.n}
        left = sum(weight[u[1]] for u in rest) / max(weight[first[0][1]], 1e-9) if first else 0
        estimate = time.perf_counter() - t_start + per_unit * left / jobs
        if units:
            say(f"lm-shift-exact: {per_unit:.2f} s for a sample of n = {first[0][1]}; "
                f"estimated {estimate:.0f} s in all with --jobs {jobs} (an upper bound: "
                "smaller samples are cheaper)")
        execute(run_chunk, config, rest, jobs=jobs, sink=store.write_many, progress=progress,
                desc="samples")
        added = len(store) - before
    finally:
        store.close()
    seconds = time.perf_counter() - t_start
    with RecordStore(out / "runs.csv", RUN_COLUMNS, RUN_KEY) as runs:
        runs.write(dict(started=started, jobs=jobs, rows_before=before, rows_added=added,
                        estimated_seconds=estimate if units else 0.0, seconds=seconds))
    say(f"lm-shift-exact: {added} rows added in {seconds:.0f} s; records in {out}")
    return out
