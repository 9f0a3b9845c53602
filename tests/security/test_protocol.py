"""Code in the box speaks the host's protocols itself: the kernel protocol (ZMQ, signed
with a key the box can read) and agentbox-init's (JSON on /run/kernel/init.sock). Nothing
it sends may crash the host, stall another session (all sessions share one event loop, as
in the API server), or get output attributed to another execution or session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from sandbox import AsyncSession, ExecutionResult, SandboxConfig, SessionState
from tests.security.conftest import own_rss

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_MESSAGE = 1024 * 1024  # the attacker's max_message_bytes: "oversized" is cheap to send


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacker(runtime: str) -> AsyncIterator[AsyncSession]:
    config = SandboxConfig(runtime=runtime, max_message_bytes=MAX_MESSAGE,  # type: ignore[arg-type]
                           interrupt_grace_s=1.0)
    async with AsyncSession(config) as session:
        yield session


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def victim(runtime: str) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(SandboxConfig(runtime=runtime)) as session:  # type: ignore[arg-type]
        yield session


VICTIM_CELL = "import time\nfor i in range(3):\n    print('victim', i)\n    time.sleep(0.2)\n'victim done'"


async def victim_meanwhile(victim: AsyncSession, rounds: int = 3) -> list[tuple[float, ExecutionResult]]:
    """The victim runs short cells while the attack goes on; each should take ~0.6 s."""
    out = []
    for _ in range(rounds):
        t0 = time.monotonic()
        result = await victim.execute(VICTIM_CELL, timeout=30)
        out.append((time.monotonic() - t0, result))
    return out


def assert_victim_unharmed(runs: list[tuple[float, ExecutionResult]], marker: str) -> None:
    for seconds, result in runs:
        assert result.status == "ok", result
        assert result.stdout == "victim 0\nvictim 1\nvictim 2\n"
        assert result.text == "'victim done'"
        assert marker not in str(result.to_dict())
        assert seconds < 0.6 + 1.0, f"the victim's 0.6 s cell took {seconds:.2f}s"


FORGE = r"""
import json, secrets
from jupyter_client.session import Session as WireSession
k = get_ipython().kernel
sock = k.iopub_socket
here = k.get_parent("shell")
# signed messages claiming to answer requests that are not this one
k.session.send(sock, "stream", {"name": "stdout", "text": "FORGED-unknown-parent\n"},
               parent={"header": {"msg_id": "not-yours", "msg_type": "execute_request"}})
k.session.send(sock, "stream", {"name": "stdout", "text": "FORGED-no-parent\n"})
# signed with a key that is not the session's
other = WireSession(key=secrets.token_hex(32).encode(), signature_scheme="hmac-sha256")
other.send(sock, "stream", {"name": "stdout", "text": "FORGED-wrong-key\n"}, parent=here)
# unsigned, truncated and garbage frames
sock.send_multipart([b"<IDS|MSG>", b"", b'{"msg_id": "x"}', json.dumps(here["header"], default=str).encode(),
                     b"{}", b'{"name": "stdout", "text": "FORGED-unsigned\\n"}'])
sock.send_multipart([b"<IDS|MSG>", b"bad-signature", b"{}", b"{}", b"{}", b"{}"])
sock.send_multipart([b"<IDS|MSG>"])
sock.send_multipart([b"junk"] * 50)
sock.send_multipart([b"\xff\xfe not utf-8 \x00"])
# correctly signed, parented to this very execution, malformed bodies
k.session.send(sock, "display_data", {"data": "not-a-dict"}, parent=here)
k.session.send(sock, "stream", {"name": "stdout", "text": ["not", "a", "string"]}, parent=here)
k.session.send(sock, "stream", {"name": "/etc/passwd", "text": "FORGED-stream-name\n"}, parent=here)
k.session.send(sock, "execute_result", {"data": {1: "int key"}, "metadata": []}, parent=here)
k.session.send(sock, "update_display_data", {"data": {}, "transient": {"display_id": 7}}, parent=here)
k.session.send(sock, "error", {"ename": None, "evalue": {}, "traceback": "x"}, parent=here)
k.session.send(sock, "status", {"execution_state": ["idle"]}, parent=here)
nested = "[" * 100000 + "]" * 100000  # a JSON recursion bomb, validly signed
raw = [b"<IDS|MSG>"]
parts = [json.dumps(dict(here["header"], msg_id="bomb", msg_type="stream"), default=str).encode(),
         json.dumps(here["header"], default=str).encode(), b"{}", nested.encode()]
