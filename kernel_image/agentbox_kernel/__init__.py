"""IPython extension loaded into every Agent Box kernel.

Registers a display formatter that adds a structured JSON form of pandas
DataFrames and Series (MIME type ``application/vnd.agentbox.dataframe+json``)
beside the usual HTML and text, for agents that want data rather than markup.
It registers by type *name*, so pandas is never imported unless the user's
code imports it: a kernel that never touches pandas pays nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from IPython.core.formatters import BaseFormatter
from traitlets import ObjectName, Unicode

DATAFRAME_MIME = "application/vnd.agentbox.dataframe+json"
MAX_ROWS = int(os.environ.get("AGENTBOX_DATAFRAME_ROWS", "50"))
MAX_COLUMNS = int(os.environ.get("AGENTBOX_DATAFRAME_COLUMNS", "100"))


class DataFrameJSONFormatter(BaseFormatter):  # type: ignore[misc]
    """Formats pandas objects as a JSON-able dict; anything else is skipped."""

    format_type = Unicode(DATAFRAME_MIME)
    print_method = ObjectName("_repr_agentbox_dataframe_")
    _return_type = (dict,)


def frame_payload(df: Any, kind: str = "dataframe") -> dict[str, Any] | None:
    """Columns, dtypes, index and the first rows of *df*, as plain JSON types."""
    try:
        nrows, ncols = df.shape
        head = df.iloc[:MAX_ROWS, :MAX_COLUMNS]
        split = json.loads(
            head.to_json(orient="split", date_format="iso", default_handler=str)
        )
        return {
            "kind": kind,
            "shape": [int(nrows), int(ncols)],
            "columns": [str(c) for c in head.columns],
            "dtypes": [str(t) for t in head.dtypes],
            "index": split.get("index", []),
            "index_names": [None if n is None else str(n) for n in df.index.names],
            "data": split.get("data", []),
            "truncated_rows": bool(nrows > MAX_ROWS),
            "truncated_columns": bool(ncols > MAX_COLUMNS),
        }
    except Exception:  # a formatter must never turn a display into an error
        return None


def _series_payload(series: Any) -> dict[str, Any] | None:
    try:
        name = series.name if series.name is not None else "value"
        return frame_payload(series.to_frame(name=name), kind="series")
    except Exception:
        return None


def load_ipython_extension(ip: Any) -> None:
    formatter = DataFrameJSONFormatter(parent=ip.display_formatter)
    ip.display_formatter.formatters[DATAFRAME_MIME] = formatter
    # pandas >= 3 reports its public classes as living in "pandas".
    for module in ("pandas.core.frame", "pandas"):
        formatter.for_type_by_name(module, "DataFrame", frame_payload)
    for module in ("pandas.core.series", "pandas"):
        formatter.for_type_by_name(module, "Series", _series_payload)
