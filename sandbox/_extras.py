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
    """Raise :class:`MissingExtraError` naming *extra* if one of its *modules* is not
    installed. Found, not imported: a process that needs only part of a front end (the
    notebook export child) pays for no import it does not make."""
    import importlib.util
    import sys

    for module in modules:
        if module in sys.modules:
            if sys.modules[module] is None:  # the import system's "known missing"
                raise MissingExtraError(what, extra, module)
            continue
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(what, extra, module)
