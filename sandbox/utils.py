"""Small helpers the front ends share with the library (public: ``api.server`` uses only
public ``sandbox`` names)."""

from __future__ import annotations

import os

from sandbox._extras import require as require_extra
from sandbox._output_caps import human_bytes
from sandbox._tasks import cancel_and_wait


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["cancel_and_wait", "human_bytes", "pid_alive", "require_extra"]
