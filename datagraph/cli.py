"""The ``datagraph`` command.

Subcommands register themselves with :func:`command`::

    def _arguments(parser: argparse.ArgumentParser) -> None:
        add_store_option(parser)
        parser.add_argument("--port", type=int, default=8000)

    @command("dashboard", help="serve the dashboard", arguments=_arguments)
    def dashboard(args: argparse.Namespace) -> int:
        from web.app import serve  # heavy imports stay inside the command
        ...
        return 0

Commands defined outside ``datagraph`` (the dashboard lives in ``web``, which
``datagraph`` never imports) register the same way from their own module,
named in the ``datagraph.commands`` entry-point group::

    [project.entry-points."datagraph.commands"]
    dashboard = "web.cli"

``datagraph status`` prints processors, workers and recent runs with their
per-edge counts as tables, or as one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .history import EdgeHistory, RunHistory
    from .snapshots import StatusSnapshot

__all__ = ["Command", "add_store_option", "build_parser", "command", "main", "store_url"]

Runner = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, arguments and what it runs."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Runner


#: Registered subcommands, in the order ``datagraph --help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(
    name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Runner], Runner]:
    """Register the decorated ``run(args) -> exit code`` as ``datagraph <name>``."""

    def register(run: Runner) -> Runner:
        COMMANDS[name] = Command(name, help, arguments or (lambda parser: None), run)
        return run

    return register


def add_store_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--redis-url`` (default: ``DATAGRAPH_REDIS_URL``)."""
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the store, e.g. redis://localhost:6379/0 (default: $DATAGRAPH_REDIS_URL)",
    )


def store_url(args: argparse.Namespace) -> str | None:
    """The store URL from ``--redis-url`` or ``DATAGRAPH_REDIS_URL``."""
    url: str | None = getattr(args, "redis_url", None) or os.environ.get("DATAGRAPH_REDIS_URL")
    return url


