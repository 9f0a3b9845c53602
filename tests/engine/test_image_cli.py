"""The built image and the commands around it, against the real engine."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sandbox._image import image_tag
from sandbox._runtime.dockerd.build import build_image
from sandbox.cli.doctor import run_checks

pytestmark = pytest.mark.usefixtures("engine")


def docker_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "run", "--rm", *args], capture_output=True, text=True,
                          timeout=120)


def test_image_runs_hardened_with_the_data_stack() -> None:
    proc = docker_run("--read-only", "--network", "none", "--cap-drop", "ALL",
                      "--security-opt", "no-new-privileges", "--user", "1000:1000",
                      "--entrypoint", "python", image_tag(),
                      "-c", "import pandas, matplotlib, ipykernel, scipy, pyarrow, numpy; print('ok')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_image_holds_no_wheels_compilers_or_setuid_helpers() -> None:
    script = ("find / -xdev \\( -name '*.whl' -o -perm /6000 -type f \\) -print 2>/dev/null; "
              "for c in gcc cc g++ clang pip pip3; do command -v $c; done; "
              "find / -xdev -user 1000 -not -path '/home/sandbox*' -print 2>/dev/null; true")
    proc = docker_run("--entrypoint", "sh", image_tag(), "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_image_user_is_not_root(engine: object) -> None:
    config = engine.images.get(image_tag()).attrs["Config"]  # type: ignore[attr-defined]
    assert config["User"] == "1000:1000"


def test_second_build_is_a_no_op() -> None:
    t0 = time.monotonic()
    tag = build_image()
    assert tag == image_tag()
    assert time.monotonic() - t0 < 10


def test_doctor_reports_this_machine_truthfully(engine: object) -> None:
    report = run_checks()
    checks = {c.name: c for c in report.checks}
    assert report.ok, report.to_dict()
    assert checks["limits enforced"].ok
    assert checks["kernel image"].ok
    runtimes = engine.info().get("Runtimes", {})  # type: ignore[attr-defined]
    assert checks["runtime runsc (gVisor)"].ok == ("runsc" in runtimes)


def test_doctor_cli_exit_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "sandbox.cli", "doctor"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ready: sandboxes can run here" in proc.stdout


async def test_the_runtime_probe_sees_the_engine_and_the_image() -> None:
    from sandbox._runtime.dockerd import DockerRuntime

    runtime = DockerRuntime()
    try:
        probe = await runtime.probe()
    finally:
        await runtime.close()
    assert probe.ok and probe.image == image_tag() and probe.engine_error == ""
    assert probe.as_health() == {"engine": True, "image": image_tag(), "image_present": True}
