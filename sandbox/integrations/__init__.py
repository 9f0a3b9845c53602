"""Agent Box behind other tools' interfaces: MCP (:mod:`.mcp`), LangChain
(:mod:`.langchain`), and the text rendering of results they share (:mod:`._text`).

Each imports its own library (the ``mcp`` or ``langchain`` extra) and only the core
of :mod:`sandbox`; importing this package imports neither.
"""
