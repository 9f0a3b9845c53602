"""The HTTP service (``agentbox serve``): the FastAPI app, its service and store.

Needs the ``server`` extra; without it, importing this says so in one line."""

from sandbox.utils import require_extra as require

require("the HTTP server", "server",
        "fastapi", "uvicorn", "pydantic_settings", "sqlalchemy", "prometheus_client")
