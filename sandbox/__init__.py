"""Agent Box: hardened Jupyter-kernel sandboxes.

    async with AsyncSession() as box:             # or: with Session() as box:
        result = await box.execute("df.describe()")
        result.status, result.stdout, result.outputs, result.images

Sessions, the manager and pool, settings, results and errors are all here;
everything else is internal.
"""

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
from sandbox._image import build_image, image_tag
from sandbox._manager import SessionManager
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
from sandbox._session import AsyncSession, SessionState
from sandbox._sync import Session

__all__ = [
    "DATAFRAME_MIME",
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
    "StreamOutput",
    "TimeoutInfo",
    "UnsafePathError",
    "build_image",
    "image_tag",
    "make_config",
]
