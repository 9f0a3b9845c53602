"""The old address of the Docker runtime, kept while callers move to
:mod:`sandbox._runtime.dockerd` (a module named after the library it wraps misled
readers and tools). Imports nothing of its own."""

from sandbox._runtime.dockerd.attach import MAX_EXEC_FRAME, MAX_EXEC_STDERR, ExecStream
from sandbox._runtime.dockerd.container import container_kwargs
from sandbox._runtime.dockerd.execs import MAX_ABANDONED_EXECS
from sandbox._runtime.dockerd.runtime import DockerRuntime, default_runtime

__all__ = ["MAX_ABANDONED_EXECS", "MAX_EXEC_FRAME", "MAX_EXEC_STDERR", "DockerRuntime",
           "ExecStream", "container_kwargs", "default_runtime"]
