"""The Agent Box kernelspec: a ``kernel.json`` whose ``metadata.kernel_provisioner`` names
:class:`~sandbox.integrations.provisioner.AgentBoxProvisioner` (entry point
``agentbox-provisioner``), and its installation (``agentbox kernelspec install``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sandbox.integrations.provisioner import (
    DISPLAY_NAME,
    KERNEL_NAME,
    PROVISIONER_NAME,
    AgentBoxProvisioner,
)


def kernel_spec_dict(display_name: str = DISPLAY_NAME,
                     config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``kernel.json`` of the Agent Box kernelspec.

    ``argv`` is never run (the provisioner starts the kernel in a container) but is a
    valid ipykernel command line, as front ends expect one.
    """
    return {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": PROVISIONER_NAME,
                "config": dict(config or {}),
            },
        },
    }


def install_kernel_spec(name: str = KERNEL_NAME, *, user: bool = False,
                        prefix: str | None = None, display_name: str = DISPLAY_NAME,
                        config: dict[str, Any] | None = None) -> str:
    """Install the kernelspec (system-wide, ``user``, or under ``prefix``); its directory.

    *config* holds the provisioner's settings (``memory_mb``, ``cpus``, ``pids``,
    ``image``, ``sandbox_config``); they are validated now (ConfigError), not at the
    first kernel start.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    AgentBoxProvisioner(**(config or {})).build_config()

    with tempfile.TemporaryDirectory(prefix="agentbox-kernelspec-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - copied with its mode: every Jupyter user reads it
        spec_file = Path(tmp) / "kernel.json"
        spec_file.write_text(json.dumps(kernel_spec_dict(display_name, config), indent=1) + "\n")
        spec_file.chmod(0o644)
        destination: str = KernelSpecManager().install_kernel_spec(tmp, kernel_name=name, user=user,
                                                              prefix=prefix)
    return destination


__all__ = ["install_kernel_spec", "kernel_spec_dict"]
