"""Settings for a sandbox session and for the manager that owns sessions.

Every hardening measure is on by default and is a named field; turning one off
is an explicit, visible choice of the caller (``network="bridge"``,
``read_only_root=False``...). Limits are validated here, once, so a bad value
fails before any container exists.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox._exceptions import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = {"HOME", "PATH", "IPYTHONDIR", "MPLCONFIGDIR", "MPLBACKEND",
                 "AGENTBOX_RUN_DIR", "AGENTBOX_AUTOSTART", "PYTHONPATH", "LD_PRELOAD",
                 "LD_LIBRARY_PATH", "PYTHONSTARTUP", "PYTHONHOME"}

MiB = 1024 * 1024


class FrozenEnv(dict[str, str]):
    """A dict that refuses changes: a validated environment stays validated."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("SandboxConfig.env is read-only; use config.with_(env=...)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


class SandboxConfig(BaseModel):
    """How one session's container and kernel are set up. Immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str | None = Field(
        None, description="Kernel image; default: the tag built from this package's kernel_image/."
    )
    runtime: Literal["runc", "runsc"] = "runc"

    # Hardening: all on; each can only be loosened explicitly.
    user: str = Field("1000:1000", pattern=r"^[1-9][0-9]*:[1-9][0-9]*$")
    # Each session's box runs as a host uid:gid of its own (sandbox/_uids.py), so the
    # kernel's per-uid quotas (inotify, message queues, pending signals) are not shared
    # between sessions or with the host's uid 1000; `user` is used when this is off or
    # the host process is not root.
    per_session_uid: bool = True
    read_only_root: bool = True
    network: str = Field("none", description="Docker network mode; 'none' leaves only loopback.")
    drop_all_capabilities: bool = True
    no_new_privileges: bool = True

    # Resource limits, enforced by the kernel's cgroup and checked from inside in tests.
    memory_mb: int = Field(1024, ge=64, le=256 * 1024)
    # 0.01 CPU is the smallest quota the kernel's CFS accepts (1 ms per 100 ms period);
    # anything smaller would either be refused by the engine or read as "no limit".
    cpus: float = Field(1.0, ge=0.01, le=256.0)
    pids: int = Field(256, ge=16, le=32768)
    open_files: int = Field(1024, ge=64, le=1_048_576)
    tmp_size_mb: int = Field(256, ge=1, le=64 * 1024)
    workdir_size_mb: int = Field(512, ge=1, le=256 * 1024)
    log_max_bytes: int = Field(1 * MiB, ge=64 * 1024, le=1024 * MiB)

    env: dict[str, str] = Field(default_factory=dict,
                                description="The only environment the kernel gets besides "
                                "the image's own; nothing of the host is passed.")

    # Time.
    execution_timeout_s: float = Field(60.0, gt=0, le=24 * 3600)
    interrupt_grace_s: float = Field(2.0, ge=0, le=600)
    start_timeout_s: float = Field(30.0, gt=0, le=600)

    # Output bounds: what the host keeps per execution, and the largest single message
    # it accepts off the wire at all (larger ones are dropped by ZMQ unread).
    max_output_bytes: int = Field(4 * MiB, ge=1024, le=1024 * MiB)
    max_message_bytes: int = Field(64 * MiB, ge=64 * 1024, le=2048 * MiB)
    # How many outputs one execution keeps (stream runs, displays, errors): tiny ones
    # cost little in bytes but an object, a history entry and a notebook output each.
    max_outputs: int = Field(10_000, ge=10, le=1_000_000)
    # What one execution sends live (stream(), on_output, the API's event stream), on
    # top of what it keeps: a clear_output + print loop keeps little but never stops
    # sending. Past either bound the live feed stops and the result says so.
    max_live_events: int = Field(1_000_000, ge=100, le=100_000_000)
    max_live_bytes: int = Field(256 * MiB, ge=64 * 1024, le=64 * 1024 * MiB)

    # Files.
    max_upload_bytes: int = Field(100 * MiB, ge=1, le=16 * 1024 * MiB)
    max_download_bytes: int = Field(100 * MiB, ge=1, le=16 * 1024 * MiB)
    # A file operation runs a helper inside the box, which the box can stop or slow down:
    # each one is cut at file_timeout_s measured on the host (a wait for a turn, too), and
    # a session runs at most max_file_ops at once with at most max_file_queue waiting
    # (more: a "busy" error at once), so one box cannot hold what other sessions need.
    file_timeout_s: float = Field(60.0, gt=0, le=3600)
    max_file_ops: int = Field(4, ge=1, le=64)
    max_file_queue: int = Field(16, ge=0, le=1024)

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"invalid environment variable name {name!r}")
            if name in _RESERVED_ENV:
                raise ValueError(f"environment variable {name} is set by the sandbox itself")
            if "\0" in value:
                raise ValueError(f"environment variable {name} contains a NUL byte")
        return FrozenEnv(env)

    @field_validator("network")
    @classmethod
    def _check_network(cls, value: str) -> str:
        if value == "host" or value.startswith("container:"):
            raise ValueError(f"network mode {value!r} would share the host's or another "
                             "container's network namespace; not allowed")
        return value

    def with_(self, **changes: object) -> SandboxConfig:
        """A copy with *changes* applied and validated (ConfigError when invalid)."""
        return make_config({**self.model_dump(), "env": dict(self.env)} | changes)

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1])

    def is_pool_compatible(self) -> bool:
        """Whether a kernel started with the default settings can serve this config."""
        return self == SandboxConfig(image=self.image)


def make_config(values: dict[str, object] | None = None, **kwargs: object) -> SandboxConfig:
    """Build a SandboxConfig, turning validation errors into one clear ConfigError."""
    try:
        return SandboxConfig.model_validate({**(values or {}), **kwargs})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "invalid sandbox settings: " + "; ".join(parts)


def default_base_dir() -> Path:
    """Where per-session run directories live on the host (short: socket paths max 107 bytes)."""
    env = os.environ.get("AGENTBOX_RUN_ROOT")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"agentbox-{os.getuid()}"


class ManagerConfig(BaseModel):
    """How a SessionManager runs: capacity, pool, lifetimes, reaper."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_sessions: int = Field(64, ge=1, le=10_000)
    pool_size: int = Field(0, ge=0, le=256)
    idle_timeout_s: float | None = Field(900.0, gt=0)
    max_lifetime_s: float | None = Field(4 * 3600.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0, le=3600)
    # Cold starts at once (each is ~1 CPU-second of engine, runtime and kernel work): a
    # burst on a small machine otherwise runs every start at once and all miss their
    # deadline together. The rest wait in line for at most start_queue_timeout_s
    # (0: never wait; refuse unless a slot is free).
    max_concurrent_starts: int = Field(2, ge=1, le=256)
    start_queue_timeout_s: float = Field(20.0, ge=0, le=600)
    run_root: Path = Field(default_factory=default_base_dir)
    instance_id: str | None = Field(None, pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    session_defaults: SandboxConfig = Field(default_factory=SandboxConfig)
