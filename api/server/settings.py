"""Service settings: one object, built at start-up from ``AGENTBOX_*`` variables
(and the ``agentbox serve`` flags, which override them)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agentbox"


class Settings(BaseSettings):
    """Everything the HTTP service needs to know; validated once."""

    model_config = SettingsConfigDict(env_prefix="AGENTBOX_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: str = Field("", description="Comma-separated bearer tokens.")
    api_keys_file: Path | None = Field(None, description="One token per line; # comments.")
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in "
                                     "data_dir. postgresql+psycopg://... for several servers.")

    pool_size: int = Field(2, ge=0, le=256)
    max_sessions: int = Field(32, ge=1, le=10_000)
    max_sessions_per_key: int = Field(8, ge=1, le=10_000)
    # Cold starts at once, and how long a create may wait in line for one (then 503
    # with Retry-After); see ManagerConfig.
    max_concurrent_starts: int = Field(2, ge=1, le=256)
    start_queue_timeout_s: float = Field(20.0, ge=0, le=600)

    # Server-side maxima of what a key may ask for.
    max_memory_mb: int = Field(4096, ge=64)
    max_cpus: float = Field(2.0, ge=0.01)
    max_pids: int = Field(1024, ge=16)
    max_execution_timeout_s: float = Field(600.0, gt=0)
    max_idle_timeout_s: float = Field(3600.0, gt=0)
    max_lifetime_s: float = Field(24 * 3600.0, gt=0)
    default_execution_timeout_s: float = Field(60.0, gt=0)
    default_idle_timeout_s: float = Field(900.0, gt=0)
    default_lifetime_s: float = Field(4 * 3600.0, gt=0)

    max_code_bytes: int = Field(1024 * 1024, ge=1)
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1)
    file_timeout_s: float = Field(60.0, gt=0, le=3600, description="A file operation the "
                                  "box does not finish by then (host clock) is a 504.")
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024,
                                   description="JSON bodies; uploads have their own limit.")
    notebook_retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    # What the history keeps (characters of code + result JSON, api/server/store.py): per
    # execution, and per key in all (past it, executions are stored as stubs of at most
    # 8 KiB: status, the code's start, notes). Cuts are said in the result's notes.
    history_max_execution_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    history_max_bytes_per_key: int = Field(1024 * 1024 * 1024, ge=1024 * 1024)
    # A notebook export reads at most this much stored code and results and holds at most
    # this many outputs (later cells keep the start of their code, lose their outputs, and
    # say so); it is built in a child process (api/server/export.py), this many at once (more
    # wait for a turn), within notebook_export_timeout_s (then 503).
    notebook_max_bytes: int = Field(128 * 1024 * 1024, ge=1024 * 1024)
    notebook_max_outputs: int = Field(200_000, ge=100)
    notebook_export_concurrency: int = Field(2, ge=1, le=64)
    notebook_export_timeout_s: float = Field(120.0, gt=0, le=3600)
    # Events queued for one event-stream (SSE) client that reads slower than its cell
    # writes. Past either bound it gets no more live events: a `lagging` event at once,
    # and the final result (complete, as JSON execute returns it) says how many it missed.
    sse_queue_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    sse_queue_events: int = Field(10_000, ge=10)
    keepalive_s: float = Field(15.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0)

    # Client connections (api/server/connections.py): what a client can hold before it has
    # shown a key. Idle keep-alive connections close after uvicorn's 5 s.
    max_connections: int = Field(1024, ge=1, description="Open HTTP connections in total; "
                                 "lowered at start to fit RLIMIT_NOFILE minus fd_reserve.")
    max_connections_per_client: int = Field(128, ge=1, description="Open connections per "
                                            "client IPv4 address or IPv6 /64.")
    header_timeout_s: float = Field(10.0, gt=0, description="From connect (or a request's "
                                    "first byte) to the end of its head; then 408, closed.")
    body_timeout_s: float = Field(60.0, gt=0, description="From the end of a request head "
                                  "to the end of its body; then 408, closed.")
    send_timeout_s: float = Field(60.0, gt=0, description="A client that reads none of a "
                                  "response for this long is cut.")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="A request head larger "
                                  "than this is a 400.")
    accept_backlog: int = Field(128, ge=1, le=65535, description="Listen backlog, and the "
                                "most connections asyncio accepts per loop turn.")
    fd_reserve: int | None = Field(None, ge=0, description="Descriptors kept free of client "
                                   "connections; default 64 + 16 per session/pool kernel "
                                   "+ accept_backlog.")

    @model_validator(mode="after")
    def _refuse_open_bind_without_keys(self) -> Settings:
        if self.host not in LOOPBACK and not self.keys():
            raise ValueError(f"refusing to listen on {self.host} without API keys: set "
                             "AGENTBOX_API_KEYS or AGENTBOX_API_KEYS_FILE, or bind 127.0.0.1")
        return self

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> Settings:
        for name in ("execution_timeout_s", "idle_timeout_s", "lifetime_s"):
            default, cap = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            if default > cap:
                raise ValueError(f"default_{name} ({default:g}) is above max_{name} ({cap:g}): "
                                 "sessions that ask for no limit would get more than the maximum")
        return self

    def keys(self) -> dict[str, str]:
        """token -> key id (a short hash: what logs and the database see)."""
        tokens = [t.strip() for t in self.api_keys.split(",") if t.strip()]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    tokens.append(line)
        return {t: "k-" + hashlib.sha256(t.encode()).hexdigest()[:12] for t in tokens}

    @property
    def auth_enabled(self) -> bool:
        return bool(self.keys())

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'history.sqlite3'}"
