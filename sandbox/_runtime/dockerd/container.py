"""The docker SDK arguments of a hardened sandbox container (pure; tested without Docker)."""

from __future__ import annotations

from typing import Any

from docker.types import LogConfig, Mount, Ulimit

from sandbox._runtime.base import CONTAINER_HOME, CONTAINER_RUN_DIR, ContainerSpec
from sandbox._runtime.seccomp import security_opt as seccomp_security_opt


def container_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The docker SDK arguments for a hardened sandbox container (pure; tested)."""
    cfg = spec.config
    tmpfs = {
        "/tmp": f"rw,nosuid,nodev,noexec,size={cfg.tmp_size_mb}m,mode=1777",
        CONTAINER_HOME: (f"rw,nosuid,nodev,size={cfg.workdir_size_mb}m,"
                         f"uid={cfg.uid},gid={cfg.gid},mode=0700"),
    }
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "detach": True,
        "user": cfg.user,
        # The image has a passwd entry for uid 1000 only; a per-session uid has none, and
        # getpass.getuser() reads these first.
        "environment": {"USER": "sandbox", "LOGNAME": "sandbox", **spec.env},
        "working_dir": CONTAINER_HOME,
        "labels": dict(spec.labels),
        "hostname": "sandbox",
        "network_mode": cfg.network,
        "read_only": cfg.read_only_root,
        "mem_limit": f"{cfg.memory_mb}m",
        "memswap_limit": f"{cfg.memory_mb}m",  # swap equal to memory: no swap at all
        "pids_limit": cfg.pids,
        "nano_cpus": int(cfg.cpus * 1e9),
        "ulimits": [Ulimit(name="nofile", soft=cfg.open_files, hard=cfg.open_files)],
        "tmpfs": tmpfs,
        "mounts": [Mount(target=CONTAINER_RUN_DIR, source=str(spec.run_dir), type="bind",
                         read_only=False)],
        "log_config": LogConfig(type="json-file",
                                config={"max-size": str(cfg.log_max_bytes), "max-file": "1"}),
        "ipc_mode": "private",
        "init": False,  # the image's own init (agentbox-init) is PID 1
        "auto_remove": False,  # keep the state for OOM/exit inspection until we remove it
    }
    if cfg.network != "host" and not cfg.network.startswith("container:"):
        # Docker sets this to 0 in every container of its own network namespace:
        # without it uid 1000 could bind port 80. (gVisor ignores it; see docs/security.md.)
        kwargs["sysctls"] = {"net.ipv4.ip_unprivileged_port_start": "1024"}
    if cfg.drop_all_capabilities:
        kwargs["cap_drop"] = ["ALL"]
    # Docker's default seccomp profile less io_uring and AF_VSOCK (sandbox/_runtime/seccomp.py).
    kwargs["security_opt"] = [seccomp_security_opt(cfg.runtime)]
    if cfg.no_new_privileges:
        kwargs["security_opt"].append("no-new-privileges:true")
    if cfg.runtime != "runc":
        kwargs["runtime"] = cfg.runtime
    return kwargs
