"""SandboxConfig: hardened defaults, and bad settings refused before any container exists."""

from __future__ import annotations

import pydantic
import pytest

from sandbox._config import SandboxConfig, make_config
from sandbox._exceptions import ConfigError


@pytest.mark.parametrize(("values", "field"), [
    ({"memory_mb": 63}, "memory_mb"),
    ({"cpus": -1}, "cpus"),
    ({"cpus": 0}, "cpus"),
    ({"pids": 15}, "pids"),
    ({"memroy_mb": 512}, "memroy_mb"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"A-B": "x"}}, "env"),
    ({"env": {"PATH": "/evil"}}, "env"),
    ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "env"),
    ({"env": {"OK": "a\0b"}}, "env"),
    ({"network": "host"}, "network"),
    ({"network": "container:other"}, "network"),
    ({"user": "0:0"}, "user"),
])
def test_invalid_settings_raise_config_error_naming_the_field(
        values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}\b") as info:
        make_config(values)
    assert isinstance(info.value, ValueError)


def test_env_errors_say_which_variable() -> None:
    with pytest.raises(ConfigError, match="LD_PRELOAD"):
        make_config(env={"LD_PRELOAD": "/x.so"})
    with pytest.raises(ConfigError, match="NUL"):
        make_config(env={"TOKEN": "a\0b"})


def test_valid_env_and_network_are_accepted() -> None:
    cfg = make_config({"env": {"MY_VAR": "1"}}, network="bridge")
    assert cfg.env == {"MY_VAR": "1"} and cfg.network == "bridge"


def test_defaults_are_hardened() -> None:
    cfg = SandboxConfig()
    assert cfg.network == "none"
    assert cfg.read_only_root is True
    assert cfg.drop_all_capabilities is True
    assert cfg.no_new_privileges is True
    assert cfg.user == "1000:1000" and (cfg.uid, cfg.gid) == (1000, 1000)
    assert cfg.runtime == "runc" and cfg.env == {}


def test_config_is_frozen() -> None:
    cfg = SandboxConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.network = "bridge"
    assert cfg.network == "none"


def test_with_returns_a_validated_copy() -> None:
    cfg = make_config(memory_mb=512)
    copy = cfg.with_(cpus=2.0)
    assert (copy.cpus, copy.memory_mb) == (2.0, 512)
    assert cfg.cpus == 1.0
    with pytest.raises(ConfigError, match="network"):
        cfg.with_(network="host")
    with pytest.raises(ConfigError, match="pids"):
        cfg.with_(pids=1)


def test_pool_compatibility() -> None:
    assert SandboxConfig().is_pool_compatible()
    assert make_config(image="custom:1").is_pool_compatible()
    assert not make_config(memory_mb=2048).is_pool_compatible()
    assert not SandboxConfig().with_(cpus=0.5).is_pool_compatible()
    assert not make_config(env={"X": "1"}).is_pool_compatible()
    assert not make_config(network="bridge").is_pool_compatible()


def test_env_of_a_frozen_config_cannot_be_changed_after_validation() -> None:
    cfg = make_config(env={"A": "1"})
    with pytest.raises(TypeError):
        cfg.env["LD_PRELOAD"] = "/tmp/x.so"
