"""What an execution returns: outputs in Jupyter's shapes, and the result around them.

Outputs keep the Jupyter message order and the complete MIME bundle with its
metadata; binary types (``image/png``...) stay base64 text exactly as the kernel
sent them, which is also how nbformat stores them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal

DATAFRAME_MIME = "application/vnd.agentbox.dataframe+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml")

Status = Literal["ok", "error", "timeout", "died"]


@dataclass(slots=True)
class StreamOutput:
    """Text the cell wrote to stdout or stderr (consecutive chunks merged)."""

    name: Literal["stdout", "stderr"]
    text: str
    type: Literal["stream"] = "stream"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "text": self.text}


@dataclass(slots=True)
class DisplayOutput:
    """A rich value: ``display_data`` or the cell's ``execute_result``."""

    type: Literal["display_data", "execute_result"]
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    execution_count: int | None = None
    display_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "data": self.data, "metadata": self.metadata}
        if self.type == "execute_result":
            out["execution_count"] = self.execution_count
        if self.display_id is not None:
            out["display_id"] = self.display_id
        return out


@dataclass(slots=True)
class ErrorOutput:
    """An exception raised by the cell; the traceback has no ANSI colour codes."""

    ename: str
    evalue: str
    traceback: list[str]
    type: Literal["error"] = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "ename": self.ename, "evalue": self.evalue,
                "traceback": self.traceback}


Output = StreamOutput | DisplayOutput | ErrorOutput


def output_from_dict(data: dict[str, Any]) -> Output:
    """An output from its ``to_dict`` form (Jupyter's shape)."""
    kind = data.get("type")
    if kind == "stream":
        return StreamOutput(name=data["name"], text=data["text"])
    if kind == "error":
        return ErrorOutput(ename=data["ename"], evalue=data["evalue"],
                           traceback=list(data.get("traceback", [])))
    if kind in ("display_data", "execute_result"):
        return DisplayOutput(type=kind, data=dict(data.get("data", {})),
                             metadata=dict(data.get("metadata", {})),
                             execution_count=data.get("execution_count"),
                             display_id=data.get("display_id"))
    raise ValueError(f"unknown output type {kind!r}")


@dataclass(frozen=True, slots=True)
class KernelDeath:
    """Why a kernel stopped on its own."""

    reason: str
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    container_gone: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "exit_code": self.exit_code, "signal": self.signal,
                "oom_killed": self.oom_killed, "container_gone": self.container_gone}


@dataclass(frozen=True, slots=True)
class TimeoutInfo:
    """How a cell over its time limit was ended.

    ``ended_by`` is the step that stopped it: ``interrupt`` (SIGINT; state kept),
    ``restart`` (kernel killed and started again; variables lost, files kept) or
    ``replace`` (container replaced; variables and files lost).
    """

    limit_s: float
    ended_by: Literal["interrupt", "restart", "replace"]
    state_lost: bool
    files_lost: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"limit_s": self.limit_s, "ended_by": self.ended_by,
                "state_lost": self.state_lost, "files_lost": self.files_lost}


@dataclass(slots=True)
class ExecutionResult:
    """The outcome of one cell.

    ``status`` is ``ok``, ``error`` (the code raised), ``timeout`` (see
    ``timeout``) or ``died`` (the kernel stopped; see ``death``). An error in the
    user's code is a result, never an exception.
    """

    status: Status
    execution_count: int | None
    outputs: list[Output]
    duration_s: float
    truncated: bool = False
    timeout: TimeoutInfo | None = None
    death: KernelDeath | None = None
    kernel_restarted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def stdout(self) -> str:
        return "".join(o.text for o in self.outputs
                       if isinstance(o, StreamOutput) and o.name == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(o.text for o in self.outputs
                       if isinstance(o, StreamOutput) and o.name == "stderr")

    @property
    def error(self) -> ErrorOutput | None:
        return next((o for o in reversed(self.outputs) if isinstance(o, ErrorOutput)), None)

    @property
    def result(self) -> DisplayOutput | None:
        """The cell's value (``execute_result``), if it had one."""
        return next((o for o in self.outputs
                     if isinstance(o, DisplayOutput) and o.type == "execute_result"), None)

    @property
    def text(self) -> str | None:
        """``text/plain`` of the cell's value."""
        res = self.result
        value = res.data.get("text/plain") if res else None
        return value if isinstance(value, str) else None

    @property
    def displays(self) -> list[DisplayOutput]:
        return [o for o in self.outputs if isinstance(o, DisplayOutput)]

    @property
    def html(self) -> list[str]:
        return [d.data["text/html"] for d in self.displays
                if isinstance(d.data.get("text/html"), str)]

    @property
    def images(self) -> list[tuple[str, bytes]]:
        """Every image as (MIME type, bytes), in output order (SVG as UTF-8 bytes)."""
        found: list[tuple[str, bytes]] = []
        for d in self.displays:
            for mime in IMAGE_MIMES:
                value = d.data.get(mime)
                if not isinstance(value, str):
                    continue
                if mime == "image/svg+xml":
                    found.append((mime, value.encode()))
                else:
                    try:
                        found.append((mime, base64.b64decode(value, validate=False)))
                    except ValueError:
                        continue
        return found

    @property
    def dataframes(self) -> list[dict[str, Any]]:
        """Structured forms of displayed pandas objects (columns, dtypes, rows, shape)."""
        return [d.data[DATAFRAME_MIME] for d in self.displays
                if isinstance(d.data.get(DATAFRAME_MIME), dict)]

    def to_dict(self) -> dict[str, Any]:
        err = self.error
        return {
            "status": self.status,
            "execution_count": self.execution_count,
            "outputs": [o.to_dict() for o in self.outputs],
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": None if err is None else {"ename": err.ename, "evalue": err.evalue,
                                               "traceback": err.traceback},
            "duration_ms": round(self.duration_s * 1000, 3),
            "truncated": self.truncated,
            "timeout": None if self.timeout is None else self.timeout.to_dict(),
            "death": None if self.death is None else self.death.to_dict(),
            "kernel_restarted": self.kernel_restarted,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=1)[:2000]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        """The inverse of :meth:`to_dict`, for every status and output kind:
        ``ExecutionResult.from_dict(r.to_dict()).to_dict() == r.to_dict()`` (the duration
        is kept to the microsecond, as ``to_dict`` writes it). The HTTP client builds its
        results with it; a LangGraph state or checkpoint can keep ``to_dict()`` (plain
        JSON) and rebuild the result with it. Derived keys (``stdout``, ``error``...) are
        recomputed from ``outputs``."""
        timeout = data.get("timeout")
        death = data.get("death")
        return cls(
            status=data["status"], execution_count=data.get("execution_count"),
            outputs=[output_from_dict(o) for o in data.get("outputs", [])],
            duration_s=float(data.get("duration_ms", 0.0)) / 1000,
            truncated=bool(data.get("truncated", False)),
            timeout=TimeoutInfo(**timeout) if isinstance(timeout, dict) else None,
            death=KernelDeath(**death) if isinstance(death, dict) else None,
            kernel_restarted=bool(data.get("kernel_restarted", False)),
            notes=list(data.get("notes", [])),
        )


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session is and how long starting it took."""

    id: str
    container_id: str
    image: str
    runtime: str
    created_at: float
    from_pool: bool
    phases: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "container_id": self.container_id, "image": self.image,
                "runtime": self.runtime, "created_at": self.created_at,
                "from_pool": self.from_pool, "phases": dict(self.phases)}


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file in the session's working directory."""

    path: str
    size: int
    modified: float
    is_dir: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "modified": self.modified,
                "is_dir": self.is_dir}
