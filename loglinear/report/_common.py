"""Small helpers shared by the report builders."""

from __future__ import annotations

from pathlib import Path


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4g"
                   ) -> str:
    """A GitHub markdown table from a list of dicts."""
    if not rows:
        return "_(no rows)_"
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def save_figure(fig, path) -> Path:
    """Save a matplotlib Figure as PNG (dpi 120) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
