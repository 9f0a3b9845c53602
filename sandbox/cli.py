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
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console

from sandbox._exceptions import SandboxError

console = Console(stderr=True, highlight=False)


class RichProgress:
    """Shows build steps as they start and finish, with the last log line live."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._status: object | None = None
        self._step = ""

    def step(self, name: str, description: str) -> None:
        self._stop()
        self._step = name
        status = console.status(f"[bold]{name}[/]: {description}")
        status.start()
        self._status = status

    def log(self, line: str) -> None:
        if self.verbose:
            console.print(f"  {line}", style="dim", markup=False)
        elif self._status is not None:
            text = line if len(line) < 100 else line[:97] + "..."
            self._status.update(f"[bold]{self._step}[/]: [dim]{_escape(text)}[/]")  # type: ignore[attr-defined]

    def done(self, name: str, detail: str) -> None:
        self._stop()
        console.print(f"[green]✓[/] [bold]{name}[/]: {_escape(detail)}")

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()  # type: ignore[attr-defined]
            self._status = None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _cmd_image_build(args: argparse.Namespace) -> int:
    from sandbox._image import build_image

    progress = RichProgress(verbose=args.verbose)
    try:
        tag = build_image(base_image=args.base_image, force=args.force, progress=progress)
    finally:
        progress._stop()
    print(tag)
    return 0


def _cmd_image_tag(args: argparse.Namespace) -> int:
    from sandbox._image import image_tag

    print(image_tag(args.base_image))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from sandbox._doctor import render, run_checks

    report = run_checks(runtime_check=not args.quick)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, Console())
    return 0 if report.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from sandbox._demo import run_demo

    return run_demo(out=args.out)


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from sandbox._run import run_file

    api_key = args.api_key if args.api_key is not None else os.environ.get("AGENTBOX_API_KEY")
    return run_file(args.file, args.output, server=args.server, api_key=api_key or None,
                    timeout=args.timeout, continue_on_error=args.continue_on_error)


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from api.main import JsonLines, server_for
    from api.settings import Settings

    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "pool_size": args.pool_size,
        "data_dir": args.data_dir, "database_url": args.database_url,
        "max_sessions": args.max_sessions}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        messages = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        console.print(f"[bold red]error:[/] {_escape(messages)}")
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    console.print(f"Agent Box API on http://{settings.host}:{settings.port} "
                  f"(docs at /docs; history in {settings.resolved_database_url()}; "
                  f"auth {'on' if settings.auth_enabled else 'off: loopback only'})")
    server_for(settings, log_config=None, access_log=False,
               timeout_graceful_shutdown=30).run()
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from sandbox._manager import collect_garbage

    removed = collect_garbage(engine_wide=args.all)
    console.print(
        f"removed {removed.containers} container(s) and {removed.directories} directory(ies)"
    )
    return 0


def _cmd_kernelspec_install(args: argparse.Namespace) -> int:
    import sys

    from sandbox.provisioner import install_kernel_spec

    config: dict[str, object] = {}
    if args.memory_mb is not None:
        config["memory_mb"] = args.memory_mb
    if args.cpus is not None:
        config["cpus"] = args.cpus
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        where = install_kernel_spec(args.name, user=args.user, prefix=prefix,
                                    display_name=args.display_name, config=config)
    except (OSError, ValueError) as exc:
        console.print(f"[bold red]error:[/] cannot install the kernelspec: {_escape(str(exc))}")
        return 2
    print(f"Installed kernelspec {args.name} in {where}")
    return 0


def _cmd_mcp(args: argparse.Namespace) -> int:
    from sandbox._config import SandboxConfig
    from sandbox.mcp_server import HttpLimits, run

    config = SandboxConfig(runtime=args.runtime) if args.runtime else None
    run(args.transport, args.host, args.port, config=config, allow_remote=args.allow_remote,
        allowed_hosts=args.allowed_host,
        limits=HttpLimits(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout))
    return 0


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

    image = sub.add_parser("image", help="the kernel image").add_subparsers(dest="image_cmd", required=True)
    build = image.add_parser("build", help="build the kernel image (skipped when current)")
    build.add_argument("--base-image", help="base image (default: $AGENTBOX_BASE_IMAGE or python:3.12-slim)")
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    build.add_argument("-v", "--verbose", action="store_true", help="print the full build log")
    build.set_defaults(func=_cmd_image_build)
    tag = image.add_parser("tag", help="print the tag the current sources build to")
    tag.add_argument("--base-image")
    tag.set_defaults(func=_cmd_image_tag)

    doctor = sub.add_parser("doctor", help="check that this machine can run sandboxes")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--quick", action="store_true", help="skip starting a test container")
    doctor.set_defaults(func=_cmd_doctor)

    demo = sub.add_parser("demo", help="run a pandas + matplotlib analysis in a fresh sandbox")
    demo.add_argument("--out", default="out/demo.ipynb", help="where to write the executed notebook")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="run a .py (# %% cells) or .ipynb file cell by cell in a fresh sandbox")
    run.add_argument("file", help="a .py file with # %% cell markers, or an .ipynb notebook")
    run.add_argument("-o", "--output", help="write the executed notebook here")
    run.add_argument("--server", help="run on an Agent Box server (URL) instead of locally")
    run.add_argument("--api-key", help="the server's API key (default: $AGENTBOX_API_KEY)")
    run.add_argument("--timeout", type=float, help="per-cell time limit in seconds")
    run.add_argument("--continue-on-error", action="store_true",
                     help="run every cell even after one fails (the exit status is still 1)")
    run.set_defaults(func=_cmd_run)

    serve = sub.add_parser("serve", help="run the HTTP API (settings also from AGENTBOX_*)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; others need API keys)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--pool-size", type=int, help="warm kernels kept ready")
    serve.add_argument("--max-sessions", type=int)
    serve.add_argument("--data-dir", help="history database and state")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in data dir)")
    serve.set_defaults(func=_cmd_serve)

    gc = sub.add_parser("gc", help="remove containers and directories left by dead managers "
                        "under this run root ($AGENTBOX_RUN_ROOT)")
    gc.add_argument("--all", action="store_true",
                    help="engine-wide: also containers of dead owners under other run roots "
                    "(another user's or another tool's)")
    gc.set_defaults(func=_cmd_gc)

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
    ks_install.set_defaults(func=_cmd_kernelspec_install)

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
    mcp.set_defaults(func=_cmd_mcp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SandboxError as exc:
        if args.debug:
            raise
        console.print(f"[bold red]error:[/] {_escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
