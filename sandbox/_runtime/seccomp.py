"""The seccomp profile every sandbox container gets.

``seccomp.json`` next to this module is Docker 20.10's default profile with io_uring
removed, ``socket(AF_VSOCK, ...)`` refused and 32-bit ``socketcall`` removed;
``scripts/make-seccomp-profile`` derives it from moby's file and says why.

runc installs it in the host kernel. gVisor applies it inside its own kernel when
runsc runs with ``--oci-seccomp`` (``scripts/ensure-docker`` registers it so), with
one difference handled here: this gVisor build ignores a rule's ``errnoRet``, so
Docker's "clone3 fails with ENOSYS" rule would answer EPERM, and glibc's
``pthread_create`` only falls back to ``clone`` on ENOSYS: no thread could start.
Under gVisor clone3 is therefore left to gVisor itself (it answers ENOSYS; its user
namespaces never reach the host kernel either way).
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

PROFILE_FILE = "seccomp.json"


@functools.cache
def profile() -> dict[str, Any]:
    """The profile as data (parsed once; callers must not change it)."""
    text = resources.files("sandbox._runtime").joinpath(PROFILE_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def for_runtime(runtime: str) -> dict[str, Any]:
    """The profile as *runtime* must get it (a copy)."""
    data = copy.deepcopy(profile())
    if runtime == "runsc":
        rules = [r for r in data["syscalls"]
                 if not (r["names"] == ["clone3"] and r["action"] == "SCMP_ACT_ERRNO")]
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ALLOW", "args": [],
                      "comment": "agentbox: gVisor answers clone3 itself (ENOSYS)",
                      "includes": {}, "excludes": {}})
        data["syscalls"] = rules
    return data


@functools.cache
def security_opt(runtime: str = "runc") -> str:
    """The ``security_opt`` entry that installs the profile: the engine takes the JSON
    itself (as ``docker run --security-opt seccomp=FILE`` sends it), not a path."""
    return "seccomp=" + json.dumps(for_runtime(runtime), separators=(",", ":"))
