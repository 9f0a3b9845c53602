"""The optional parts of the install: what a front end says when its extra is missing."""

from __future__ import annotations

from sandbox._exceptions import SandboxError


class MissingExtraError(SandboxError, ImportError):
    """A front end whose optional dependencies are not installed; its message is the
    one-line fix (``pip install 'agentbox[server]'``). A SandboxError, so the CLI says
    it as its one-line ``error:``; an ImportError, so ``except ImportError`` sees it."""

    def __init__(self, what: str, extra: str, module: str | None = None) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'agentbox[{extra}]'",
                         name=module)
        self.extra = extra


def require(what: str, extra: str, *modules: str) -> None:
    """Import *modules* (the extra's), or raise :class:`MissingExtraError` naming it."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(what, extra, module) from exc
