"""The Docker runtime: the only package that imports the docker SDK.

``errors`` (the one translation table), ``client`` (connect), ``container`` (the
hardened container's arguments), ``runtime`` (:class:`DockerRuntime`), ``execs`` and
``attach`` (commands in a box and their output stream), ``build`` (the kernel image),
``diagnose`` (what health and the doctor ask the engine).
"""

from sandbox._runtime.dockerd.client import connect
from sandbox._runtime.dockerd.runtime import DockerRuntime, default_runtime

__all__ = ["DockerRuntime", "connect", "default_runtime"]
