"""An audit of a preference dataset: what the data cover, what DPO fits and how sure it is,
how far robust training can go (collapse radii), a suggested KL radius and temperature, and
the pairs an exact KL-robust objective leans on most (candidates for label noise).

``audit(data, beta=...)`` returns an :class:`AuditReport` (the numbers) and
``write_report(report, out_dir)`` writes ``audit.md`` with its figures; ``loglinear audit``
does both from a file of feature differences or of prompt/chosen/rejected text, which
:mod:`loglinear.audit.text` embeds. The shipped example is described in
:mod:`loglinear.audit.example`.
"""

from .core import audit
from .example import example_pairs, example_path, write_example
from .report import markdown, summary, write_report
from .results import (
    AuditReport,
    CollapseRadii,
    CoverageSummary,
    FitSummary,
    Shift,
    Suggestion,
    WeakDirection,
    WorstCase,
)
from .text import (
    Projection,
    TextPairs,
    audit_text,
    embed_texts,
    pair_differences,
    principal_projection,
    read_text_pairs,
)

__all__ = [
    "AuditReport", "CollapseRadii", "CoverageSummary", "FitSummary", "Projection", "Shift",
    "Suggestion", "TextPairs", "WeakDirection", "WorstCase", "audit", "audit_text",
    "embed_texts", "example_pairs", "example_path", "markdown", "pair_differences",
    "principal_projection", "read_text_pairs", "summary", "write_example", "write_report",
]
