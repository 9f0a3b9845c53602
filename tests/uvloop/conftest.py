"""Every async test in this directory runs on a uvloop loop (and only these: pytest asks
this hook of the conftests on a test's own path)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}
