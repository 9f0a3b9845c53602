"""From Jupyter IOPub messages to outputs: a pure fold, tested with message fixtures.

The session feeds every IOPub message whose parent is the running execution to
:meth:`OutputAssembler.feed`; it returns what a live consumer should see now
(each new output as published, clears and display updates), and keeps the
assembled list for the final result: consecutive stream chunks merged,
``clear_output`` (also ``wait=True``) and ``update_display_data`` applied, ANSI
colour stripped from tracebacks, and the total kept bytes capped, with every
cut said in the result.

Messages come from code the sandbox runs: every field is checked for type and
anything malformed is dropped and counted, never raised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sandbox._models import DisplayOutput, ErrorOutput, Output, StreamOutput

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
MAX_TRACEBACK_LINES = 200
MAX_TRACEBACK_LINE = 10_000


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


@dataclass(frozen=True, slots=True)
class ClearOutput:
    """The cell cleared its outputs (``wait``: at the next output)."""

    wait: bool
    type: str = "clear_output"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "wait": self.wait}


@dataclass(frozen=True, slots=True)
class DisplayUpdate:
    """An earlier display with this ``display_id`` now shows ``output``."""

    display_id: str
    output: DisplayOutput
    type: str = "update_display_data"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "display_id": self.display_id,
                "data": self.output.data, "metadata": self.output.metadata}


Event = Output | ClearOutput | DisplayUpdate


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _bundle_size(data: dict[str, Any]) -> int:
    size = 0
    for key, value in data.items():
        size += len(key) + (_utf8_len(value) if isinstance(value, str)
                            else len(json.dumps(value)))
    return size


def output_size(output: Output) -> int:
    """Bytes an output holds (UTF-8), as the caps count them."""
    if isinstance(output, StreamOutput):
        return _utf8_len(output.text)
    if isinstance(output, ErrorOutput):
        return sum(_utf8_len(x) for x in output.traceback) + _utf8_len(output.evalue)
    return _bundle_size(output.data) + _bundle_size(output.metadata)


def _cut_utf8(text: str, limit: int) -> str:
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


@dataclass
class OutputAssembler:
    """Folds one execution's IOPub messages into outputs. Not thread-safe; one per cell.

    ``max_bytes`` caps what is kept, in UTF-8 bytes, twice over: once for stream
    text and once for rich outputs (displays, results, errors), so that a flood
    of prints can never push out the cell's value or its plot. Output removed by
    ``clear_output`` or replaced by an update gives its bytes back.
    """

    max_bytes: int
    outputs: list[Output] = field(default_factory=list)
    execution_count: int | None = None
    idle: bool = False
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    stream_bytes: int = 0
    rich_bytes: int = 0
    dropped_bytes: int = 0
    malformed: int = 0
    _clear_pending: bool = False
    _stream_dropped: dict[str, int] = field(default_factory=dict)

    def feed(self, msg: dict[str, Any]) -> list[Event]:
        """Apply one IOPub message; returns the events a live consumer should see."""
        try:
            return self._feed(msg)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.malformed += 1
            return []

    def _feed(self, msg: dict[str, Any]) -> list[Event]:
        msg_type = msg["header"]["msg_type"]
        content = msg["content"]
        if not isinstance(content, dict):
            raise TypeError("content is not an object")
        if msg_type == "status":
            if content.get("execution_state") == "idle":
                self.idle = True
            return []
        if msg_type == "execute_input":
            count = content.get("execution_count")
            if isinstance(count, int):
                self.execution_count = count
            return []
        if msg_type == "clear_output":
            wait = bool(content.get("wait", False))
            if wait:
                self._clear_pending = True
            else:
                self._clear()
            return [ClearOutput(wait=wait)]
        if msg_type == "stream":
            return self._stream(content)
        if msg_type in ("display_data", "execute_result"):
            return self._display(msg_type, content)
        if msg_type == "update_display_data":
            return self._update(content)
        if msg_type == "error":
            return self._error(content)
        return []  # comm messages, debug events...: not outputs

    # -- kinds ---------------------------------------------------------------------
    @property
    def kept_bytes(self) -> int:
        return self.stream_bytes + self.rich_bytes

    def _release(self, output: Output) -> None:
        if isinstance(output, StreamOutput):
            self.stream_bytes -= output_size(output)
        else:
            self.rich_bytes -= output_size(output)

    def _clear(self) -> None:
        for output in self.outputs:
            self._release(output)
        self.outputs.clear()
        self._clear_pending = False

    def _before_output(self) -> None:
        if self._clear_pending:
            self._clear()

    def _stream(self, content: dict[str, Any]) -> list[Event]:
        name, text = content["name"], content["text"]
        if name not in ("stdout", "stderr") or not isinstance(text, str):
            raise ValueError("bad stream message")
        self._before_output()
        room = self.max_bytes - self.stream_bytes
        size = _utf8_len(text)
        if size > room:
            text = _cut_utf8(text, room)
            lost = size - _utf8_len(text)
            self._mark_dropped(lost)
            self._stream_dropped[name] = self._stream_dropped.get(name, 0) + lost
            if not text:
                return []
        self.stream_bytes += _utf8_len(text)
        chunk = StreamOutput(name=name, text=text)
        last = self.outputs[-1] if self.outputs else None
        if isinstance(last, StreamOutput) and last.name == name:
            last.text += text
        else:
            self.outputs.append(StreamOutput(name=name, text=text))
        return [chunk]

    def _bundle(self, content: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        data = content["data"]
        metadata = content.get("metadata") or {}
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            raise TypeError("data/metadata must be objects")
        if not all(isinstance(k, str) for k in data):
            raise TypeError("MIME keys must be strings")
        return data, metadata

    def _admit(self, data: dict[str, Any], metadata: dict[str, Any], freed: int = 0
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        size = _bundle_size(data) + _bundle_size(metadata)
        if self.rich_bytes - freed + size <= self.max_bytes:
            self.rich_bytes += size
            return data, metadata
        self._mark_dropped(size)
        mimes = ", ".join(sorted(data)) or "no data"
        note = (f"[display dropped: {human_bytes(size)} ({mimes}) exceeds the "
                f"{human_bytes(self.max_bytes)} output limit of this execution]")
        placeholder = ({"text/plain": note},
                       {"agentbox": {"dropped": True, "bytes": size, "mimetypes": sorted(data)}})
        self.rich_bytes += _bundle_size(placeholder[0]) + _bundle_size(placeholder[1])
        return placeholder

    def _display(self, msg_type: str, content: dict[str, Any]) -> list[Event]:
        bundle = self._bundle(content)
        self._before_output()
        data, metadata = self._admit(*bundle)
        transient = content.get("transient") or {}
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        count = content.get("execution_count") if msg_type == "execute_result" else None
        out = DisplayOutput(
            type="execute_result" if msg_type == "execute_result" else "display_data",
            data=data, metadata=metadata,
            execution_count=count if isinstance(count, int) else None,
            display_id=display_id if isinstance(display_id, str) else None,
        )
        self.outputs.append(out)
        return [out]

    def _update(self, content: dict[str, Any]) -> list[Event]:
        transient = content.get("transient") or {}
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if not isinstance(display_id, str):
            raise ValueError("update_display_data without display_id")
        targets = [i for i, out in enumerate(self.outputs)
                   if isinstance(out, DisplayOutput) and out.display_id == display_id]
        if not targets:  # it names a display of an earlier cell: nothing here to update
            data, metadata = self._bundle(content)
            return [DisplayUpdate(display_id=display_id, output=DisplayOutput(
                type="display_data", data=data, metadata=metadata, display_id=display_id))]
        freed = sum(output_size(self.outputs[i]) for i in targets)
        data, metadata = self._admit(*self._bundle(content), freed=freed)
        self.rich_bytes -= freed
        # Every output showing this display id now shows the new data (counted once
        # per copy, like the outputs it replaces).
        self.rich_bytes += (len(targets) - 1) * (_bundle_size(data) + _bundle_size(metadata))
        updated = DisplayOutput(type="display_data", data=data, metadata=metadata,
                                display_id=display_id)
        for i in targets:
            out = self.outputs[i]
            assert isinstance(out, DisplayOutput)
            self.outputs[i] = DisplayOutput(type=out.type, data=data, metadata=metadata,
                                            execution_count=out.execution_count,
                                            display_id=display_id)
        return [DisplayUpdate(display_id=display_id, output=updated)]

    def _error(self, content: dict[str, Any]) -> list[Event]:
        ename, evalue = content["ename"], content["evalue"]
        traceback = content.get("traceback") or []
        if not isinstance(ename, str) or not isinstance(evalue, str):
            raise TypeError("ename/evalue must be strings")
        if not isinstance(traceback, list):
            raise TypeError("traceback must be a list")
        lines = [strip_ansi(str(line))[:MAX_TRACEBACK_LINE]
                 for line in traceback[:MAX_TRACEBACK_LINES]]
        if len(traceback) > MAX_TRACEBACK_LINES:
            lines.append(f"[{len(traceback) - MAX_TRACEBACK_LINES} more traceback lines dropped]")
        out = ErrorOutput(ename=strip_ansi(ename)[:1000], evalue=strip_ansi(evalue)[:10_000],
                          traceback=lines)
        self._before_output()
        self.rich_bytes += output_size(out)
        self.outputs.append(out)
        return [out]

    def _mark_dropped(self, n: int) -> None:
        self.truncated = True
        self.dropped_bytes += max(n, 0)

    def finish(self) -> list[Output]:
        """Close the fold: mark truncated streams in their text and in ``notes``."""
        for name, dropped in self._stream_dropped.items():
            marker = f"\n[output truncated: {human_bytes(dropped)} more on {name} not kept]\n"
            last = next((o for o in reversed(self.outputs)
                         if isinstance(o, StreamOutput) and o.name == name), None)
            if last is not None:
                last.text += marker
            else:
                self.outputs.append(StreamOutput(name=name, text=marker.lstrip("\n")))  # type: ignore[arg-type]
        self._stream_dropped.clear()
        if self.truncated:
            self.notes.append(
                f"output truncated: {human_bytes(self.dropped_bytes)} beyond the "
                f"{human_bytes(self.max_bytes)} per-execution limit (for stream text, and "
                f"for rich outputs) were not kept"
            )
        if self.malformed:
            self.notes.append(f"{self.malformed} malformed message(s) from the kernel ignored")
        return self.outputs
