"""Request and response bodies of the HTTP contract (v1), apart from core models.

Every body and answer is a model here, so the OpenAPI document is one a generator can
use as it is; :func:`document_settings` adds what the server's Settings decide (the
maxima, the environment-name rule) to the document it serves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from api.server.settings import Settings
from sandbox import ENV_NAME_PATTERN, RESERVED_ENV


class Limits(BaseModel):
    """What a session may use; each capped by the server's maxima (422 above them)."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int | None = Field(None, ge=64)
    # Below 0.1 CPU the kernel does not start by the start deadline (0.01: > 30 s, then
    # a 503); 0.1 starts in about 6 s, 0.25 in about 2 s on a 2-core machine.
    cpus: float | None = Field(None, ge=0.1)
    pids: int | None = Field(None, ge=16)
    execution_timeout_s: float | None = Field(None, gt=0)
    idle_timeout_s: float | None = Field(None, gt=0)
    max_lifetime_s: float | None = Field(None, gt=0)


class CreateSession(BaseModel):
    """Every field has a default: a POST /v1/sessions without a body is this, empty."""

    model_config = ConfigDict(extra="forbid")

    limits: Limits = Field(default_factory=Limits)
    env: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


# SessionState's values (sandbox/_session.py); "closed" also for a session whose
# sandbox is gone.
SessionStatus = Literal["new", "starting", "ready", "busy", "dead", "closed"]


class SessionOut(BaseModel):
    id: str
    status: SessionStatus
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
    """Every 4xx and 5xx of the API (validation errors too: 422 invalid_request)."""

    error: ErrorBody


class FileOut(BaseModel):
    path: str
    size: int
    modified: float
    is_dir: bool


class FileList(BaseModel):
    files: list[FileOut]


class Health(BaseModel):
    """/healthz: 200 with status ok, or 503 with status unavailable (same body)."""

    status: Literal["ok", "unavailable"]
    engine: bool
    engine_error: str | None = None
    image: str | None = None
    image_present: bool
    pool: int
    pool_target: int
    sessions: int
    accepting: bool


class Notebook(BaseModel):
    """An nbformat 4 notebook (cells as nbformat defines them)."""

    model_config = ConfigDict(extra="allow")

    nbformat: int
    nbformat_minor: int
    metadata: dict[str, Any]
    cells: list[dict[str, Any]]


# Outputs keep the wire key ``type`` (what clients read today) and also carry nbformat's
# own name for it, ``output_type``, with the same value. Unknown keys are kept.

class StreamOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["stream"]
    name: Literal["stdout", "stderr"]
    text: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def output_type(self) -> Literal["stream"]:
        return self.type


class DisplayOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["display_data", "execute_result"]
    data: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    execution_count: int | None = None
    display_id: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def output_type(self) -> Literal["display_data", "execute_result"]:
        return self.type


class ErrorOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["error"]
    ename: str
    evalue: str
    traceback: list[str]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def output_type(self) -> Literal["error"]:
        return self.type


Output = Annotated[StreamOut | DisplayOut | ErrorOut, Field(discriminator="type")]


class CellError(BaseModel):
    ename: str
    evalue: str
    traceback: list[str]


class TimeoutOut(BaseModel):
    limit_s: float
    ended_by: Literal["interrupt", "restart", "replace"]
    state_lost: bool
    files_lost: bool = False


class DeathOut(BaseModel):
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    container_gone: bool = False


class ExecuteResponse(BaseModel):
    """Same shape as ``ExecutionResult.to_dict()``; outputs keep the Jupyter shape."""

    status: Literal["ok", "error", "timeout", "died"]
    execution_count: int | None
    outputs: list[Output]
    stdout: str
    stderr: str
    error: CellError | None
    duration_ms: float
    truncated: bool
    timeout: TimeoutOut | None = None
    death: DeathOut | None = None
    kernel_restarted: bool = False
    notes: list[str] = Field(default_factory=list)


# -- the result on the wire, without a validation pass -------------------------------
# ExecuteResponse is the declaration; what the service answers is already its shape but
# for what the output models add (their defaults, the computed output_type). Those are
# read from the models here, once, so the hot path fills them in with dict operations
# instead of validating and re-serializing every result (tests/api/test_wire_shape.py
# checks that both give the same JSON).
_OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "stream": StreamOut, "display_data": DisplayOut, "execute_result": DisplayOut,
    "error": ErrorOut}
_OUTPUT_DEFAULTS = {kind: {name: field.get_default(call_default_factory=True)
                           for name, field in model.model_fields.items()
                           if not field.is_required()}
                    for kind, model in _OUTPUT_MODELS.items()}