raw += [k.session.sign(parts).encode() if isinstance(k.session.sign(parts), str) else k.session.sign(parts)] + parts
sock.send_multipart(raw)
import time; time.sleep(0.3)
print("still here")
"""


async def test_forged_and_malformed_messages_are_dropped(attacker: AsyncSession,
                                                         victim: AsyncSession) -> None:
    victim_runs = asyncio.create_task(victim_meanwhile(victim))
    result = await attacker.execute(FORGE, timeout=30)
    assert result.status == "ok", (result.error, result.notes)
    assert result.stdout == "still here\n"
    assert "FORGED" not in str(result.to_dict())
    assert any("malformed" in note for note in result.notes), result.notes
    assert_victim_unharmed(await victim_runs, "FORGED")
    assert (await attacker.execute("1 + 1")).text == "2"  # the host side is intact


REMEMBER = "earlier = get_ipython().kernel.get_parent('shell')\n'remembered'"

REPLAY = r"""
import threading, time
k = get_ipython().kernel
def replay(n, shell):
    for i in range(n):
        k.session.send(k.iopub_socket, "stream", {"name": "stdout", "text": f"REPLAYED {i}\n"},
                       parent=earlier)
        k.session.send(k.iopub_socket, "execute_result",
                       {"data": {"text/plain": "'REPLAYED result'"}, "metadata": {},
                        "execution_count": 1}, parent=earlier)
        k.session.send(k.iopub_socket, "status", {"execution_state": "idle"}, parent=earlier)
        if shell:  # (the shell stream is not thread-safe: from the cell's own thread only)
            k.session.send(k.shell_stream, "execute_reply",
                           {"status": "ok", "execution_count": 1, "user_expressions": {}},
                           parent=earlier, ident=k._parent_ident["shell"])
        time.sleep(0.01)
replay(20, shell=True)  # now, while this cell runs...
# ...and later, while the next cells run: a thread keeps the old parent (ipykernel gives a
# new thread the parent of the cell that started it) and prints after this cell ended.
def late():
    time.sleep(0.2)
    replay(100, shell=False)
    for i in range(50):
        print("LATE-THREAD", i)
        time.sleep(0.01)
threading.Thread(target=late, daemon=True).start()
print("replaying cell")
"""


async def test_replayed_parent_of_a_previous_execution_is_not_attributed(
        attacker: AsyncSession, victim: AsyncSession) -> None:
    first = await attacker.execute(REMEMBER)
    assert first.text == "'remembered'"
    victim_runs = asyncio.create_task(victim_meanwhile(victim))
    second = await attacker.execute(REPLAY, timeout=30)
    later = [await attacker.execute("import time\ntime.sleep(0.5)\nprint('later cell')\n'later'",
                                    timeout=15) for _ in range(3)]
    for result in (second, *later):
        text = str(result.to_dict())
        assert "REPLAYED" not in text and "LATE-THREAD" not in text, text[:500]
    assert second.status == "ok" and second.stdout == "replaying cell\n"
    for result in later:
        assert result.status == "ok" and result.stdout == "later cell\n" and result.text == "'later'"
    # The replayed execute_reply/idle for the old request did not end the later cells early.
    assert all(r.duration_s >= 0.5 for r in later)
    assert_victim_unharmed(await victim_runs, "REPLAYED")


async def test_an_oversized_message_is_dropped_unread(attacker: AsyncSession,
                                                      victim: AsyncSession) -> None:
    rss_before = own_rss()
    victim_runs = asyncio.create_task(victim_meanwhile(victim))
    result = await attacker.execute(
        "k = get_ipython().kernel\n"
        "k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'O' * (8 * 2**20)},"
        " parent=k.get_parent('shell'))\n"
        "print('after')", timeout=30)
    assert result.status == "ok"
    assert "O" * 1000 not in str(result.to_dict())
    assert result.truncated and any("max_message_bytes" in n for n in result.notes)
    assert own_rss() - rss_before < 32 * 2**20
    assert_victim_unharmed(await victim_runs, "OOOOOOOO")
    after = await attacker.execute("print('next'); 6 * 7")
    assert after.status == "ok" and after.stdout == "next\n" and after.text == "42"


async def test_an_oversized_shell_reply_costs_only_the_attacker(attacker: AsyncSession,
                                                               victim: AsyncSession) -> None:
    # Over the shell channel this time: ZMQ drops the message (and the connection) unread;
    # the attacker's cell cannot finish normally, the host ends it by its timeout and
    # restarts the kernel. The victim notices nothing.
    rss_before = own_rss()
    victim_runs = asyncio.create_task(victim_meanwhile(victim))
    result = await attacker.execute(
        "k = get_ipython().kernel\n"
        "k.session.send(k.shell_stream, 'execute_reply', {'status': 'ok', 'junk': 'S' * (8 * 2**20)},"
        " parent=k.get_parent('shell'), ident=k._parent_ident['shell'])\n"
        "print('sent')", timeout=2)
    assert "S" * 1000 not in str(result.to_dict())
    assert own_rss() - rss_before < 32 * 2**20
    assert_victim_unharmed(await victim_runs, "SSSSSSSS")
    after = await attacker.execute("'recovered'", timeout=30)
    if after.status != "ok":  # the first cell after may still meet the dropped connection
        after = await attacker.execute("'recovered'", timeout=30)
    assert after.status == "ok" and after.text == "'recovered'", after


FLOOD = r"""
import time
k = get_ipython().kernel
end = time.monotonic() + 1.8
sent = 0
while time.monotonic() < end:
    for _ in range(100):
        k.session.send(k.iopub_socket, "stream", {"name": "stdout", "text": "FLOOD\n"},
                       parent={"header": {"msg_id": "nobody", "msg_type": "execute_request"}})
        k.session.send(k.shell_stream, "kernel_info_reply", {"status": "ok"},
                       parent={"header": {"msg_id": "nobody"}}, ident=k._parent_ident["shell"])
    sent += 200
