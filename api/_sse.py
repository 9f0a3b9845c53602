"""Server-sent events as this API uses them: written here once (the server) and parsed
here once (the client), so the two cannot drift.

A frame is ``event: <name>`` and one ``data:`` line of JSON, ended by a blank line;
``: keep-alive`` comment lines fill silences. The parser also takes what the SSE format
allows beyond that (several ``data:`` lines, comments anywhere, a missing event name).
Only the standard library: the client imports this, and it must stay light.
"""

from __future__ import annotations

import json
from typing import Any

KEEPALIVE = ": keep-alive\n\n"


def frame(event: str, data: Any) -> str:
    """One event; ``json.dumps`` writes no newline, so the data is one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


class Parser:
    """Folds lines (without their line ends) into ``(event, data)`` pairs, the data
    decoded from JSON: a blank line ends an event, lines starting with ':' are comments,
    an event without data is no event."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        if not line:
            event, data = self.event or "message", "\n".join(self.data)
            self.event, self.data = "", []
            return (event, json.loads(data)) if data else None
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "event":
                self.event = value.removeprefix(" ")
            elif name == "data":
                self.data.append(value.removeprefix(" "))
        return None
