"""Results as compact, model-readable text: what MCP and LangChain hand a model.

Plain Python (no MCP SDK, no LangChain, no rich): stdout, stderr, the value,
DataFrames as markdown tables, image markers, the traceback, and notes on
timeout, kernel death and truncation, in output order.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Mapping
from typing import Any

from sandbox._models import DATAFRAME_MIME, IMAGE_MIMES, DisplayOutput, ErrorOutput, ExecutionResult

MAX_TEXT_CHARS = 40_000  # of one result's text; the middle is cut beyond this
TABLE_ROWS = 20
TABLE_CELL_CHARS = 60


def render_text(result: ExecutionResult, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A compact, model-readable rendering of *result*, outputs in order."""
    parts: list[str] = []
    for out in result.outputs:
        if isinstance(out, DisplayOutput):
            parts.append(_display_text(out))
        elif isinstance(out, ErrorOutput):
            parts.append("\n".join(out.traceback).strip("\n") or f"{out.ename}: {out.evalue}")
        elif out.name == "stderr":
            parts.append("[stderr]\n" + out.text.rstrip("\n"))
        else:
            parts.append(out.text.rstrip("\n"))
    if result.status == "died":
        reason = result.death.reason if result.death else "the kernel stopped"
        parts.append(f"[died] {reason}; the next call starts a fresh kernel")
    elif result.status == "timeout":
        limit = f" ({result.timeout.limit_s:g}s)" if result.timeout else ""
        parts.append(f"[timeout] the code ran past its time limit{limit} and was stopped")
    elif result.status == "error" and result.error is None:
        parts.append("[error] the execution failed")
    parts.extend(f"[note] {note}" for note in result.notes)
    if result.truncated and not result.notes:
        parts.append("[note] output was truncated")
    text = "\n".join(p for p in parts if p) or "[no output]"
    if len(text) > max_chars:
        head, tail = max_chars * 3 // 4, max_chars // 4
        text = (f"{text[:head]}\n[... {len(text) - head - tail} characters omitted ...]\n"
                f"{text[-tail:]}")
    return text


def _display_text(out: DisplayOutput) -> str:
    data = out.data
    frame = data.get(DATAFRAME_MIME)
    if isinstance(frame, Mapping):
        with contextlib.suppress(Exception):  # kernel data is untrusted: fall back to text
            return dataframe_table(frame)
    markers = [f"[image: {mime}, {_image_size(data[mime], mime)} bytes]"
               for mime in IMAGE_MIMES if isinstance(data.get(mime), str)]
    if markers:
        return "\n".join(markers)
    plain = data.get("text/plain")
    if isinstance(plain, str):
        return plain
    return f"[display: {', '.join(sorted(data))}]"


def _image_size(value: str, mime: str) -> int:
    if mime == "image/svg+xml":
        return len(value.encode())
    try:
        return len(base64.b64decode(value))
    except (binascii.Error, ValueError):
        return 0


def dataframe_table(payload: Mapping[str, Any], *, max_rows: int = TABLE_ROWS) -> str:
    """The structured DataFrame/Series form as an aligned markdown table of its first rows."""
    columns = [str(c) for c in payload.get("columns") or []]
    dtypes = [str(t) for t in payload.get("dtypes") or []]
    index = list(payload.get("index") or [])
    rows = [r for r in payload.get("data") or [] if isinstance(r, list)]
    shown = rows[:max_rows]
    names = [str(n) for n in payload.get("index_names") or [] if n is not None]
    header = [", ".join(names), *columns]
    body = [[_cell(index[i] if i < len(index) else ""),
             *[_cell(v) for v in (row + [None] * len(columns))[:len(columns)]]]
            for i, row in enumerate(shown)]
    numeric = [False, *[t.lower().startswith(("int", "uint", "float")) for t in dtypes]]
    widths = [max(3, *(len(r[c]) for r in (header, *body))) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            cell.rjust(w) if c < len(numeric) and numeric[c] else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if c < len(numeric) and numeric[c] else "-")
                          for c, w in enumerate(widths)) + "|"
    shape = payload.get("shape") or [len(rows), len(columns)]
    kind = "Series" if payload.get("kind") == "series" else "DataFrame"
    caption = f"{kind}: {shape[0]} rows × {shape[1]} columns"
    if len(shown) < int(shape[0]):
        caption += f" (first {len(shown)} rows shown)"
    if payload.get("truncated_columns"):
        caption += f" (first {len(columns)} columns shown)"
    return "\n".join([caption, line(header), rule, *(line(r) for r in body)])


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, list | dict) \
        else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return text if len(text) <= TABLE_CELL_CHARS else text[:TABLE_CELL_CHARS - 1] + "…"
