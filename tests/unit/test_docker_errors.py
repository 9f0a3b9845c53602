"""The Docker error seam: every docker SDK and transport error becomes one of ours.

The SDK's error classes are found by introspection, so a class a new docker release
adds fails here until the table (sandbox/_runtime/dockerd/errors.py) says what it is.
The runtime's own paths are driven with a stub client that raises, no engine needed.
"""

from __future__ import annotations

import gc
import inspect
import signal
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
import requests.exceptions

from sandbox._config import SandboxConfig
from sandbox._exceptions import (
    EngineUnavailableError,
    FileOperationError,
    ImageBuildError,
    ImageError,
    SandboxError,
    SessionStartError,
)
from sandbox._runtime.base import ContainerSpec
from sandbox._runtime.dockerd import errors
from sandbox._runtime.dockerd.client import connect
from sandbox._runtime.dockerd.runtime import DockerRuntime

WHAT = "inspect container"


def response(status: int) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    return r


def api(cls: type[docker.errors.APIError], status: int, said: str) -> docker.errors.APIError:
    return cls(f"{status} Client Error", response=response(status), explanation=said)


def instance(cls: type[BaseException]) -> BaseException:
    """One of *cls*, made the way the SDK makes it."""
    if issubclass(cls, docker.errors.APIError):
        return api(cls, 404 if issubclass(cls, docker.errors.NotFound) else 500,
                   "No such thing: abc")
    made: dict[type[BaseException], Any] = {
        docker.errors.ContainerError: lambda: cls("c1", 3, ["python3"], "img", b"boom\nmore"),
        docker.errors.BuildError: lambda: cls("step 3 failed", build_log=[]),
        docker.errors.TLSParameterError: lambda: cls("bad TLS parameters"),
        docker.errors.MissingContextParameter: lambda: cls("host"),
        docker.errors.ContextAlreadyExists: lambda: cls("ctx"),
        docker.errors.ContextException: lambda: cls("bad context"),
        docker.errors.ContextNotFound: lambda: cls("ctx"),
        docker.errors.StreamParseError: lambda: cls("bad json"),
    }
    return made[cls]() if cls in made else cls("something went wrong")


# What each class of docker.errors becomes. A new class fails the test below.
EXPECTED: dict[str, type[SandboxError]] = {
    "ImageNotFound": ImageError,
    "NotFound": SandboxError,
    "APIError": SandboxError,
    "BuildError": ImageBuildError,
    "ContainerError": SandboxError,
    "DockerException": SandboxError,
    "InvalidVersion": SandboxError,
    "InvalidRepository": SandboxError,
    "InvalidConfigFile": SandboxError,
    "InvalidArgument": SandboxError,
    "DeprecatedMethod": SandboxError,
    "TLSParameterError": SandboxError,
    "NullResource": SandboxError,
    "StreamParseError": SandboxError,
    "ImageLoadError": SandboxError,
    "MissingContextParameter": SandboxError,
    "ContextAlreadyExists": SandboxError,
    "ContextException": SandboxError,
    "ContextNotFound": SandboxError,
}
SDK_ERRORS = sorted(
    (c for c in vars(docker.errors).values()
     if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == "docker.errors"),
    key=lambda c: c.__name__)


def test_every_error_class_of_the_sdk_is_in_the_table() -> None:
    names = {c.__name__ for c in SDK_ERRORS}
    assert names == set(EXPECTED), (
        f"docker.errors changed: new {sorted(names - set(EXPECTED))}, gone "
        f"{sorted(set(EXPECTED) - names)}; say in sandbox/_runtime/dockerd/errors.py what "
        "they become")
    for cls in SDK_ERRORS:
        assert issubclass(cls, errors.DOCKER_ERRORS), f"{cls.__name__} is not caught by guarded()"


@pytest.mark.parametrize("cls", SDK_ERRORS, ids=lambda c: c.__name__)
def test_each_sdk_error_becomes_ours_with_a_clear_message(cls: type[BaseException]) -> None:
    ours = errors.translate(WHAT, instance(cls))
    assert type(ours) is EXPECTED[cls.__name__]
    text = str(ours)
    assert "\n" not in text and len(text) < 400, text
    assert WHAT in text, text
    assert text.rstrip().endswith(":") is False and len(text) > len(WHAT) + 5, text


def test_the_engines_own_words_are_kept() -> None:
    assert "No such thing: abc" in str(errors.translate(WHAT, api(docker.errors.NotFound, 404,
                                                                  "No such thing: abc")))
    missing = errors.translate("run", api(docker.errors.ImageNotFound, 404, "no such image"))
    assert "agentbox image build" in str(missing) and "no such image" in str(missing)
    exited = errors.translate("probe", instance(docker.errors.ContainerError))
    assert "exited 3: boom" in str(exited)


