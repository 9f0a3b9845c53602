"""Agent Box: hardened Jupyter-kernel sandboxes.

    async with AsyncSession() as box:             # or: with Session() as box:
        result = await box.execute("df.describe()")
        result.status, result.stdout, result.outputs, result.images

Sessions, the manager and pool, settings, results and errors are all here;
everything else is internal.

The leaf names (settings, results, outputs, errors) are imported with the package;
the engine's (sessions, the manager, the image build), which bring docker, pyzmq and
jupyter_client, on first use: ``from sandbox import ExecutionResult`` (what
``api.client`` needs) costs none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sandbox._config import _ENV_NAME as ENV_NAME_PATTERN
from sandbox._config import _RESERVED_ENV as RESERVED_ENV
from sandbox._config import ManagerConfig, SandboxConfig, make_config
from sandbox._exceptions import (
    CapacityError,
    ConfigError,
    DeadlineExceeded,
    EngineUnavailableError,
    FileOperationError,
    ImageBuildError,
    ImageError,
    SandboxError,
    SessionBusyError,
    SessionClosedError,
    SessionLostError,
    SessionNotFoundError,
    SessionStartError,
    UnsafePathError,
)
from sandbox._extras import MissingExtraError
from sandbox._models import (
    DATAFRAME_MIME,
    DisplayOutput,
    ErrorOutput,
    ExecutionResult,
    FileInfo,
    KernelDeath,
    Output,
    SessionInfo,
    StreamOutput,
    TimeoutInfo,
)
from sandbox._outputs import ClearOutput, DisplayUpdate, Event

if TYPE_CHECKING:
    from sandbox._exceptions import StartQueueFullError
    from sandbox._image import image_tag
    from sandbox._manager import SessionManager
    from sandbox._notebook import SKIPPED as NOTEBOOK_SKIPPED
    from sandbox._notebook import notebook_chunks, notebook_dict
    from sandbox._runtime.dockerd.build import build_image
    from sandbox._session import AsyncSession, SessionState
    from sandbox._sync import Session

# Engine names (and nbformat's): the module each is imported from when first asked for,
# and its name there when that differs.
_LAZY = {
    "AsyncSession": "sandbox._session",
    "SessionState": "sandbox._session",
    "Session": "sandbox._sync",
    "SessionManager": "sandbox._manager",
    "StartQueueFullError": "sandbox._exceptions",
    "build_image": "sandbox._runtime.dockerd.build",
    "image_tag": "sandbox._image",
    "notebook_dict": "sandbox._notebook",
    "notebook_chunks": "sandbox._notebook",
    "NOTEBOOK_SKIPPED": "sandbox._notebook:SKIPPED",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DATAFRAME_MIME",
    "ENV_NAME_PATTERN",
    "NOTEBOOK_SKIPPED",
    "RESERVED_ENV",
    "AsyncSession",
    "CapacityError",
    "ClearOutput",
    "ConfigError",
    "DeadlineExceeded",
    "DisplayOutput",
    "DisplayUpdate",
    "EngineUnavailableError",
    "ErrorOutput",
    "Event",
    "ExecutionResult",
    "FileInfo",
    "FileOperationError",
    "ImageBuildError",
    "ImageError",
    "KernelDeath",
    "ManagerConfig",
    "MissingExtraError",
    "Output",
    "SandboxConfig",
    "SandboxError",
    "Session",
    "SessionBusyError",
    "SessionClosedError",
    "SessionInfo",
    "SessionLostError",
    "SessionManager",
    "SessionNotFoundError",
    "SessionStartError",
    "SessionState",
    "StartQueueFullError",
    "StreamOutput",
    "TimeoutInfo",
    "UnsafePathError",
    "build_image",
    "image_tag",
    "make_config",
    "notebook_chunks",
    "notebook_dict",
]
