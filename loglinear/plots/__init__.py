"""Views: the figures' shared style, and the notebooks' figures (:mod:`.notebook`).

One colour per estimator, the same in every figure of every report: the colour-blind-safe
Okabe–Ito palette (Okabe & Ito, 2008), assigned once in :data:`ESTIMATOR_COLORS`
(:mod:`.style`). A variant of an estimator (``kldpo-paper@dual``, ``wdpo-official@fit-cal``)
takes its family's colour (:func:`estimator_family`); the figure tells variants apart by line
style. The helpers here
draw the guides the reports share (reference slopes with a key, one legend outside the data,
y-limits that a single outlier cannot set); none computes science.
"""

from __future__ import annotations

from .notebook import (
    plot_against_lambda,
    plot_bound_curves,
    plot_direction_variance,
    plot_eigen_paths,
    plot_error_vs_lambda,
    plot_feature_projections,
    plot_heatmap,
    plot_kl_reweighting,
    plot_lines,
    plot_mass_dynamics,
    plot_prediction_scatter,
    plot_transport,
)
from .style import (
    ESTIMATOR_COLORS,
    ESTIMATOR_MARKERS,
    ESTIMATOR_ORDER,
    OKABE_ITO,
    OTHER_COLOR,
    REFERENCE_NOTE,
    REFERENCE_SLOPES,
    add_reference_slopes,
    estimator_color,
    estimator_family,
    estimator_marker,
    key_handle,
    legend_outside,
    note_clipped,
    plain_log_ticks,
    pyplot,
    sane_limits,
)

__all__ = [
    "ESTIMATOR_COLORS", "ESTIMATOR_MARKERS", "ESTIMATOR_ORDER", "OKABE_ITO", "OTHER_COLOR",
    "REFERENCE_NOTE", "REFERENCE_SLOPES", "add_reference_slopes", "estimator_color",
    "estimator_family", "estimator_marker", "key_handle", "legend_outside", "note_clipped",
    "plain_log_ticks", "pyplot", "sane_limits",
    "plot_against_lambda", "plot_bound_curves", "plot_direction_variance", "plot_eigen_paths",
    "plot_error_vs_lambda", "plot_feature_projections", "plot_heatmap", "plot_kl_reweighting",
    "plot_lines", "plot_mass_dynamics", "plot_prediction_scatter", "plot_transport",
]