print("sent", sent)
"""


async def test_a_message_flood_does_not_stall_another_session(attacker: AsyncSession,
                                                              victim: AsyncSession) -> None:
    flood = asyncio.create_task(attacker.execute(FLOOD, timeout=3))
    await asyncio.sleep(0.3)
    runs = await victim_meanwhile(victim, rounds=2)
    result = await flood
    assert "FLOOD" not in str(result.to_dict())
    # The attacker may drown its own reply (ZMQ drops beyond its high-water marks): its cell
    # then ends by the timeout. Its problem alone: the victim did not notice, and the
    # attacker's session works again right after.
    assert result.status in ("ok", "timeout"), result
    assert_victim_unharmed(runs, "FLOOD")
    after = await attacker.execute("'after the flood'", timeout=30)
    assert after.status == "ok" and after.text == "'after the flood'"


# -- agentbox-init's protocol ----------------------------------------------------------------
# The sandbox user owns /run/kernel: it can put its own server at init.sock (the real init
# keeps listening on the unlinked socket) and plant FIFOs and symlinks next to it. The host
# must treat whatever answers there as the sandbox, and never let it steer a host-side file
# operation or block the host. One attack round per runtime (it costs the attacker its
# container), judged by the three tests after it.

IMPOSTOR = r"""
import fcntl, json, os, socket, time
RK = "/run/kernel"
TARGET = %(target)r
FIFO_ON_HOST = %(fifo)r  # runc: a FIFO made here is a FIFO on the host; gVisor keeps it inside
live = max(int(n.split("-")[1].split(".")[0]) for n in os.listdir(RK) if n.startswith("kernel-"))
# Where the host wrote the next kernel's key when names were predictable; they are not any
# more (kernel-<generation>-<random>.json), but the trap is set all the same.
NEXT = f"{RK}/kernel-{live + 1}.json"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        try:
            os.unlink(RK + "/init.sock")
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(RK + "/init.sock")
            srv.listen(8)
            if FIFO_ON_HOST:
                # A FIFO at the name the host will open, held open here and filled up: the
                # host's open() returns at once, and its write of the key then blocks.
                os.mkfifo(NEXT)
                pipe = os.open(NEXT, os.O_RDWR | os.O_NONBLOCK)
                try:
                    while True:
                        os.write(pipe, b"\0" * 4096)
                except BlockingIOError:
                    pass
            os.symlink(TARGET, RK + "/.swap")
            while True:
                conn, _ = srv.accept()
                request = json.loads(conn.makefile("rb").readline())
                if request.get("op") == "kill":  # "everything is dead, go ahead"
                    conn.sendall(b'{"ok": true, "exit": null, "remaining": 0}\n')
                    conn.close()
                    if FIFO_ON_HOST:
                        time.sleep(%(stall)r)  # the host is stuck writing the key meanwhile
                        os.rename(RK + "/.swap", NEXT)  # a symlink where its file was...
                        end = time.time() + 2
                        while time.time() < end:  # ...then let its write (and chown) go on
                            try:
                                os.read(pipe, 65536)
                            except BlockingIOError:
                                time.sleep(0.001)
                    else:  # no host FIFO: race the host's create -> chown by polling
                        while not os.path.lexists(NEXT):
                            pass
                        os.rename(RK + "/.swap", NEXT)
                else:
                    conn.sendall(b'{"ok": false, "error": "impostor init"}\n')
                    conn.close()
        finally:
            os._exit(0)
    os._exit(0)
