"""matplotlib, when it is installed (a plot is optional; the report is not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> bool:
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def p50_bars(data: dict[str, Any], path: Path, title: str) -> bool:
    """A log-scale bar chart of each comparison's subject and baseline p50 (ms)."""
    plt = pyplot()
    comps = [c for c in data["comparisons"] if "ratio" in c]
    if plt is None or not comps:
        return False
    names = [c["figure"] for c in comps]
    subj = [data["series"][c["subject"]]["stats"]["p50"] * 1000 for c in comps]
    base = [data["series"][c["baseline"]]["stats"]["p50"] * 1000 for c in comps]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(comps) + 1.5))
    ys = range(len(comps))
    ax.barh([y + 0.2 for y in ys], subj, height=0.4, label="measured (p50)")
    ax.barh([y - 0.2 for y in ys], base, height=0.4, label="baseline (p50)")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)