@pytest.mark.parametrize("exc", [
    requests.exceptions.ConnectionError("Connection aborted. FileNotFoundError(2)"),
    requests.exceptions.ReadTimeout("UnixHTTPConnectionPool: Read timed out. (read timeout=5)"),
    requests.exceptions.ConnectTimeout("connect timed out"),
    requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
    requests.exceptions.RequestException("something"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    BrokenPipeError(32, "Broken pipe"),
], ids=lambda e: type(e).__name__)
def test_an_engine_that_does_not_answer_says_so_and_what_to_do(exc: BaseException) -> None:
    ours = errors.translate(WHAT, exc)
    assert type(ours) is EngineUnavailableError
    assert "does not answer" in str(ours) and errors.ENGINE_HINT in str(ours)
    assert str(ours).startswith(WHAT)


def test_an_answer_that_says_no_is_not_an_outage() -> None:
    # APIError is also a requests HTTPError: the table must see it first.
    assert isinstance(api(docker.errors.APIError, 500, "x"), requests.exceptions.RequestException)
    assert type(errors.translate(WHAT, api(docker.errors.APIError, 500, "x"))) is SandboxError


def test_guarded_translates_keeps_the_cause_and_lets_the_rest_through() -> None:
    cause = requests.exceptions.ConnectionError("refused")

    def fails(exc: BaseException) -> None:
        raise exc

    with pytest.raises(EngineUnavailableError) as caught:
        errors.guarded(WHAT, fails, cause)
    assert caught.value.__cause__ is cause
    ours = FileOperationError("stuck", "stuck")
    with pytest.raises(FileOperationError) as passed:
        errors.guarded(WHAT, fails, ours)
    assert passed.value is ours
    # Not the SDK's: a socket's own timeout stays a TimeoutError (exec's deadline logic).
    with pytest.raises(TimeoutError):
        errors.guarded(WHAT, fails, TimeoutError("timed out"))
    with pytest.raises(ValueError):
        errors.guarded(WHAT, fails, ValueError("a bug of ours"))
    assert errors.guarded(WHAT, lambda: 42) == 42


def test_the_special_cases() -> None:
    assert type(errors.start_failed("agentbox-s-1", "agentbox-kernel:x",
                                    api(docker.errors.ImageNotFound, 404, "no"))) is ImageError
    started = errors.start_failed("agentbox-s-1", "img", api(docker.errors.APIError, 500,
                                                             "OCI runtime create failed"))
    assert type(started) is SessionStartError
    assert str(started) == "container agentbox-s-1 did not start: OCI runtime create failed"
    assert type(errors.start_failed("n", "i", ConnectionRefusedError())) is EngineUnavailableError
    for status in (404, 409):
        cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
        refused = errors.exec_refused(api(cls, status, "is not running"))
        assert type(refused) is FileOperationError and "not running" in str(refused)
    assert type(errors.exec_refused(api(docker.errors.APIError, 500, "x"))) is SandboxError
    built = errors.build_failed("engine", api(docker.errors.APIError, 500, "disk full"))
    assert type(built) is ImageBuildError and built.step == "engine" and "disk full" in str(built)
    assert type(errors.build_failed("engine", requests.exceptions.ReadTimeout())) \
        is EngineUnavailableError


# docker-py leaves the socket of a failed connect to the garbage collector (see
# tests/faults/test_engine_outage.py): it is collected inside the test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_connecting_to_no_engine_names_where_it_looked(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    where = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", where)
    with pytest.raises(EngineUnavailableError) as caught:
        connect(timeout=2)
    text = str(caught.value)
    del caught
    gc.collect()
    assert f"no Docker engine answers at {where}" in text
    assert errors.ENGINE_HINT in text


# -- the runtime's own paths, on a client that raises ---------------------------------


class Raising:
    """Any attribute is this again; calling it raises *exc* (or returns *value*)."""

    def __init__(self, exc: BaseException | None = None, value: Any = None) -> None:
        self.exc, self.value, self.calls = exc, value, 0

    def __getattr__(self, name: str) -> Raising:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.exc is not None:
            raise self.exc
        return self.value


def runtime_raising(exc: BaseException) -> tuple[DockerRuntime, Raising]:
    client = Raising(exc)
    return DockerRuntime(client), client  # type: ignore[arg-type]


SPEC = ContainerSpec(name="agentbox-s-1", image="agentbox-kernel:x", config=SandboxConfig(),
                     run_dir=Path("/tmp/agentbox/s-1"), env={}, labels={})


async def test_the_runtime_translates_on_every_path() -> None:
    down = requests.exceptions.ConnectionError("refused")
    for call in (lambda rt: rt.state("c"), lambda rt: rt.list({"a": "b"}),
                 lambda rt: rt.remove("c"), lambda rt: rt.signal("c", signal.SIGINT),
                 lambda rt: rt.start(SPEC)):
        rt, _ = runtime_raising(down)
        with pytest.raises(EngineUnavailableError, match="does not answer"):
            await call(rt)
    rt, _ = runtime_raising(api(docker.errors.ImageNotFound, 404, "no such image"))
    with pytest.raises(ImageError, match="agentbox image build"):
        await rt.start(SPEC)
    rt, client = runtime_raising(api(docker.errors.APIError, 500, "OCI runtime create failed"))
    with pytest.raises(SessionStartError, match="OCI runtime create failed"):
        await rt.start(SPEC)
    assert client.calls == 2  # the run, then the removal of what it may have left


async def test_gone_or_busy_containers_are_not_errors_where_that_is_the_goal() -> None:
    for exc in (api(docker.errors.NotFound, 404, "gone"), api(docker.errors.APIError, 409, "busy")):
        rt, _ = runtime_raising(exc)
        await rt.remove("c")
        await rt.signal("c", signal.SIGKILL)
    rt, _ = runtime_raising(api(docker.errors.NotFound, 404, "gone"))
    assert (await rt.state("c")).exists is False
    rt, _ = runtime_raising(api(docker.errors.APIError, 500, "engine error"))
    with pytest.raises(SandboxError, match="remove container: engine error"):
        await rt.remove("c")


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_probe_of_no_engine_says_so_and_does_not_raise(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    probe = await DockerRuntime().probe(timeout_s=2)
    gc.collect()
    assert not probe.engine and not probe.ok and "no Docker engine answers" in probe.engine_error
    assert probe.as_health() == {"engine": False, "engine_error": probe.engine_error,
                                 "image_present": False}
