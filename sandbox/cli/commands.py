"""What each ``agentbox`` subcommand does; :mod:`sandbox.cli` parses the arguments.

Each imports what it needs when it runs (the engine, the HTTP API, the MCP SDK), so
``agentbox --version`` and the parser load none of them.
"""

from __future__ import annotations

import argparse

from sandbox.cli.console import RichProgress, console, error


def cmd_image_build(args: argparse.Namespace) -> int:
    from sandbox._runtime.dockerd.build import build_image

    progress = RichProgress(verbose=args.verbose)
    try:
        tag = build_image(base_image=args.base_image, force=args.force, progress=progress)
    finally:
        progress.stop()
    print(tag)
    return 0


def cmd_image_tag(args: argparse.Namespace) -> int:
    from sandbox._image import image_tag

    print(image_tag(args.base_image))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sandbox.cli.doctor import render, run_checks

    report = run_checks(runtime_check=not args.quick)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, Console())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from sandbox.cli.demo import run_demo

    return run_demo(out=args.out)


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from sandbox.cli.run import run_file

    api_key = args.api_key if args.api_key is not None else os.environ.get("AGENTBOX_API_KEY")
    return run_file(args.file, args.output, server=args.server, api_key=api_key or None,
                    timeout=args.timeout, continue_on_error=args.continue_on_error)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from api.server.middleware import JsonLines
    from api.server.serve import server_for
    from api.server.settings import Settings

    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "pool_size": args.pool_size,
        "data_dir": args.data_dir, "database_url": args.database_url,
        "max_sessions": args.max_sessions}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        error("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()))
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


def cmd_gc(args: argparse.Namespace) -> int:
    from sandbox._gc import collect_garbage

    removed = collect_garbage(engine_wide=args.all)
    console.print(
        f"removed {removed.containers} container(s) and {removed.directories} directory(ies)"
    )
    return 0


def cmd_kernelspec_install(args: argparse.Namespace) -> int:
    import sys

    from sandbox.integrations.kernelspec import install_kernel_spec

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
        error(f"cannot install the kernelspec: {exc}")
        return 2
    print(f"Installed kernelspec {args.name} in {where}")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from sandbox._config import SandboxConfig
    from sandbox.integrations.mcp import HttpLimits, run

    config = SandboxConfig(runtime=args.runtime) if args.runtime else None
    run(args.transport, args.host, args.port, config=config, allow_remote=args.allow_remote,
        allowed_hosts=args.allowed_host,
        limits=HttpLimits(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout))
    return 0
