"""Bounds of the streamable-HTTP endpoint, shared by the session guard and the handles."""

from __future__ import annotations

import dataclasses
import math

from sandbox._exceptions import ConfigError

CLOSE_TIMEOUT_S = 30.0
HTTP_MAX_SESSIONS = 32  # open MCP sessions over streamable HTTP, each with at most one sandbox
HTTP_IDLE_TIMEOUT_S = 5 * 60.0  # a session with no request for this long is closed, its sandbox removed


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Bounds of the streamable-HTTP endpoint (the CLI's --max-sessions, --idle-timeout)."""

    max_sessions: int = HTTP_MAX_SESSIONS
    idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 10_000:
            raise ConfigError(f"max_sessions must be 1..10000, not {self.max_sessions}")
        if not (math.isfinite(self.idle_timeout_s) and 0 < self.idle_timeout_s <= 24 * 3600):
            raise ConfigError(f"idle_timeout_s must be in (0, 86400], not {self.idle_timeout_s}")


@dataclasses.dataclass
class Tracked:
    """A session's or a handle's activity: when last used, calls in flight, whose."""

    last_active: float
    in_flight: int = 0
    owner: bytes = b""  # a session's: digest of the Authorization header that opened it