os.wait()
"""
STALL_S = 3.0


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def session_log() -> Iterator[Records]:
    logger = logging.getLogger("sandbox.session")
    handler = Records()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def heartbeat(gaps: list[float], stop: asyncio.Event) -> None:
    """Ticks every 20 ms on the shared loop; a blocked loop shows up as a long gap."""
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.02)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def impostor(attacker: AsyncSession, victim: AsyncSession, runtime: str,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    canary = tmp_path_factory.mktemp(f"impostor-{runtime}") / "host-owned.txt"
    canary.write_text("owned by root on the host\n")
    os.chmod(canary, 0o600)
    owner = (os.stat(canary).st_uid, os.stat(canary).st_gid)
    planted = await attacker.execute(IMPOSTOR % {"target": str(canary), "stall": STALL_S,
                                                 "fifo": runtime == "runc"})
    assert planted.status == "ok", planted.error
    died = await attacker.execute("import os; os._exit(3)")  # the next cell restarts it
    assert died.status == "died"
    live = max(int(p.name.split("-")[1].split(".")[0])
               for p in attacker.run_dir.glob("kernel-*.json"))
    fifo = attacker.run_dir / f"kernel-{live + 1}.json"
    gaps: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(heartbeat(gaps, stop))
    with session_log() as log:
        victim_runs = asyncio.create_task(victim_meanwhile(victim, rounds=2))
        await asyncio.sleep(0.1)  # the victim's first cell is under way
        after = await attacker.execute("'next cell'", timeout=60)
        runs = await victim_runs
    stop.set()
    await ticker
    with contextlib.suppress(OSError):
        fifo.unlink()
    st = os.stat(canary)
    return {"owner": owner, "now": (st.st_uid, st.st_gid), "after": after, "runs": runs,
            "max_gap": max(gaps), "log": log.messages}


async def test_an_impostor_init_cannot_make_the_host_chown_a_host_file(
        impostor: dict[str, Any], runtime: str, request: pytest.FixtureRequest) -> None:
    # (gVisor: the same host code runs, but a FIFO made inside is no host FIFO and a
    # polling swap has not won the microsecond race in our runs.)
    assert impostor["after"].status == "ok"
    assert impostor["now"] == impostor["owner"], \
        f"the host chowned its own file to {impostor['now']}"


async def test_an_impostor_init_is_never_obeyed(impostor: dict[str, Any],
                                                request: pytest.FixtureRequest) -> None:
    assert impostor["after"].status == "ok"
    assert not any("impostor init" in m for m in impostor["log"]), impostor["log"]


async def test_an_impostor_init_cannot_stall_the_host(impostor: dict[str, Any], runtime: str,
                                                      request: pytest.FixtureRequest) -> None:
    assert impostor["max_gap"] < 1.0, f"the host's event loop stood still {impostor['max_gap']:.1f}s"
    assert_victim_unharmed(impostor["runs"], "impostor")


async def test_after_all_that_both_sessions_still_serve(attacker: AsyncSession,
                                                        victim: AsyncSession) -> None:
    t0 = time.monotonic()
    results = await asyncio.gather(attacker.execute("'a'"), victim.execute("'v'"))
    assert [r.text for r in results] == ["'a'", "'v'"]
    assert all(r.status == "ok" and not r.notes for r in results)
    assert time.monotonic() - t0 < 2
    assert attacker.state is SessionState.READY and victim.state is SessionState.READY