_RESULT_DEFAULTS = {name: field.get_default(call_default_factory=True)
                    for name, field in ExecuteResponse.model_fields.items()
                    if not field.is_required()}


def wire_output(out: dict[str, Any]) -> dict[str, Any]:
    """An output as its model serializes it: defaults filled in, output_type added."""
    kind = out["type"]
    return {**_OUTPUT_DEFAULTS[kind], **out, "output_type": kind}


def wire_result(body: dict[str, Any]) -> dict[str, Any]:
    """``ExecutionResult.to_dict()`` (plus the service's notes) as ExecuteResponse
    serializes it."""
    return {**_RESULT_DEFAULTS, **body, "outputs": [wire_output(o) for o in body["outputs"]]}


def error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with the real error body; named
    ones (``e409="..."``) with a description. Listing 422 also keeps FastAPI from adding
    its HTTPValidationError, which the server never sends."""
    out: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in statuses}
    for name, description in described.items():
        out[int(name.removeprefix("e"))] = {"model": ErrorResponse, "description": description}
    return out


# -- what the Settings add to the served document ------------------------------------

def _value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``X | None`` (or the property itself)."""
    branches: list[dict[str, Any]] = prop.get("anyOf", [])
    return next((b for b in branches if b.get("type") != "null"), prop)


NO_NUL = "^[^\\x00]*$"


def env_schema() -> dict[str, Any]:
    """The environment rule of sandbox/_config.py: identifier names, none the sandbox
    sets itself, values without NUL."""
    return {"type": "object", "title": "Env",
            "propertyNames": {"pattern": ENV_NAME_PATTERN.pattern,
                              "not": {"enum": sorted(RESERVED_ENV)}},
            "additionalProperties": {"type": "string", "pattern": NO_NUL}}


def _component(not_first: str = "") -> str:
    """A path component the server takes: no '/' or NUL, not '.' or '..', at most 255
    characters (sandbox/_files.py counts bytes: the same for ASCII)."""
    char = r"[^/\x00]"
    return (rf"(?:[^/\x00.{not_first}]{char}{{0,254}}|\.[^/\x00.]{char}{{0,253}}"
            rf"|\.\.{char}{{1,253}})")


_PART, _FIRST = _component(), _component(r"\\")
_ANY = rf"(?:{_PART}|\.)"
# check_path's rule as a pattern: relative (no leading '/' or '\'), no '..' component,
# no NUL; a file names something below the working directory, a listing may name it.
FILE_PATH = rf"^(?:{_FIRST}|\.(?:/+\.)*/+{_PART})(?:/+{_ANY})*/*$"
DIR_PATH = rf"^(?:(?:{_FIRST}|\.)(?:/+{_ANY})*/*)?$"
MAX_PATH_CHARS = 1024  # bytes, for the server; JSON Schema counts characters


def _document_paths(openapi: dict[str, Any]) -> None:
    """The file path rule on every ``path`` parameter of the files routes (the server
    answers 400 unsafe_path outside it; not validated by FastAPI, so that stays)."""
    for route, operations in openapi.get("paths", {}).items():
        if "/files" not in route:
            continue
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param.get("name") == "path":
                    pattern = FILE_PATH if param.get("in") == "path" else DIR_PATH
                    param["schema"].update(pattern=pattern, maxLength=MAX_PATH_CHARS)
                    # A path may have '/' in it (fuzzers leave such values out otherwise).
                    param["example"] = "data/results.csv"


def document_settings(openapi: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Put the server's maxima, the env-name rule and the code's no-NUL rule into
    *openapi* (in place): a request the document allows is one the server accepts,
    but for sizes in bytes (413), which JSON Schema cannot say."""
    models = openapi.get("components", {}).get("schemas", {})
    maxima = {"memory_mb": settings.max_memory_mb, "cpus": settings.max_cpus,
              "pids": settings.max_pids,
              "execution_timeout_s": settings.max_execution_timeout_s,
              "idle_timeout_s": settings.max_idle_timeout_s,
              "max_lifetime_s": settings.max_lifetime_s}
    limits = models.get("Limits", {}).get("properties", {})
    for name, maximum in maxima.items():
        if name in limits:
            _value_schema(limits[name])["maximum"] = maximum
    for model in ("ExecuteRequest", "OneShotRequest"):
        props = models.get(model, {}).get("properties", {})
        if "timeout_s" in props:
            _value_schema(props["timeout_s"])["maximum"] = settings.max_execution_timeout_s
        if "code" in props:
            props["code"] = {"type": "string", "title": "Code", "pattern": NO_NUL}
    for model in ("CreateSession", "OneShotRequest"):
        props = models.get(model, {}).get("properties", {})
        if "env" in props:
            props["env"] = env_schema()
    _document_paths(openapi)
    return openapi
