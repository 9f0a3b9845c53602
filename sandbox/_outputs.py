"""From Jupyter IOPub messages to outputs: a pure fold, tested with message fixtures.

The session feeds every IOPub message whose parent is the running execution to
:meth:`OutputAssembler.feed`; it returns what a live consumer should see now
(each new output as published, clears and display updates), and keeps the
assembled list for the final result: consecutive stream chunks merged,
``clear_output`` (also ``wait=True``) and ``update_display_data`` applied, ANSI
colour stripped from tracebacks, and what is kept capped, with every cut said
in the result.

Every kind of output is capped, because each comes from code the sandbox runs
(a forged ``error`` is as cheap to send as a ``print``):

- bytes kept: ``max_bytes`` of stream text and, separately, ``max_bytes`` of rich
  outputs (displays, results, errors), markers and placeholders included, so a
  flood of prints never pushes out the cell's value or its plot;
- outputs kept: at most ``max_outputs`` (tiny displays cost little in bytes but
  a Python object, a history row entry and a notebook output each);
- events sent live: at most ``max_live_events`` and ``max_live_bytes`` per
  execution. A loop of ``clear_output`` + ``print``, or of updates to a display
  of another cell, keeps almost nothing but could send events for ever.

Messages are checked for type and anything malformed is dropped and counted,
never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox._models import DisplayOutput, Output, StreamOutput
from sandbox._output_caps import (
    MARKER_RESERVE,
    Bundle,
    MiB,
    bundle_size,
    cut_utf8,
    fit_error,
    human_bytes,
    output_size,
    placeholder,
    strip_ansi,
    utf8_len,
)

__all__ = ["MARKER_RESERVE", "ClearOutput", "DisplayUpdate", "Event", "OutputAssembler",
           "human_bytes", "output_size", "strip_ansi"]

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
# An event and the bytes it counts against the live budget.
_Sized = tuple[Event, int]


@dataclass
class OutputAssembler:
    """Folds one execution's IOPub messages into outputs. Not thread-safe; one per cell.

    ``max_bytes`` caps what is kept, in UTF-8 bytes, twice over: once for stream
    text and once for rich outputs (displays, results, errors). Output removed by
    ``clear_output`` or replaced by an update gives its bytes back. The caps hold
    exactly: ``stream_bytes`` and ``rich_bytes`` never exceed ``max_bytes`` and
    ``outputs`` never holds more than ``max_outputs``.
    """

    max_bytes: int
    max_outputs: int = 10_000
    max_live_events: int = 1_000_000
    max_live_bytes: int = 256 * MiB
    outputs: list[Output] = field(default_factory=list)
    execution_count: int | None = None
    idle: bool = False
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    stream_bytes: int = 0
    rich_bytes: int = 0
    dropped_bytes: int = 0
    dropped_outputs: int = 0
    malformed: int = 0
    live_events: int = 0
    live_bytes: int = 0
    live_dropped: int = 0
    live_dropped_bytes: int = 0
    _clear_pending: bool = False
    _stream_dropped: dict[str, int] = field(default_factory=dict)
    # The bytes each kept output counts (parallel to outputs), and where each display
    # id is shown: updates and clears then cost no re-measuring and no scan.
    _sizes: list[int] = field(default_factory=list)
    _by_id: dict[str, list[int]] = field(default_factory=dict)

    @property
    def _reserve(self) -> int:
        return min(MARKER_RESERVE, self.max_bytes // 8)

    def feed(self, msg: dict[str, Any]) -> list[Event]:
        """Apply one IOPub message; returns the events a live consumer should see."""
        try:
            sized = self._feed(msg)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.malformed += 1
            return []
        return self._live(sized) if sized else []

    def _feed(self, msg: dict[str, Any]) -> list[_Sized]:
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
            return [(ClearOutput(wait=wait), 0)]
        if msg_type == "stream":
            return self._stream(content)
        if msg_type in ("display_data", "execute_result"):
            return self._display(msg_type, content)
        if msg_type == "update_display_data":
            return self._update(content)
        if msg_type == "error":
            return self._error(content)
        return []  # comm messages, debug events...: not outputs

    def _live(self, sized: list[_Sized]) -> list[Event]:
        """What of *sized* is still within this execution's live budget. The first event
        over it stops the live feed for good: a consumer sees a prefix of the events,
        never one with holes, and the result says what it did not see."""
        sent: list[Event] = []
        for event, size in sized:
            if not self.live_dropped and self.live_events < self.max_live_events \
                    and self.live_bytes + size <= self.max_live_bytes:
                self.live_events += 1
                self.live_bytes += size
                sent.append(event)
            else:
                self.live_dropped += 1
                self.live_dropped_bytes += size
        return sent

    # -- bookkeeping ------------------------------------------------------------------
    @property
    def kept_bytes(self) -> int:
        return self.stream_bytes + self.rich_bytes

    def _clear(self) -> None:
        self.outputs.clear()
        self._sizes.clear()
        self._by_id.clear()
        self.stream_bytes = self.rich_bytes = 0
        self._clear_pending = False

    def _before_output(self) -> None:
        if self._clear_pending:
            self._clear()

    def _append(self, output: Output, size: int) -> None:
        if isinstance(output, DisplayOutput) and output.display_id is not None:
            self._by_id.setdefault(output.display_id, []).append(len(self.outputs))
        self.outputs.append(output)
        self._sizes.append(size)
        if isinstance(output, StreamOutput):
            self.stream_bytes += size
        else:
            self.rich_bytes += size

    def _full(self) -> bool:
        return len(self.outputs) >= self.max_outputs

    def _drop_output(self) -> None:
        """An output not kept at all (over max_outputs, or not even a placeholder fits)."""
        self.dropped_outputs += 1
        self.truncated = True

    def _mark_dropped(self, n: int) -> None:
        self.truncated = True
        self.dropped_bytes += max(n, 0)

    # -- streams ----------------------------------------------------------------------
    def _stream(self, content: dict[str, Any]) -> list[_Sized]:
        name, text = content["name"], content["text"]
        if name not in ("stdout", "stderr") or not isinstance(text, str):
            raise ValueError("bad stream message")
        self._before_output()
        last = self.outputs[-1] if self.outputs else None
        merge = isinstance(last, StreamOutput) and last.name == name
        size = utf8_len(text)
        if not merge and self._full():
            self._stream_dropped[name] = self._stream_dropped.get(name, 0) + size
            self._drop_output()
            return []
        room = self.max_bytes - 2 * self._reserve - self.stream_bytes
        if size > room:
            text = cut_utf8(text, room)
            self._lose_stream(name, size - utf8_len(text))
            if not text:
                return []
            size = utf8_len(text)
        if merge:
            assert isinstance(last, StreamOutput)
            last.text += text
            self._sizes[-1] += size
            self.stream_bytes += size
        else:
            self._append(StreamOutput(name=name, text=text), size)
        return [(StreamOutput(name=name, text=text), size)]

    def _lose_stream(self, name: str, lost: int) -> None:
        self._mark_dropped(lost)
        self._stream_dropped[name] = self._stream_dropped.get(name, 0) + lost

    # -- rich displays ------------------------------------------------------------------
    def _bundle(self, content: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        data = content["data"]
        metadata = content.get("metadata") or {}
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            raise TypeError("data/metadata must be objects")
        if not all(isinstance(k, str) for k in data):
            raise TypeError("MIME keys must be strings")
        return data, metadata

    def _placeholder(self, data: dict[str, Any], size: int) -> Bundle:
        return placeholder(data, size, self.max_bytes)

    def _admit(self, data: dict[str, Any], metadata: dict[str, Any], freed: int = 0,
               copies: int = 1) -> Bundle | None:
        """The bundle to keep (*copies* times, in place of *freed* bytes): itself if it
        fits, else a placeholder that says what was dropped, else None (nothing fits)."""
        size = bundle_size(data) + bundle_size(metadata)
        room = self.max_bytes - self.rich_bytes + freed
        if size * copies <= room:
            return data, metadata, size
        self._mark_dropped(size * copies)
        holder = self._placeholder(data, size)
        return holder if holder[2] * copies <= room else None

    def _display(self, msg_type: str, content: dict[str, Any]) -> list[_Sized]:
        bundle = self._bundle(content)
        self._before_output()
        if self._full():
            self._drop_output()
            return []
        admitted = self._admit(*bundle)
        if admitted is None:
            self._drop_output()
            return []
        data, metadata, size = admitted
        transient = content.get("transient") or {}
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        count = content.get("execution_count") if msg_type == "execute_result" else None
        out = DisplayOutput(
            type="execute_result" if msg_type == "execute_result" else "display_data",
            data=data, metadata=metadata,
            execution_count=count if isinstance(count, int) else None,
            display_id=display_id if isinstance(display_id, str) else None,
        )
        self._append(out, size)
        return [(out, size)]

    def _update(self, content: dict[str, Any]) -> list[_Sized]:
        transient = content.get("transient") or {}
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if not isinstance(display_id, str):
            raise ValueError("update_display_data without display_id")
        data, metadata = self._bundle(content)
        targets = self._by_id.get(display_id, [])
        if not targets:
            return self._foreign_update(display_id, data, metadata)
        freed = sum(self._sizes[i] for i in targets)
        admitted = self._admit(data, metadata, freed=freed, copies=len(targets))
        if admitted is None:  # not even placeholders fit: the old displays stay
            self._drop_output()
            return []
        data, metadata, size = admitted
        self.rich_bytes += size * len(targets) - freed
        # Every output showing this display id now shows the new data (counted once
        # per copy, like the outputs it replaces).
        for i in targets:
            out = self.outputs[i]
            assert isinstance(out, DisplayOutput)
            self.outputs[i] = DisplayOutput(type=out.type, data=data, metadata=metadata,
                                            execution_count=out.execution_count,
                                            display_id=display_id)
            self._sizes[i] = size
        updated = DisplayOutput(type="display_data", data=data, metadata=metadata,
                                display_id=display_id)
        return [(DisplayUpdate(display_id=display_id, output=updated), size)]

    def _foreign_update(self, display_id: str, data: dict[str, Any],
                        metadata: dict[str, Any]) -> list[_Sized]:
        """An update of a display this cell does not show (an earlier cell's, or none):
        nothing here to keep, so it only goes live, and no larger than a kept one."""
        size = bundle_size(data) + bundle_size(metadata)
        if size > self.max_bytes:
            data, metadata, size = self._placeholder(data, size)
        out = DisplayOutput(type="display_data", data=data, metadata=metadata,
                            display_id=display_id)
        return [(DisplayUpdate(display_id=display_id, output=out), size)]

    # -- errors -------------------------------------------------------------------------
    def _error(self, content: dict[str, Any]) -> list[_Sized]:
        ename, evalue = content["ename"], content["evalue"]
        traceback = content.get("traceback") or []
        if not isinstance(ename, str) or not isinstance(evalue, str):
            raise TypeError("ename/evalue must be strings")
        if not isinstance(traceback, list):
            raise TypeError("traceback must be a list")
        self._before_output()
        if self._full():
            self._drop_output()
            return []
        fitted = fit_error(ename, evalue, traceback, self.max_bytes - self.rich_bytes)
        if fitted is None:
            self._drop_output()
            return []
        out, lost = fitted
        if lost:
            self._mark_dropped(lost)
        size = output_size(out)
        self._append(out, size)
        return [(out, size)]

    # -- the end ------------------------------------------------------------------------
    def finish(self) -> list[Output]:
        """Close the fold: mark truncated streams in their text (where the marker fits)
        and say every cut in ``notes``."""
        for name, dropped in self._stream_dropped.items():
            self._mark_stream(name, dropped)
        self._stream_dropped.clear()
        if self.dropped_bytes:
            self.notes.append(
                f"output truncated: {human_bytes(self.dropped_bytes)} beyond the "
                f"{human_bytes(self.max_bytes)} per-execution limit (for stream text, and "
                f"for rich outputs) were not kept"
            )
        if self.dropped_outputs:
            self.notes.append(
                f"{self.dropped_outputs} output(s) not kept: over the limit of "
                f"{self.max_outputs} outputs or {human_bytes(self.max_bytes)} per execution")
        if self.live_dropped:
            self.notes.append(
                f"live output stopped: {self.live_dropped} event(s) "
                f"({human_bytes(self.live_dropped_bytes)}) were not sent as they happened, "
                f"over the per-execution live limit of {self.max_live_events} events or "
                f"{human_bytes(self.max_live_bytes)}; the outputs of this result are "
                "complete within the output limits")
        if self.malformed:
            self.notes.append(f"{self.malformed} malformed message(s) from the kernel ignored")
        return self.outputs

    def _mark_stream(self, name: str, dropped: int) -> None:
        marker = f"\n[output truncated: {human_bytes(dropped)} more on {name} not kept]\n"
        last = next((i for i in range(len(self.outputs) - 1, -1, -1)
                     if isinstance(self.outputs[i], StreamOutput)
                     and self.outputs[i].name == name), None)  # type: ignore[union-attr]
        if last is None:
            marker = marker.lstrip("\n")
        size = utf8_len(marker)
        if self.stream_bytes + size > self.max_bytes or (last is None and self._full()):
            return  # no room for it: the note in notes says it all the same
        if last is not None:
            out = self.outputs[last]
            assert isinstance(out, StreamOutput)
            out.text += marker
            self._sizes[last] += size
            self.stream_bytes += size
        else:
            self._append(StreamOutput(name=name, text=marker), size)  # type: ignore[arg-type]
