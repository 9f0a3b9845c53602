"""Request and response bodies of the HTTP contract (v1), apart from core models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """What a session may use; each capped by the server's maxima (422 above them)."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int | None = Field(None, ge=64)
    cpus: float | None = Field(None, ge=0.01)
    pids: int | None = Field(None, ge=16)
    execution_timeout_s: float | None = Field(None, gt=0)
    idle_timeout_s: float | None = Field(None, gt=0)
    max_lifetime_s: float | None = Field(None, gt=0)


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: Limits = Field(default_factory=Limits)
    env: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


class SessionOut(BaseModel):
    id: str
    status: str
    created_at: float
    limits: dict[str, Any]
    metadata: dict[str, str]
    from_pool: bool = False


class SessionList(BaseModel):
    sessions: list[SessionOut]


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    timeout_s: float | None = Field(None, gt=0)


class OneShotRequest(ExecuteRequest):
    limits: Limits = Field(default_factory=Limits)
    env: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class FileOut(BaseModel):
    path: str
    size: int
    modified: float
    is_dir: bool


class FileList(BaseModel):
    files: list[FileOut]


class ExecuteResponse(BaseModel):
    """Same shape as ``ExecutionResult.to_dict()``; outputs keep the Jupyter shape."""

    status: Literal["ok", "error", "timeout", "died"]
    execution_count: int | None
    outputs: list[dict[str, Any]]
    stdout: str
    stderr: str
    error: dict[str, Any] | None
    duration_ms: float
    truncated: bool
    timeout: dict[str, Any] | None = None
    death: dict[str, Any] | None = None
    kernel_restarted: bool = False
    notes: list[str] = Field(default_factory=list)
