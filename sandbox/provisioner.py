"""The provisioner's old address (kernelspecs name the entry point ``agentbox-provisioner``,
not this module; code that imported it from here keeps working)."""

from sandbox.integrations.kernelspec import install_kernel_spec, kernel_spec_dict
from sandbox.integrations.provisioner import (
    DISPLAY_NAME,
    KERNEL_NAME,
    LABEL_KERNEL_ID,
    PROVISIONER_NAME,
    AgentBoxProvisioner,
)

__all__ = ["DISPLAY_NAME", "KERNEL_NAME", "LABEL_KERNEL_ID", "PROVISIONER_NAME",
           "AgentBoxProvisioner", "install_kernel_spec", "kernel_spec_dict"]
