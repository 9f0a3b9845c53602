"""The old home of :mod:`sandbox.integrations.langchain`; kept so existing imports
(``from sandbox.langchain_tool import SandboxTool``) keep working."""

from sandbox.integrations.langchain import SandboxInput, SandboxTool

__all__ = ["SandboxInput", "SandboxTool"]