def _load_plugins() -> None:
    """Import the modules of the ``datagraph.commands`` entry points (they register commands)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="datagraph.commands"):
        try:
            entry.load()
        except Exception as exc:  # a broken plugin must not take the other commands down
            print(f"datagraph: command {entry.name!r} is unavailable: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    _load_plugins()

    parser = argparse.ArgumentParser(
        prog="datagraph", description="Distributed asynchronous dataflows on Valkey streams."
    )
    parser.add_argument("--version", action="version", version=f"datagraph {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.arguments(sub)
        sub.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datagraph`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen: Command | None = getattr(args, "_command", None)
    if chosen is None:
        parser.print_help()
        return 2
    return chosen.run(args)


# -- datagraph status ----------------------------------------------------------------


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    from .snapshots import RUN_STATES

    add_store_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--limit", type=int, default=10, metavar="N", help="show the N most recent runs (10)"
    )
    parser.add_argument("--state", choices=RUN_STATES, help="only runs in this state")
    parser.add_argument("--run", metavar="ID", help="only this run, with its processors and error")
    parser.add_argument(
        "--history",
        action="store_true",
        help="with --run: how its edges and processors moved over time, and its bottleneck",
    )


@command("status", help="show processors, workers and recent runs", arguments=_status_arguments)
def status(args: argparse.Namespace) -> int:
    import anyio

    from .exceptions import DatagraphError

    url = store_url(args)
    if not url:
        print("datagraph status: no store; pass --redis-url or set DATAGRAPH_REDIS_URL",
              file=sys.stderr)
        return 2
    if args.history:
        if args.run is None:
            print("datagraph status: --history needs --run ID", file=sys.stderr)
            return 2
        return _status_history(url, args)
    try:
        data = anyio.run(_read_status, url, args)
    except DatagraphError as exc:
        print(f"datagraph status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(data.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_status(data, sys.stdout, detailed=args.run is not None)
    return 0


async def _read_status(url: str, args: argparse.Namespace) -> StatusSnapshot:
    from .snapshots import StatusSnapshot
    from .telemetry import Telemetry

    async with await Telemetry.connect(url) as telemetry:
        if args.run is None:
            return await telemetry.status(limit=args.limit, state=args.state)
        run = await telemetry.run(args.run)
        return StatusSnapshot(
            processors=tuple(await telemetry.processors()),
            workers=tuple(await telemetry.workers()),
            runs=(run,) if run is not None else (),
        )


def _status_history(url: str, args: argparse.Namespace) -> int:
    import anyio

    from .exceptions import DatagraphError
    from .telemetry import Telemetry

    async def read() -> RunHistory | None:
        async with await Telemetry.connect(url) as telemetry:
            return await telemetry.history(args.run)

    try:
        history = anyio.run(read)
    except DatagraphError as exc:
        print(f"datagraph status: {exc}", file=sys.stderr)
        return 1
    if history is None:
        print(f"datagraph status: no run {args.run!r} in the store (unknown, or expired)", file=sys.stderr)
        return 1
    if args.json:
        json.dump(history.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(history_text(history))
    return 0


#: Block characters for 0..1, lowest to highest (a space is empty).
_BLOCKS = " \u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"


def history_text(history: RunHistory, width: int = 100) -> str:
    """A run's history as a text heatmap ``width`` columns wide: a row per edge and processor."""
    from .history import Buckets

    lines = []
    if not history.t:
        return f"run {history.run_id} ({history.state}): no history recorded\n"
    start, end = history.t[0], history.t[-1]
    names = [_edge_name(e) for e in history.edges] + [p.name for p in history.processors]
    label_width = min(40, max(8, *map(len, names)))
    columns = width - label_width - 5  # "  <label> |<columns>|"
    grid = Buckets(history.t, columns)
    clock = time.strftime
    lines.append(
        f"run {history.run_id} ({history.state}): {clock('%H:%M:%S', time.localtime(start))} to "
        f"{clock('%H:%M:%S', time.localtime(end))}, {_seconds(end - start)}; "
        f"a column is {_seconds((end - start) / columns)}"
    )
    lines.append("EDGES: queue fill against the backpressure limit (unlimited: backlog against its peak)")
    for edge in history.edges:
        if edge.backpressure_limit:
            levels = grid.resample(edge.fill)
        else:
            peak = max(edge.backlog, default=0) or 1
            levels = grid.resample([b / peak for b in edge.backlog])
        lines.append(f"  {_edge_name(edge)[:label_width].ljust(label_width)} |{_bar(levels)}|")
    lines.append("PROCESSORS: busy share (backpressured: b, idle: .)")
    for processor in history.processors:
        busy = grid.resample(processor.busy, mean=True)
        held = grid.resample(processor.backpressured, mean=True)
        idle = grid.resample(processor.idle, mean=True)
        cells = []
        for b, h, i in zip(busy, held, idle, strict=True):
            if b is None:
                cells.append("\u00b7")
            elif (h or 0) > max(b, i or 0):
                cells.append("b")
            elif (i or 0) > max(b, h or 0):
                cells.append(".")
            else:
                cells.append(_BLOCKS[min(8, round(b * 8))])
        lines.append(f"  {processor.name[:label_width].ljust(label_width)} |{''.join(cells)}|")
    if history.bottleneck is not None:
        lines.append("BOTTLENECK " + history.bottleneck.describe())
    else:
        lines.append("BOTTLENECK none: the flow kept up")
    return "\n".join(lines) + "\n"


def _edge_name(edge: EdgeHistory) -> str:
    return f"{edge.io} ({edge.source} -> {edge.target})"


def _bar(levels: Sequence[float | None]) -> str:
    return "".join("\u00b7" if v is None else _BLOCKS[min(8, round(v * 8))] for v in levels)


