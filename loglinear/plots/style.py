"""The figures' shared style: one colour and marker per estimator (Okabe–Ito), reference
slopes with a key, one legend outside the data, y-limits that one outlier cannot set.
Re-exported by :mod:`loglinear.plots`; see its docstring."""

from __future__ import annotations

import numpy as np

OKABE_ITO = dict(black="#000000", orange="#E69F00", sky_blue="#56B4E9",
                 bluish_green="#009E73", yellow="#F0E442", blue="#0072B2",
                 vermillion="#D55E00", reddish_purple="#CC79A7")
# estimator -> colour, the one table every report uses (yellow is left out: it does not
# read on white)
ESTIMATOR_COLORS = {
    "dpo": OKABE_ITO["black"],
    "kl": OKABE_ITO["blue"],
    "kldpo": OKABE_ITO["orange"],
    "w1": OKABE_ITO["vermillion"],
    "w2": OKABE_ITO["reddish_purple"],
    "wdpo": OKABE_ITO["bluish_green"],
    "ipo": OKABE_ITO["sky_blue"],
    # the 3D study's remedies (Flex-DPO, DPO + SFT): two colours of Tol's muted scheme, as
    # the seven readable Okabe-Ito colours are taken
    "flex": "#882255",
    "sft": "#999933",
}
# a marker per estimator as well, so that curves lying on one another stay distinguishable
ESTIMATOR_MARKERS = dict(dpo="o", kl="s", kldpo="D", w1="^", w2="v", wdpo="P", ipo="X")
ESTIMATOR_ORDER = tuple(ESTIMATOR_COLORS)
OTHER_COLOR = "#7F7F7F"
# the exponents a rates figure is read against (docs/theory.md §5.5), drawn in grey
REFERENCE_SLOPES = {-0.5: dict(ls=(0, (6, 2)), label=r"slope $-1/2$"),
                    -0.25: dict(ls=(0, (3, 1.5, 1, 1.5)), label=r"slope $-1/4$")}
REFERENCE_NOTE = "grey: reference slopes -1/2 (dashed) and -1/4 (dash-dotted)"


def pyplot():
    """matplotlib.pyplot, imported lazily; on first import the non-interactive Agg backend
    is chosen (a notebook that already imported pyplot keeps its own backend)."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def estimator_family(name: str) -> str:
    """The estimator a variant name belongs to: ``"kldpo-paper@dual"`` -> ``"kldpo"``."""
    return str(name).split("@")[0].split("-")[0].lower()


def estimator_color(name: str) -> str:
    """The colour of an estimator (or of a variant, by its family); grey if unknown."""
    return ESTIMATOR_COLORS.get(estimator_family(name), OTHER_COLOR)


def estimator_marker(name: str) -> str:
    """The marker of an estimator (or of a variant, by its family); ``"."`` if unknown."""
    return ESTIMATOR_MARKERS.get(estimator_family(name), ".")


def add_reference_slopes(ax, x_lo: float, x_hi: float, y_anchor: float, *,
                         slopes=(-0.5, -0.25), color: str = "0.45") -> list:
    """Grey guide lines y = y_anchor (x / x_lo)^slope on [x_lo, x_hi] (log-log axes), one
    per slope of :data:`REFERENCE_SLOPES`; returns their handles for the legend."""
    if not (x_lo > 0 and x_hi > x_lo and y_anchor > 0):
        raise ValueError(f"reference slopes need 0 < x_lo < x_hi and y_anchor > 0, got "
                         f"{x_lo}, {x_hi}, {y_anchor}")
    xs = np.geomspace(x_lo, x_hi, 20)
    handles = []
    for s in slopes:
        style = REFERENCE_SLOPES.get(s, dict(ls="-", label=f"slope {s:g}"))
        (h,) = ax.plot(xs, y_anchor * (xs / x_lo) ** s, color=color, lw=1.0, ls=style["ls"],
                       label=style["label"], zorder=1)
        handles.append(h)
    return handles


def key_handle(label: str, *, ls="-", marker=None, color: str = "0.3"):
    """A legend entry for a line style or marker that several coloured curves share (so that
    the key does not borrow one estimator's colour)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, ls=ls, marker=marker, ms=4, lw=1.1, label=label)


def legend_outside(fig, handles, labels=None, *, ncol: int | None = None,
                   title: str | None = None):
    """One legend for the whole figure, centred below the panels (outside every axis, so it
    covers no data); duplicate labels are dropped."""
    labels = [h.get_label() for h in handles] if labels is None else list(labels)
    seen, hs, ls = set(), [], []
    for h, lab in zip(handles, labels):
        if lab and not lab.startswith("_") and lab not in seen:
            seen.add(lab)
            hs.append(h)
            ls.append(lab)
    ncol = ncol or min(len(hs), 6) or 1
    return fig.legend(hs, ls, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                      frameon=False, fontsize=8, title=title, title_fontsize=8)


def sane_limits(values, *, log: bool = True, quantile: float = 0.95, spread: float = 10.0
                ) -> tuple[float, float, int]:
    """Axis limits (lo, hi) that hold the bulk of ``values`` and the count above ``hi``.

    ``hi`` is the largest value, but at most ``spread`` times the ``quantile`` of the values
    (on a log axis; ``quantile + spread * IQR`` on a linear one), so that one outlier cannot
    stretch the axis over decades; the caller marks the clipped points
    (:func:`note_clipped`). Non-finite values (and non-positive ones on a log axis) are
    ignored.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if not v.size:
        raise ValueError("sane_limits needs at least one finite value"
                         + (" > 0 on a log axis" if log else ""))
    if log:
        hi = min(float(v.max()), float(np.quantile(v, quantile)) * spread)
        lo = float(v.min())
        return lo / 1.4, hi * 1.4, int(np.sum(v > hi * 1.4))
    q1, q3 = np.quantile(v, [0.25, 0.75])
    hi = min(float(v.max()), float(np.quantile(v, quantile) + spread * (q3 - q1)))
    lo = float(v.min())
    pad = 0.05 * max(hi - lo, 1e-12)
    return lo - pad, hi + pad, int(np.sum(v > hi + pad))


def plain_log_ticks(ax) -> None:
    """Log axes labelled at 1, 2 and 5 times each decade in plain numbers (the default
    labels every minor tick of a short axis, or only one decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def note_clipped(ax, clipped: int) -> None:
    """Say in the panel how many points lie above its y-range (nothing when none)."""
    if clipped:
        ax.annotate(f"{clipped} point{'s' if clipped > 1 else ''} above the axis",
                    xy=(0.98, 0.98), xycoords="axes fraction", ha="right", va="top",
                    fontsize=7, color="0.3")
