"""container_kwargs: the docker SDK arguments that make a sandbox container hardened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox._config import SandboxConfig, make_config
from sandbox._runtime.base import CONTAINER_HOME, CONTAINER_RUN_DIR, ContainerSpec
from sandbox._runtime.dockerd.container import container_kwargs

ENV = {"AGENTBOX_AUTOSTART": "/run/kernel/connection.json", "MY_VAR": "1"}
LABELS = {"org.agentbox.app": "agentbox", "org.agentbox.session": "s-1"}


def kwargs_for(config: SandboxConfig | None = None) -> dict[str, Any]:
    spec = ContainerSpec(name="agentbox-s-1", image="agentbox-kernel:abc",
                         config=config or SandboxConfig(), run_dir=Path("/tmp/agentbox/s-1"),
                         env=dict(ENV), labels=dict(LABELS))
    return container_kwargs(spec)


def test_default_container_is_locked_down() -> None:
    kw = kwargs_for()
    assert kw["image"] == "agentbox-kernel:abc" and kw["name"] == "agentbox-s-1"
    assert kw["read_only"] is True
    assert kw["network_mode"] == "none"
    assert kw["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in kw["security_opt"]
    assert kw["user"] == "1000:1000"
    assert not kw.get("privileged")
    assert "cap_add" not in kw and "devices" not in kw and "volumes" not in kw


def test_resource_limits() -> None:
    kw = kwargs_for(make_config(memory_mb=512, cpus=1.5, pids=100, open_files=2048))
    assert kw["mem_limit"] == "512m"
    assert kw["memswap_limit"] == kw["mem_limit"]  # no swap
    assert kw["pids_limit"] == 100
    assert kw["nano_cpus"] == 1_500_000_000
    [nofile] = kw["ulimits"]
    assert (nofile["Name"], nofile["Soft"], nofile["Hard"]) == ("nofile", 2048, 2048)


def test_tmpfs_and_the_single_bind_mount() -> None:
    kw = kwargs_for(make_config(tmp_size_mb=32, workdir_size_mb=64))
    assert set(kw["tmpfs"]) == {"/tmp", CONTAINER_HOME}
    assert "size=32m" in kw["tmpfs"]["/tmp"].split(",")
    home = kw["tmpfs"][CONTAINER_HOME].split(",")
    assert "size=64m" in home and "uid=1000" in home and "nosuid" in home
    [mount] = kw["mounts"]
    assert (mount["Target"], mount["Source"], mount["Type"]) == (
        CONTAINER_RUN_DIR, "/tmp/agentbox/s-1", "bind")


def test_logs_are_bounded() -> None:
    log = kwargs_for(make_config(log_max_bytes=128 * 1024))["log_config"]
    assert log["Type"] == "json-file"
    assert log["Config"]["max-size"] == str(128 * 1024)


def test_runtime_key_only_for_gvisor() -> None:
    assert "runtime" not in kwargs_for()
    assert kwargs_for(make_config(runtime="runsc"))["runtime"] == "runsc"


def test_environment_is_the_spec_env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBOX_TEST_CANARY", "leaked")
    kw = kwargs_for()
    assert kw["environment"] == {"USER": "sandbox", "LOGNAME": "sandbox", **ENV}
    assert "AGENTBOX_TEST_CANARY" not in kw["environment"]


def test_labels_are_passed_through() -> None:
    assert kwargs_for()["labels"] == LABELS


def test_explicit_loosening_removes_the_restrictions() -> None:
    kw = kwargs_for(make_config(drop_all_capabilities=False, no_new_privileges=False,
                                read_only_root=False, network="bridge"))
    assert "cap_drop" not in kw and "no-new-privileges:true" not in kw["security_opt"]
    assert kw["read_only"] is False and kw["network_mode"] == "bridge"