def _print_status(data: StatusSnapshot, out: TextIO, *, detailed: bool) -> None:
    now = time.time()
    out.write("PROCESSORS\n")
    _table(out, ["NAME", "INPUTS", "OUTPUTS", "WAIT", "WORKERS", "ONLINE"], [
        [
            p.name,
            ", ".join(f"{i.name}: {i.type}" for i in p.inputs) or "-",
            ", ".join(f"{o.name}: {o.type}" for o in p.outputs) or "-",
            "yes" if p.wait else "no",
            str(len(p.workers)),
            "yes" if p.online else "no",
        ]
        for p in data.processors
    ])
    out.write("\nWORKERS\n")
    _table(out, ["ID", "HOST", "PID", "EXECUTOR", "PROCESSORS", "LAST BEAT", "STATUS"], [
        [
            w.id,
            w.host or "-",
            str(w.pid) if w.pid is not None else "-",
            w.executor or "-",
            ", ".join(w.processors) or "-",
            _ago(w.last_beat, now),
            "online" if w.online else "offline",
        ]
        for w in data.workers
    ])
    out.write("\nRUNS\n")
    _table(out, ["ID", "FLOW", "STATE", "STARTED", "DURATION", "DONE"], [
        [
            r.id,
            r.flow or "-",
            r.state,
            _ago(r.started, now),
            _seconds(r.duration),
            f"{r.done}/{len(r.processors)}",
        ]
        for r in data.runs
    ])
    for run in data.runs:
        out.write(f"\nrun {run.id} ({run.state})\n")
        _table(out, ["IO", "FROM", "TO", "WRITTEN", "READ", "BACKLOG", "LIMIT", "VALUES/S"], [
            [
                e.io,
                e.source,
                e.target,
                str(e.written),
                str(e.read),
                str(e.backlog),
                str(e.backpressure_limit) if e.backpressure_limit is not None else "-",
                f"{e.throughput:.0f}",
            ]
            for e in run.edges
        ], indent="  ")
        if detailed:
            out.write("\n")
            _table(out, ["PROCESSOR", "STATE", "WORKER", "BUSY", "IDLE", "BACKPRESSURED"], [
                [
                    s.name,
                    s.state,
                    s.worker or "-",
                    f"{s.busy:.0%}",
                    f"{s.idle:.0%}",
                    f"{s.backpressured:.0%}",
                ]
                for s in run.processor_states
            ], indent="  ")
        if run.retry_of:
            out.write(f"  attempt {run.attempt} of run {run.retry_of}\n")
        if len(run.attempts) > 1:
            out.write(f"  attempts ({len(run.attempts)}):\n")
            for attempt in run.attempts:
                why = f"{attempt.cause}: {attempt.message}" if attempt.cause else (
                    "running" if attempt.ended is None else "-"
                )
                at = _ago(attempt.started, now)
                out.write(f"    {attempt.number}  {attempt.run_id}  started {at}  {why}\n")
        if run.error is not None:
            error = run.error
            if run.retrying:
                out.write("  (this attempt is retried: the run is started again)\n")
            out.write(f"  error in {error.processor!r}: {error.type}: {error.message}\n")
            if detailed and error.traceback:
                for line in error.traceback.rstrip().splitlines():
                    out.write(f"    {line}\n")


def _table(out: TextIO, headers: list[str], rows: list[list[str]], indent: str = "") -> None:
    if not rows:
        out.write(f"{indent}(none)\n")
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write(indent + "  ".join(cells).rstrip() + "\n")


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    return f"{_seconds(max(0.0, now - at))} ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}s"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


# -- datagraph demo (datagraph/demo/run.py) -------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo.run import add_arguments

    add_arguments(parser)


@command(
    "demo",
    help="run the dashboard demo: an embedded Valkey, a Celery worker, the dashboard and a live run",
    arguments=_demo_arguments,
)
def demo(args: argparse.Namespace) -> int:
    from .demo.run import main as run_demo

    return run_demo(args)
