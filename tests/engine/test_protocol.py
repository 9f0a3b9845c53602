"""Code in the box can speak the kernel protocol itself: nothing it sends can crash the
host, leak into another execution or another session."""

from __future__ import annotations

import asyncio

import pytest

from sandbox import AsyncSession

pytestmark = pytest.mark.usefixtures("engine")

FORGE = r"""
k = get_ipython().kernel
sock = k.iopub_socket
# a signed message claiming to answer some other request
k.session.send(sock, "stream", {"name": "stdout", "text": "FORGED-OTHER\n"},
               parent={"header": {"msg_id": "not-yours", "msg_type": "execute_request"}})
# unsigned / garbage frames
sock.send_multipart([b"<IDS|MSG>", b"bad-signature", b"{}", b"{}", b"{}", b"{}"])
sock.send_multipart([b"junk"])
# a correctly signed message with a malformed body, parented to this very execution
k.session.send(sock, "display_data", {"data": "not-a-dict"}, parent=k.get_parent("shell"))
print("still here")
"""


async def test_forged_and_malformed_messages_are_dropped() -> None:
    async with AsyncSession() as box, AsyncSession() as other:
        other_task = asyncio.create_task(other.execute("import time; time.sleep(1); 'other'"))
        result = await box.execute(FORGE)
        assert result.status == "ok", result
        assert result.stdout == "still here\n"
        assert "FORGED" not in str(result.to_dict())
        assert any("malformed" in note for note in result.notes)
        other_result = await other_task
        assert other_result.text == "'other'" and "FORGED" not in str(other_result.to_dict())
        assert (await box.execute("1 + 1")).text == "2"  # the host side is intact
