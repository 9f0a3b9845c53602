"""What one output costs and how it is cut to fit: the byte accounting of the output caps.

:class:`sandbox._outputs.OutputAssembler` keeps the budgets (how many bytes of stream
text and of rich outputs an execution has left); this module measures outputs in
UTF-8 bytes, as every cap counts them, and cuts text, displays and errors down to the
room they are given, saying what was cut. Pure functions, no state.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sandbox._models import ErrorOutput, Output, StreamOutput

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
MAX_TRACEBACK_LINES = 200
MAX_TRACEBACK_LINE = 10_000
MAX_ENAME = 1000
MAX_EVALUE = 10_000
# Room held back in the stream budget for each of stdout and stderr, for the
# "[output truncated: ...]" marker that finish() appends: markers count, and fit.
MARKER_RESERVE = 128
MiB = 1024 * 1024

# A MIME bundle (data, metadata) and the bytes it counts.
Bundle = tuple[dict[str, Any], dict[str, Any], int]


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def bundle_size(data: dict[str, Any]) -> int:
    size = 0
    for key, value in data.items():
        size += len(key) + (utf8_len(value) if isinstance(value, str)
                            else len(json.dumps(value)))
    return size


def _error_size(ename: str, evalue: str, traceback: list[str]) -> int:
    return utf8_len(ename) + utf8_len(evalue) + sum(utf8_len(x) for x in traceback)


def output_size(output: Output) -> int:
    """Bytes an output holds (UTF-8), as the caps count them."""
    if isinstance(output, StreamOutput):
        return utf8_len(output.text)
    if isinstance(output, ErrorOutput):
        return _error_size(output.ename, output.evalue, output.traceback)
    return bundle_size(output.data) + bundle_size(output.metadata)


def cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of *text* whose UTF-8 form fits in *limit* bytes."""
    if limit <= 0:
        return ""
    if text.isascii():
        return text[:limit]
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def placeholder(data: dict[str, Any], size: int, max_bytes: int) -> Bundle:
    """What is kept in place of a display of *size* bytes over the *max_bytes* limit."""
    mimes = ", ".join(sorted(data)) or "no data"
    note = (f"[display dropped: {human_bytes(size)} ({mimes}) exceeds the "
            f"{human_bytes(max_bytes)} output limit of this execution]")
    holder = ({"text/plain": note},
              {"agentbox": {"dropped": True, "bytes": size, "mimetypes": sorted(data)}})
    return holder[0], holder[1], bundle_size(holder[0]) + bundle_size(holder[1])


def fit_error(ename: str, evalue: str, traceback: list[Any], room: int
              ) -> tuple[ErrorOutput, int] | None:
    """The error as kept in *room* bytes, and the bytes lost: fixed caps per field and
    line, then what fits (name, value, then whole traceback lines), with a line saying
    the rest. None if there is no room at all."""
    if room <= 0:
        return None
    name = cut_utf8(strip_ansi(ename[:MAX_ENAME * 4])[:MAX_ENAME], room)
    room -= utf8_len(name)
    value = strip_ansi(evalue[:MAX_EVALUE * 4])[:MAX_EVALUE]
    kept_value = cut_utf8(value, room)
    room -= utf8_len(kept_value)
    lost = utf8_len(value) - utf8_len(kept_value)
    lines: list[str] = []
    # Only text lines: str() of a huge list sent in their place would cost all of it.
    given = [x if isinstance(x, str) else "[not text]"
             for x in traceback[:MAX_TRACEBACK_LINES]]
    capped = [strip_ansi(x[:MAX_TRACEBACK_LINE * 4])[:MAX_TRACEBACK_LINE] for x in given]
    sizes = [utf8_len(x) for x in capped]
    held = min(MARKER_RESERVE, room) if sum(sizes) > room else 0
    room -= held  # room for the line that says what was cut
    for line, size in zip(capped, sizes, strict=True):
        if size > room:
            lost += sum(sizes[len(lines):])
            break
        lines.append(line)
        room -= size
    room += held
    extra = len(traceback) - len(lines)
    if extra > 0:
        marker = (f"[{extra} more traceback lines dropped]" if not lost
                  else f"[{extra} more traceback lines ({human_bytes(lost)}) dropped: "
                       "the output limit of this execution]")
        if utf8_len(marker) <= room:
            lines.append(marker)
    return ErrorOutput(ename=name, evalue=kept_value, traceback=lines), lost
