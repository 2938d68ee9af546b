"""Analysis of the neural study's random-init fits: how often optimisation from random
parameters reaches the sample optimum, and the error of the estimator it produces.

The local fit (started at pi*'s parameters) is the sample optimum next to the population
optimum; a random-init restart **reaches** it when its policy is within TV ``reach_tv`` of
the local fit's and its objective at most ``reach_gap`` above it (the study's config). The
best of the restarts (lowest sample objective) is the random-init estimator.
"""

from __future__ import annotations

from .analysis import neural_exponents


def reach_table(df, *, reach_tv: float = 1e-3, reach_gap: float = 1e-6) -> list[dict]:
    """Per (setting, arch): restarts that reached the sample optimum (count, total,
    share); ``samples_none``: samples where no restart reached it; ``samples_flat``:
    samples whose best restart matches the local fit's objective (within ``reach_gap``)
    with a different policy (TV > ``reach_tv``): the sample does not identify the policy;
    the median and largest TV of the best restart to the local fit, the best restart's
    objective minus the local fit's (median), and the smallest TV between an initial
    policy and pi*."""
    out = []
    d = df.dropna(subset=["error_random"])
    for (setting, arch), g in d.groupby(["setting", "arch"]):
        out.append(dict(setting=setting, arch=arch, samples=len(g),
                        reached=int(g.restarts_reached.sum()),
                        restarts=int(g.sample_restarts.sum()),
                        share=float(g.restarts_reached.sum() / g.sample_restarts.sum()),
                        samples_none=int((g.restarts_reached == 0).sum()),
                        samples_flat=int(((g.objective_random <= g.objective + reach_gap)
                                          & (g.tv_random_to_local > reach_tv)).sum()),
                        tv_to_local_median=float(g.tv_random_to_local.median()),
                        tv_to_local_max=float(g.tv_random_to_local.max()),
                        objective_gap_median=float((g.objective_random - g.objective)
                                                   .median()),
                        init_tv_min=float(g.init_tv.min())))
    return out


def random_exponents(df, *, n_boot: int = 2000) -> list[dict]:
    """:func:`~loglinear.experiments.beyond.analysis.neural_exponents` of the random-init
    estimator (its ``error_random`` column)."""
    d = df.dropna(subset=["error_random"])
    return neural_exponents(d.assign(error=d.error_random), n_boot=n_boot)


def conclusions(reach, ex_random, ex_local, *, reach_tv: float, reach_gap: float) -> list[str]:
    """Sentences on optimisation from random initialisation, from :func:`reach_table` and
    the two estimators' exponents (``reach_tv``, ``reach_gap``: the study's tolerances)."""
    if not reach:
        return []
    tot, hit = sum(r["restarts"] for r in reach), sum(r["reached"] for r in reach)
    miss = [r for r in reach if r["share"] < 1]
    text = ("- **Fits from random initialisation.** %d of %d random-init restarts (%.0f%%) "
            "reached the sample optimum next to pi* (policy within TV %g of the local fit, "
            "objective at most %g above it); the initial policies were at TV >= %.2f from "
            "pi*. " % (hit, tot, 100 * hit / tot, reach_tv, reach_gap,
                       min(r["init_tv_min"] for r in reach)))
    if miss:
        text += "Below 100%%: %s. " % "; ".join(
            "%s %s %d/%d (best restart's TV to the local fit: median %.2g, max %.2g; "
            "objective minus the local fit's: median %.2g; in %d of %d samples the best "
            "restart matches the local objective with a different policy)" % (
                r["setting"], r["arch"], r["reached"], r["restarts"],
                r["tv_to_local_median"], r["tv_to_local_max"], r["objective_gap_median"],
                r["samples_flat"], r["samples"])
            for r in miss)
        if any(r["samples_flat"] for r in miss):
            text += ("Where a restart ends at the same sample objective with another policy, "
                     "the optimiser has not failed: the sample leaves some (s, a) scores "
                     "undetermined (pairs never drawn), and which policy DPO returns there "
                     "depends on the initialisation. ")
    loc = {(e["setting"], e["arch"]): e for e in ex_local}
    diffs = [(e, loc[(e["setting"], e["arch"])]) for e in ex_random
             if (e["setting"], e["arch"]) in loc]
    worse = [(e, l) for e, l in diffs if e["rmse_at_max_n"] > 1.1 * l["rmse_at_max_n"]]
    text += ("At the largest n the random-init estimator's RMSE is within 10%% of the local "
             "fit's in %d of %d (setting, architecture) cells" % (len(diffs) - len(worse),
                                                                  len(diffs)))
    if worse:
        text += "; larger in %s" % "; ".join(
            "%s %s (%.3g vs %.3g)" % (e["setting"], e["arch"], e["rmse_at_max_n"],
                                      l["rmse_at_max_n"]) for e, l in worse)
    cls = sum(e["tail_lo"] <= -0.5 <= e["tail_hi"] for e in ex_random)
    slow = sum(e["tail_lo"] > -0.5 for e in ex_random)
    text += (". Its tail exponents' 95%% intervals contain -1/2 in %d of %d fits and lie "
             "above it (slower) in %d." % (cls, len(ex_random), slow))
    return [text]
