"""The old address of :func:`connect`, kept while callers move to
:mod:`sandbox._runtime.dockerd`."""

from sandbox._runtime.dockerd.client import connect
from sandbox._runtime.dockerd.errors import ENGINE_HINT

__all__ = ["ENGINE_HINT", "connect"]
