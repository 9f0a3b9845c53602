"""Two sessions side by side: A (the attacker) can see, reach or disturb nothing of B —
not its processes, files, sockets or kernel, not its output."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import ExecutionResult, Session
from tests.security.conftest import container_attrs, host_processes_with, open_box, probe, run_ok

SOCKET_NAMES = r"^(init\.sock|kernel-\d+-[0-9a-f]{8}\.json|k\d+-[1-5])$"


@pytest.fixture(scope="module")
def a(runtime: str) -> Iterator[Session]:
    with open_box(runtime) as session:
        yield session


@pytest.fixture(scope="module")
def b(runtime: str) -> Iterator[Session]:
    with open_box(runtime) as session:
        yield session


def test_a_sees_only_its_own_processes(a: Session, b: Session, runtime: str) -> None:
    marker = f"agentbox-marker-{secrets.token_hex(6)}"
    run_ok(b, "import subprocess, sys\n"
              f"sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}])")
    try:
        seen_by_b = probe(b, LIST_PROCESSES % marker)
        seen_by_a = probe(a, LIST_PROCESSES % marker)
        on_host = host_processes_with(marker)
    finally:
        run_ok(b, "sleeper.kill(); sleeper.wait()")
    assert seen_by_b["marker"] is True  # control: it is there, for B
    assert seen_by_a["marker"] is False
    # A's /proc: agentbox-init, A's kernel and the kernel's own helpers, nothing else.
    assert seen_by_a["cmdlines"][0].startswith("/opt/venv/bin/python -I /opt/agentbox/init.py")
    assert all("init.py" in c or "ipykernel_launcher" in c for c in seen_by_a["cmdlines"]), \
        seen_by_a["cmdlines"]
    assert len(seen_by_a["cmdlines"]) <= 3
    if runtime == "runc":
        assert len(on_host) == 1  # from the host: B's process exists, A just cannot see it
    else:
        # gVisor: sandboxed processes are tasks of the Sentry, not host processes; the
        # host sees none of them (and so cannot show one to A either).
        assert on_host == []


LIST_PROCESSES = r"""
import json, os
cmdlines = []
for p in sorted((int(p) for p in os.listdir("/proc") if p.isdigit())):
    try:
        cmdlines.append(open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip())
    except OSError:
        pass
print(json.dumps({"cmdlines": cmdlines, "marker": any(%r in c for c in cmdlines)}))
"""

FIND_NAME = r"""
import json, os
hits, stack = [], ["/"]
while stack:
    top = stack.pop()
    try:
        entries = list(os.scandir(top))
    except OSError:
        continue
    for e in entries:
        if %r in e.name:
            hits.append(e.path)
        if e.is_dir(follow_symlinks=False) and e.path not in ("/proc", "/sys", "/usr", "/opt/venv"):
            stack.append(e.path)
print(json.dumps(hits))
"""


def test_a_cannot_see_bs_files(a: Session, b: Session) -> None:
    marker = f"agentbox-file-{secrets.token_hex(6)}"
    run_ok(b, f"for d in ('/home/sandbox', '/tmp', '/dev/shm', '/run/kernel'):\n"
              f"    open(d + '/{marker}', 'w').write('b was here')")
    b.upload(f"up/{marker}.csv", b"b,uploaded\n")
    try:
        assert len(probe(b, FIND_NAME % marker)) == 5  # control: B finds all five
        assert probe(a, FIND_NAME % marker) == []
        assert marker not in json.dumps([f.path for f in a.list_files()])
        # From the host: B's working directory and /tmp are tmpfs in B's container only;
        # the one host directory B writes to is its own run dir, not A's.
        assert (b._async.run_dir / marker).exists()
        assert not (a._async.run_dir / marker).exists()
    finally:
        run_ok(b, f"import os\nfor d in ('/home/sandbox', '/tmp', '/dev/shm', '/run/kernel'):\n"
                  f"    os.unlink(d + '/{marker}')")


def test_a_can_reach_only_its_own_sockets(a: Session, b: Session) -> None:
    b_run_dir = str(b._async.run_dir)
    found = probe(a, f"""
import errno, glob, json, os, re, socket
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(path)
        s.sendall(b'{{"op": "ping"}}\\n')
        return s.makefile().readline()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    finally:
        s.close()
names = sorted(os.listdir("/run/kernel"))
print(json.dumps({{
    "names": names,
    "own": all(re.match({SOCKET_NAMES!r}, n) for n in names),
    "b_paths": [connect(os.path.join({b_run_dir!r}, n)) for n in ("init.sock", "k1-1", "k1-2")],
    "b_dir_exists": os.path.exists({b_run_dir!r}),
    "own_init": connect("/run/kernel/init.sock"),
    "key": json.load(open(sorted(glob.glob("/run/kernel/kernel-*.json"))[-1]))["key"],
}}))
""")
    assert found["own"], found["names"]
    assert found["b_paths"] == ["ENOENT"] * 3  # B's host socket paths do not exist in A
    assert found["b_dir_exists"] is False
    assert json.loads(found["own_init"])["ok"] is True  # control: A's own init answers
    b_key = probe(b, "import glob, json\nprint(json.dumps(json.load(open(sorted("
                     "glob.glob('/run/kernel/kernel-*.json'))[-1]))['key']))")
    assert found["key"] != b_key


def test_a_cannot_signal_or_kill_bs_kernel(a: Session, b: Session, engine: Any) -> None:
    run_ok(b, "import os\nb_state = 'kept'\nb_pid = os.getpid()")
    b_before = probe(b, "import json, os\nprint(json.dumps([os.getpid(), b_state]))")
    b_container = container_attrs(engine, b)["State"]
    # A's kernel SIGKILLs every process it may signal (kill(-1) spares only itself and its
    # namespace's init), then tries each pid number B's kernel could have.
    found = probe(a, """
import errno, json, os, signal
try:
    os.kill(-1, signal.SIGKILL)
    killed_all = "sent"
except ProcessLookupError:
    killed_all = "no other process"
results = {}
own = {int(t) for t in os.listdir("/proc/self/task")}  # the kernel's threads: itself
for pid in range(2, 200):
    if pid in own:
        continue
    try:
        os.kill(pid, signal.SIGKILL)
        results[pid] = "killed"
    except OSError as exc:
        results[pid] = errno.errorcode[exc.errno]
print(json.dumps({"killed_all": killed_all, "hit": [p for p, r in results.items() if r != "ESRCH"]}))
""")
    assert found["killed_all"] == "no other process"  # A's kernel is alone with its init
    assert found["hit"] == []  # not one of the pids B's kernel could have exists for A
    after = probe(b, "import json, os\nprint(json.dumps([os.getpid(), b_state]))")
    assert after == b_before  # same kernel process, same variables: untouched
    state = container_attrs(engine, b)["State"]
    assert state["Running"] and state["Pid"] == b_container["Pid"]
    assert state["StartedAt"] == b_container["StartedAt"]


def test_concurrent_output_is_never_mixed_up(a: Session, b: Session) -> None:
    lines = 3000
    code = "import sys, time\nfor i in range({n}):\n    print('{tag}', i)\n    if i % 500 == 0: time.sleep(0.01)"
    results: dict[str, ExecutionResult] = {}

    def run(name: str, box: Session) -> None:
        results[name] = box.execute(code.format(n=lines, tag=f"from-{name}"))

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name, other in (("a", "b"), ("b", "a")):
        result = results[name]
        assert result.status == "ok" and not result.truncated
        assert f"from-{other}" not in str(result.to_dict())
        assert result.stdout == "".join(f"from-{name} {i}\n" for i in range(lines))
