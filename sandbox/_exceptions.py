"""Every error the sandbox raises.

    SandboxError
    ├── ConfigError                 bad settings or arguments (also a ValueError)
    ├── EngineUnavailableError      no Docker engine answers
    ├── ImageError                  kernel image missing or its build failed
    │   └── ImageBuildError         a build step failed (names the step)
    ├── SessionStartError           container or kernel did not come up
    │   └── StartQueueFullError     too many starts in line; retry after retry_after_s
    ├── SessionClosedError          the session was closed; nothing more can run
    ├── SessionBusyError            another execution is running on the session
    ├── SessionLostError            the container vanished or cannot be recovered
    ├── CapacityError               the manager is at its session limit
    ├── SessionNotFoundError        no session with that id
    ├── FileOperationError          a file upload/download/list/delete failed
    │   └── UnsafePathError         a path escapes the working directory (also ValueError)
    └── DeadlineExceeded            a wait ran past its deadline (also TimeoutError)

Docker and ZMQ errors become these at the runtime and kernel boundaries; code
above ``sandbox._runtime`` never sees ``docker.errors``. An error in the *user's*
code is not an exception: it is an :class:`ExecutionResult` with status "error".
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error raised by the sandbox."""


class ConfigError(SandboxError, ValueError):
    """A setting or argument is invalid; nothing was changed."""


class EngineUnavailableError(SandboxError):
    """The Docker engine does not answer (not running, or not reachable)."""


class ImageError(SandboxError):
    """The kernel image is missing or unusable."""


class ImageBuildError(ImageError):
    """A step of `agentbox image build` failed."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"image build failed at step '{step}': {reason}")
        self.step = step
        self.reason = reason


class SessionStartError(SandboxError):
    """The container or its kernel did not become ready."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class StartQueueFullError(SessionStartError):
    """Too many sessions are starting: this one would have waited in line for a start
    slot longer than ``start_queue_timeout_s`` (or did). Nothing was started;
    ``retry_after_s`` is when a retry can expect to get through."""

    def __init__(self, message: str, *, session_id: str, retry_after_s: float) -> None:
        super().__init__(message, session_id=session_id)
        self.retry_after_s = retry_after_s


class SessionClosedError(SandboxError):
    """The session is closed; start a new one."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} is closed")
        self.session_id = session_id


class SessionBusyError(SandboxError):
    """Another execution is running on this session and the caller chose not to wait."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} is busy with another execution")
        self.session_id = session_id


class SessionLostError(SandboxError):
    """The session's container is gone and could not be replaced."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class CapacityError(SandboxError):
    """The manager already runs its maximum number of sessions."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"session limit reached ({limit} sessions); close one and retry")
        self.limit = limit


class SessionNotFoundError(SandboxError, KeyError):
    """No live session has this id."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}")
        self.session_id = session_id

    def __str__(self) -> str:
        return str(self.args[0])


class FileOperationError(SandboxError):
    """A file operation inside the sandbox failed; ``code`` says how (``not_found``,
    ``too_large``, ``is_directory``, ``symlink``, ``unsafe_path``, ``no_space``...)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class UnsafePathError(FileOperationError, ValueError):
    """The path is absolute, contains '..' or NUL, or is otherwise not allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unsafe_path")


class DeadlineExceeded(SandboxError, TimeoutError):
    """A wait ran past its deadline; the message says which one."""
