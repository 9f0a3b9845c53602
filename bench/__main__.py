"""``python -m bench {core,api,scale,tuning,all} [--quick] [--render-only [FILE]]``.

Measures a suite (or all four, one after another) and writes its raw results to
``bench/results/<suite>.json`` and its report to ``docs/``; ``--render-only`` measures
nothing and rebuilds a report from earlier results.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import suites
from bench.harness import machine
from bench.harness.errors import BenchError
from bench.harness.recorder import results_path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="agentbox benchmarks: each figure beside a baseline measured in the same run.")
    p.add_argument("suite", choices=[*suites.NAMES, "all"],
                   help="which suite to run (all: the four, one after another)")
    p.add_argument("--quick", action="store_true",
                   help="few repetitions (about a minute a suite) instead of the full run")
    p.add_argument("--render-only", nargs="?", const="", type=str, metavar="FILE",
                   help="measure nothing: rebuild the report from earlier results (FILE, "
                        "default bench/results/<suite>.json; with `all`, every suite's)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="raw results JSON (default: bench/results/<suite>.json)")
    p.add_argument("--report", type=Path, metavar="FILE",
                   help="Markdown report (default: the suite's docs/benchmarks*.md)")
    p.add_argument("--no-report", action="store_true", help="write the results JSON only")
    return p


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations that make no sense end with a usage error, not a surprise."""
    if args.suite == "all":
        for flag in ("out", "report"):
            if getattr(args, flag) is not None:
                p.error(f"--{flag} names one suite's file: give a suite, not `all`")
        if args.render_only:
            p.error("--render-only FILE renders one suite: give a suite, not `all` "
                    "(`all --render-only` renders every suite from bench/results/)")
    if args.render_only is not None:
        if args.quick or args.no_report or args.out is not None:
            p.error("--render-only measures nothing: --quick, --out and --no-report do not apply")
        if args.render_only and not Path(args.render_only).is_file():
            p.error(f"--render-only: no such file: {args.render_only}")
    if args.no_report and args.report is not None:
        p.error("--no-report and --report contradict each other")


def render_all(names: Sequence[str], args: argparse.Namespace, out: object) -> int:
    from bench.harness import run

    for name in names:
        suite = suites.get(name)
        path = Path(args.render_only) if args.render_only else results_path(name)
        if not path.is_file():
            if args.suite == "all":
                run.console().print(f"[dim]{name}: no {machine.display_path(path)}, "
                                    "not rendered[/dim]")
                continue
            raise BenchError(f"no results to render: {machine.display_path(path)} "
                             f"(run `python -m bench {name}` first)")
        run.render_only(suite, path, args.report, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check(p, args)
    from bench.harness import run

    out = run.console()
    names = list(suites.NAMES) if args.suite == "all" else [args.suite]
    try:
        if args.render_only is not None:
            return render_all(names, args, out)
        for name in names:
            suite = suites.get(name)
            report = None if args.no_report else (args.report or run.DOCS / suite.report)
            code = run.measure(suite, quick=args.quick, results=args.out or results_path(name),
                               report=report, out=out)
            if code:
                return code
    except BenchError as exc:
        out.print(f"[red]{exc}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
