"""The beyond-log-linear report's headline in numbers, kept so that the next version can
say what changed.

:func:`headline` reads the three studies' records (any version of their columns) and
returns the figures the report's conclusions rest on; :func:`write_previous` stores them as
JSON (``previous.json`` beside the report's figures) before the records are replaced, and
:func:`changes_paragraph` compares that file with the current records.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..records import read_records
from . import analysis_stability, analysis_tau
from .analysis import neural_exponents

PREVIOUS = "previous.json"
COLLAPSE_TOL = 0.01


def _read(path: Path):
    return read_records(path) if path.exists() else None


def _classify(ex) -> dict:
    return dict(fits=len(ex),
                contains=sum(e["tail_lo"] <= -0.5 <= e["tail_hi"] for e in ex),
                faster=sum(e["tail_hi"] < -0.5 for e in ex),
                slower=sum(e["tail_lo"] > -0.5 for e in ex))


def _neural(df) -> dict:
    out = dict(seeds=int(df.seed.nunique()), rows=len(df),
               start="random" if "error_random" in df else "optimum",
               local=_classify(neural_exponents(df, n_boot=500)))
    if "error_random" in df:
        rnd = df.dropna(subset=["error_random"])
        out["random"] = _classify(neural_exponents(rnd.assign(error=rnd.error_random),
                                                   n_boot=500))
        out["reached"] = int(rnd.restarts_reached.sum())
        out["restarts"] = int(rnd.sample_restarts.sum())
    return out


def _stability(df) -> dict:
    runs = analysis_stability.run_table(df, collapse_tol=COLLAPSE_TOL)
    robust = runs[runs.method != "dpo"]
    return dict(seeds=int(df.seed.nunique()), runs=len(runs), robust_runs=len(robust),
                collapsed=int(robust.collapsed.sum()),
                strengths=int(robust.groupby(["method", "hyper"]).ngroups),
                has_kl="kl_ref" in df)


def _tau(df) -> dict:
    shifts = analysis_tau.shift_columns(df)
    rule, dpo = df[df.method == "rule"], df[df.method == "dpo"]
    worse, n_cells = 0, 0
    for (setting, n), g in rule.groupby(["setting", "n"]):
        d = dpo[(dpo.setting == setting) & (dpo.n == n)]
        worse += int(g.regret_a50.mean() > d.regret_a50.mean())
        n_cells += 1
    v = analysis_tau.verdicts(analysis_tau.cells(df, n_boot=500))
    taus = rule.groupby(["setting", "n"]).tau.mean()
    return dict(shifts=len({k for _, k in shifts}), rule_worse50=worse, cells50=n_cells,
                rule_tau=[float(taus.min()), float(taus.max())],
                selectors=sorted(v), verdicts={k: dict(wins=r["wins"], losses=r["losses"],
                                                        cells=r["cells"],
                                                        in_dist_ratio=r["in_dist_ratio"])
                                               for k, r in v.items()})


def headline(root) -> dict:
    """The headline figures of the records under ``root`` (``neural/``, ``stability/``,
    ``tau/``; a missing study is left out). JSON-able."""
    root = Path(root)
    out = {}
    for name, fn in (("neural", _neural), ("stability", _stability), ("tau", _tau)):
        df = _read(root / name / "records.csv")
        if df is not None:
            out[name] = fn(df)
    return json.loads(json.dumps(out, default=float))


def write_previous(root, path) -> Path:
    """Store :func:`headline` of the records under ``root`` at ``path`` (JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(headline(root), indent=1, sort_keys=True) + "\n")
    return path


def read_previous(path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _cls(c) -> str:
    return "%d/%d/%d of %d" % (c["contains"], c["faster"], c["slower"], c["fits"])


def changes_paragraph(prev: dict | None, new: dict) -> str:
    """"Changes since the previous version", computed from the two headlines."""
    if prev is None:
        return ("**Changes since the previous version.** No previous version is on record "
                "(`beyond_loglinear/previous.json`).")
    parts = []
    pn, nn = prev.get("neural"), new.get("neural")
    if pn and nn:
        t = ("neural fits: previously every sample fit started at the population optimum "
             "(%d seeds); now each sample is also fitted from random initialisations" % (
                 pn["seeds"]) if pn["start"] == "optimum" else "neural fits: %d seeds"
             % pn["seeds"])
        if "reached" in nn:
            t += (" (%d of %d restarts reached the sample optimum)" % (nn["reached"],
                                                                     nn["restarts"]))
        t += ("; exponent intervals containing / below / above -1/2: previously %s, now %s "
              "for the local fit" % (_cls(pn["local"]), _cls(nn["local"])))
        if "random" in nn:
            t += " and %s for the random-init fit" % _cls(nn["random"])
        parts.append(t)
    ps, ns = prev.get("stability"), new.get("stability")
    if ps and ns:
        parts.append(
            "stability: %d seeds and %d robust strengths before (%d of %d robust runs "
            "collapsed, compared unmatched), %d seeds and %d strengths now (%d of %d "
            "collapsed, set aside; comparisons paired by seed and at matched KL to the "
            "reference)" % (ps["seeds"], ps["strengths"], ps["collapsed"], ps["robust_runs"],
                            ns["seeds"], ns["strengths"], ns["collapsed"],
                            ns["robust_runs"]))
    pt, nt = prev.get("tau"), new.get("tau")
    if pt and nt:
        t = ("temperature: %d shift direction(s) before, %d now; the default rule's mean "
             "regret at the 50/50 shift was above DPO's in %d of %d (setting, n) cells "
             "before and is in %d of %d now" % (pt["shifts"], nt["shifts"],
                                                pt["rule_worse50"], pt["cells50"],
                                                nt["rule_worse50"], nt["cells50"]))
        if "rule_tau" in pt and "rule_tau" in nt:
            t += (" (the rule's tau, mean per (setting, n), was %.2g to %.2g and is %.2g to "
                  "%.2g now)" % (*pt["rule_tau"], *nt["rule_tau"]))
        for sel, r in nt["verdicts"].items():
            was = pt["verdicts"].get(sel)
            t += "; %s: %d losses / %d wins to DPO in %d shifted cells%s" % (
                sel, r["losses"], r["wins"], r["cells"],
                " (before: %d / %d in %d)" % (was["losses"], was["wins"], was["cells"])
                if was else " (new)")
        parts.append(t)
    return ("**Changes since the previous version** (computed from `previous.json` and the "
            "current records). " + "; ".join(parts) + ".") if parts else (
        "**Changes since the previous version.** No study is in both versions.")

