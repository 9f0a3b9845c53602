"""The provisioner's settings and its wiring of the KernelManager, apart from the kernel's
lifecycle (:mod:`sandbox.integrations.provisioner`).

- the traits a kernelspec or Jupyter config sets, and the :class:`~sandbox.SandboxConfig`
  built from them;
- what of the box the provisioner info keeps (for a Jupyter server that restarts);
- the KernelManager's transport: ZMQ ``ipc`` with fixed "ports" 1..5 and ``ip`` =
  ``<run dir>/k1`` (the host paths of the kernel's sockets), its own connection file,
  and the container-side one (``<run dir>/kernel.json``: same key and ports, ``ip`` =
  ``/run/kernel/k1``).
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, Float, Integer, Unicode

from sandbox._box import Box
from sandbox._compat import connection_file_written
from sandbox._config import SandboxConfig, make_config
from sandbox._endpoint import PORTS, connection_info, write_connection_file

PROVISIONER_NAME = "agentbox-provisioner"
KERNEL_NAME = "agentbox"
DISPLAY_NAME = "Python 3 (Agent Box sandbox)"
LABEL_KERNEL_ID = "org.agentbox.kernel-id"

CONNECTION_FILE = "kernel.json"  # the container-side connection file, in the run dir
SOCKET_PREFIX = "k1"  # sockets are <run dir>/k1-1 .. k1-5 (/run/kernel/k1-N inside)


class ProvisionerSettings(KernelProvisionerBase):
    """The traits of :class:`~sandbox.integrations.provisioner.AgentBoxProvisioner` and
    what it does with the KernelManager before a launch."""

    memory_mb = Integer(None, allow_none=True, config=True,
                        help="Memory limit of the sandbox in MiB (default: SandboxConfig's).")
    cpus = Float(None, allow_none=True, config=True,
                 help="CPU limit of the sandbox (default: SandboxConfig's).")
    pids = Integer(None, allow_none=True, config=True,
                   help="Process limit of the sandbox (default: SandboxConfig's).")
    image = Unicode(None, allow_none=True, config=True,
                    help="Kernel image (default: the tag built from this package).")
    sandbox_config = Dict(config=True,
                          help="Any other SandboxConfig fields, e.g. {'execution_timeout_s': 600}."
                               " Hardening settings are loosened only when named here.")

    run_dir: Path | None  # the kernel's run directory (set by the provisioner)

    def build_config(self, env: dict[str, str] | None = None) -> SandboxConfig:
        """The SandboxConfig for this kernel: defaults, then the traits (validated)."""
        values: dict[str, object] = dict(self.sandbox_config)
        for name in ("memory_mb", "cpus", "pids", "image"):
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        if env:
            base = values.get("env")
            values["env"] = {**(base if isinstance(base, dict) else {}), **env}
        return make_config(values)

    def _manager(self) -> KernelManager:
        km = self.parent
        if not isinstance(km, KernelManager):
            raise RuntimeError("AgentBoxProvisioner must be created by a jupyter_client "
                               "KernelManager")
        return km

    def _socket_paths(self) -> list[Path]:
        assert self.run_dir is not None
        return [self.run_dir / f"{SOCKET_PREFIX}-{port}" for port in PORTS.values()]

    def _remove_sockets(self) -> None:
        for path in self._socket_paths():
            with contextlib.suppress(OSError):
                path.unlink()

    def _wire_manager(self, km: KernelManager, config: SandboxConfig, *, fresh: bool,
                      session_name: str | None) -> None:
        """Point *km* at the run dir's sockets and write both connection files."""
        assert self.run_dir is not None
        if fresh:
            # A new run dir: new socket paths and a fresh 256-bit key. (On a restart
            # both stay, so clients already connected simply reconnect.)
            if connection_file_written(km):
                km.cleanup_connection_file()
            km.session.key = secrets.token_hex(32).encode()
        km.transport = "ipc"
        km.ip = str(self.run_dir / SOCKET_PREFIX)
        for name, port in PORTS.items():
            setattr(km, name, port)
        if session_name is not None:
            km.write_connection_file(jupyter_session=session_name)
        else:
            km.write_connection_file()
        self.connection_info = km.get_connection_info()
        self._write_container_connection_file(km, config)

    def _write_container_connection_file(self, km: KernelManager, config: SandboxConfig) -> None:
        """``kernel.json`` as the kernel sees it: same key and ports, container paths."""
        assert self.run_dir is not None
        key = km.session.key
        info = connection_info(SOCKET_PREFIX, key.decode() if isinstance(key, bytes) else str(key),
                               signature_scheme=km.session.signature_scheme,
                               kernel_name=km.kernel_name or KERNEL_NAME)
        write_connection_file(self.run_dir / CONNECTION_FILE, info, config.uid, config.gid)


def box_info(box: Box | None) -> dict[str, Any]:
    """The box's part of ``get_provisioner_info``."""
    key = box.init.key if box is not None else None
    return {
        "container_id": box.container_id if box is not None else None,
        "generation": box.init_generation if box is not None else 0,
        "containers": box.containers if box is not None else 0,
        # Host-side only (the provisioner info is kept by the host, never the box).
        "init_key": key.hex() if key is not None else None,
    }


def restore_box(box: Box, info: dict[str, Any]) -> None:
    """Back from :func:`box_info` (``load_provisioner_info``; the values are not trusted)."""
    container = info.get("container_id")
    box.container_id = box.init.container_id = container if isinstance(container, str) else None
    box.init_generation = int(info.get("generation") or 0)
    box.containers = int(info.get("containers") or 0)
    init_key = info.get("init_key")
    box.init.key = bytes.fromhex(init_key) if isinstance(init_key, str) else None
