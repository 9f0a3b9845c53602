"""The ``agentbox`` command.

    agentbox image build [--base-image IMG] [--force]   build the kernel image (cached by hash)
    agentbox image tag                                  print the tag sessions will use
    agentbox doctor [--json]                            can this machine run sandboxes?
    agentbox demo [--out FILE]                          a pandas + matplotlib analysis, cell by cell
    agentbox run FILE [-o OUT.ipynb] [--server URL]     a .py (# %% cells) or .ipynb, cell by cell
    agentbox serve [--host H] [--port P] [--pool-size N]  the HTTP API
    agentbox gc [--all]                                 remove containers/dirs left by dead managers
    agentbox kernelspec install [--user|--prefix P]     a Jupyter kernel that runs in a sandbox
    agentbox mcp [--transport stdio|streamable-http]    sandboxes as Model Context Protocol tools

Every failure prints one line saying what failed and what to do, and exits
non-zero; ``--debug`` shows the traceback instead.

Modules: this one (the parser, main, the one-line errors), :mod:`.commands`,
:mod:`.console` (rich), :mod:`.render`, :mod:`.run`, :mod:`.demo`, :mod:`.doctor`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sandbox._exceptions import SandboxError
from sandbox.cli import commands
from sandbox.cli.console import console, error

_cmd_serve = commands.cmd_serve  # the old name (tests/security/test_http_exhaustion.py reads it)

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SandboxError as exc:
        if args.debug:
            raise
        error(str(exc))
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentbox")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentbox", description="Agent Box: hardened Jupyter sandboxes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"agentbox {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_image(sub)
    _add_doctor_and_demo(sub)
    _add_run(sub)
    _add_serve_and_gc(sub)
    _add_kernelspec(sub)
    _add_mcp(sub)
    return parser


def _add_image(sub: _Subparsers) -> None:
    image = sub.add_parser("image", help="the kernel image").add_subparsers(dest="image_cmd", required=True)
    build = image.add_parser("build", help="build the kernel image (skipped when current)")
    build.add_argument("--base-image", help="base image (default: $AGENTBOX_BASE_IMAGE or python:3.12-slim)")
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    build.add_argument("-v", "--verbose", action="store_true", help="print the full build log")
    build.set_defaults(func=commands.cmd_image_build)
    tag = image.add_parser("tag", help="print the tag the current sources build to")
    tag.add_argument("--base-image")
    tag.set_defaults(func=commands.cmd_image_tag)


def _add_doctor_and_demo(sub: _Subparsers) -> None:
    doctor = sub.add_parser("doctor", help="check that this machine can run sandboxes")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--quick", action="store_true", help="skip starting a test container")
    doctor.set_defaults(func=commands.cmd_doctor)

    demo = sub.add_parser("demo", help="run a pandas + matplotlib analysis in a fresh sandbox")
    demo.add_argument("--out", default="out/demo.ipynb", help="where to write the executed notebook")
    demo.set_defaults(func=commands.cmd_demo)


def _add_run(sub: _Subparsers) -> None:
    run = sub.add_parser("run", help="run a .py (# %% cells) or .ipynb file cell by cell in a fresh sandbox")
    run.add_argument("file", help="a .py file with # %% cell markers, or an .ipynb notebook")
    run.add_argument("-o", "--output", help="write the executed notebook here")
    run.add_argument("--server", help="run on an Agent Box server (URL) instead of locally")
    run.add_argument("--api-key", help="the server's API key (default: $AGENTBOX_API_KEY)")
    run.add_argument("--timeout", type=float, help="per-cell time limit in seconds")
    run.add_argument("--continue-on-error", action="store_true",
                     help="run every cell even after one fails (the exit status is still 1)")
    run.set_defaults(func=commands.cmd_run)


def _add_serve_and_gc(sub: _Subparsers) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API (settings also from AGENTBOX_*)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; others need API keys)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--pool-size", type=int, help="warm kernels kept ready")
    serve.add_argument("--max-sessions", type=int)
    serve.add_argument("--data-dir", help="history database and state")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in data dir)")
    serve.set_defaults(func=commands.cmd_serve)

    gc = sub.add_parser("gc", help="remove containers and directories left by dead managers "
                        "under this run root ($AGENTBOX_RUN_ROOT)")
    gc.add_argument("--all", action="store_true",
                    help="engine-wide: also containers of dead owners under other run roots "
                    "(another user's or another tool's)")
    gc.set_defaults(func=commands.cmd_gc)


def _add_kernelspec(sub: _Subparsers) -> None:
    kernelspec = sub.add_parser("kernelspec", help="Jupyter kernelspec running kernels in sandboxes")
    ks = kernelspec.add_subparsers(dest="kernelspec_cmd", required=True)
    ks_install = ks.add_parser("install", help="install the Agent Box kernelspec (any Jupyter front end)")
    ks_install.add_argument("--name", default="agentbox", help="kernel name (default: agentbox)")
    ks_install.add_argument("--display-name", default="Python 3 (Agent Box sandbox)")
    where = ks_install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (this venv)")
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels")
    ks_install.add_argument("--memory-mb", type=int, help="the sandbox's memory limit")
    ks_install.add_argument("--cpus", type=float, help="the sandbox's CPU limit")
    ks_install.set_defaults(func=commands.cmd_kernelspec_install)


def _add_mcp(sub: _Subparsers) -> None:
    mcp = sub.add_parser("mcp", help="serve sandboxes over the Model Context Protocol "
                         "(one sandbox per MCP session)")
    mcp.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    mcp.add_argument("--runtime", choices=["runc", "runsc"],
                     help="the sandboxes' container runtime (default runc; runsc: gVisor)")
    mcp.add_argument("--host", default="127.0.0.1", help="streamable-http bind address")
    mcp.add_argument("--port", type=int, default=8000, help="streamable-http port")
    mcp.add_argument("--allow-remote", action="store_true",
                     help="allow a non-loopback --host without API keys (behind a proxy that "
                     "authenticates); with AGENTBOX_API_KEYS or AGENTBOX_API_KEYS_FILE set, "
                     "every request needs a bearer key and any --host may be bound")
    mcp.add_argument("--allowed-host", action="append", default=[], metavar="HOST[:PORT]",
                     help="another Host header to accept (what a proxy in front sends); "
                     "the name and address bound are always accepted, nothing else")
    mcp.add_argument("--max-sessions", type=int, default=32,
                     help="open streamable-http sessions (each holds at most one sandbox), "
                     "and as many stateless sandbox handles")
    mcp.add_argument("--idle-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="close a streamable-http session or stateless handle (and remove "
                     "its sandbox) after this long without a request")
    mcp.set_defaults(func=commands.cmd_mcp)

