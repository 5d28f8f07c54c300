"""The performance targets, checked against the figures of this run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._harness import Bench

__all__ = ["evaluate", "show"]

Figures = dict[str, dict[str, Any]]


def _get(figures: Figures, path: str) -> Any:
    node: Any = figures
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


#: (target, figure path, test, how to print the figure)
TARGETS: list[tuple[str, str, Callable[[Any], bool], Callable[[Any], str]]] = [
    (
        "pipeline, ints, asyncio >= 200,000 values/s",
        "pipeline.asyncio.ints",
        lambda v: v >= 200_000,
        lambda v: f"{v:,.0f} values/s",
    ),
    (
        "pipeline, ints, asyncio >= 10% of the glide relay",
        "pipeline.asyncio.ints_vs_relay",
        lambda v: v >= 0.10,
        lambda v: f"{v:.1%}",
    ),
    (
        "pipeline, ints, Trio within 15% of asyncio (>= 0.85x)",
        "pipeline.trio_vs_asyncio_ints",
        lambda v: v >= 0.85,
        lambda v: f"Trio = {v:.2f}x asyncio",
    ),
    (
        "pipeline, 1 KiB dicts, asyncio >= 50,000 values/s",
        "pipeline.asyncio.records",
        lambda v: v >= 50_000,
        lambda v: f"{v:,.0f} values/s",
    ),
    (
        "pipeline, 1 KiB dicts, Trio >= 50,000 values/s",
        "pipeline.trio.records",
        lambda v: v >= 50_000,
        lambda v: f"{v:,.0f} values/s",
    ),
    ("latency, one value, p50 < 3 ms", "latency.one_value.p50_ms", lambda v: v < 3, lambda v: f"{v:.2f} ms"),
    (
        "latency, one value, p99 < 15 ms",
        "latency.one_value.p99_ms",
        lambda v: v < 15,
        lambda v: f"{v:.2f} ms",
    ),
    (
        "pipeline, ints, asyncio >= 0.25x the glide relay",
        "pipeline.asyncio.ints_vs_relay",
        lambda v: v >= 0.25,
        lambda v: f"{v:.3f}x",
    ),
    (
        "pipeline, ints, Trio >= 0.25x the glide relay",
        "pipeline.trio.ints_vs_relay",
        lambda v: v >= 0.25,
        lambda v: f"{v:.3f}x",
    ),
    (
        "pipeline, ints, an IOBatch per step, asyncio >= 0.25x the relay",
        "pipeline.asyncio.ints_batched_vs_relay",
        lambda v: v >= 0.25,
        lambda v: f"{v:.3f}x",
    ),
    (
        "pipeline, ints, an IOBatch per step, Trio >= 0.25x the relay",
        "pipeline.trio.ints_batched_vs_relay",
        lambda v: v >= 0.25,
        lambda v: f"{v:.3f}x",
    ),
    (
        "pipeline, 1 KiB dicts, asyncio >= 0.70x the glide relay",
        "pipeline.asyncio.records_vs_relay",
        lambda v: v >= 0.70,
        lambda v: f"{v:.3f}x",
    ),
    (
        "pipeline, 1 KiB dicts, Trio >= 0.70x the glide relay",
        "pipeline.trio.records_vs_relay",
        lambda v: v >= 0.70,
        lambda v: f"{v:.3f}x",
    ),
    (
        "pipeline, 1 KiB dicts, Trio within 10% of asyncio (>= 0.90x)",
        "pipeline.trio_vs_asyncio_records",
        lambda v: v >= 0.90,
        lambda v: f"Trio = {v:.2f}x asyncio",
    ),
    (
        "latency, one value, p50 <= 2x the relay's round trip",
        "latency.one_value.p50_vs_relay",
        lambda v: v <= 2,
        lambda v: f"{v:.1f}x",
    ),
    (
        "latency, one value, p99 <= 4x the relay's round trip",
        "latency.one_value.p99_vs_relay",
        lambda v: v <= 4,
        lambda v: f"{v:.1f}x",
    ),
    (
        "runs, one value, 50 at a time, asyncio >= 0.35x the bare store work",
        "runs.asyncio.flow_50_vs_bare",
        lambda v: v >= 0.35,
        lambda v: f"{v:.3f}x",
    ),
    (
        "runs, one value, 50 at a time, Trio >= 0.35x the bare store work",
        "runs.trio.flow_50_vs_bare",
        lambda v: v >= 0.35,
        lambda v: f"{v:.3f}x",
    ),
    (
        "dashboard, 300 running runs: every page and /metrics p50 <= 150 ms",
        "dashboard.slowest_page_p50_ms",
        lambda v: v <= 150,
        lambda v: f"slowest p50 {v:.0f} ms",
    ),
    (
        "dashboard, 300 running runs: first SSE event <= 200 ms",
        "dashboard.first_event_ms",
        lambda v: v <= 200,
        lambda v: f"{v:.0f} ms",
    ),
    (
        "history: run page, 30 edges, 15 min, p50 < 150 ms",
        "history.page_p50_ms",
        lambda v: v < 150,
        lambda v: f"{v:.0f} ms",
    ),
    (
        "history: the same page, first view, p50 < 150 ms",
        "history.page_first_view_p50_ms",
        lambda v: v < 150,
        lambda v: f"{v:.0f} ms",
    ),
    ("memory, RSS growth < 50 MB", "memory.rss_growth_mb", lambda v: v < 50, lambda v: f"{v:.1f} MB"),
    (
        "memory, Valkey used_memory flat",
        "memory.valkey_growth_mb",
        lambda v: v < 5,
        lambda v: f"{v:+.1f} MB after warm-up",
    ),
    (
        "celery, streaming >= 20x the task-per-value chain",
        "celery.best_vs_chain",
        lambda v: v >= 20,
        lambda v: f"{v:.1f}x",
    ),
    (
        "executors, CPU-bound, ProcessExecutor >= 1.6x LocalExecutor",
        "executors.best_cpu_vs_local",
        lambda v: v >= 1.6,
        lambda v: f"{v:.2f}x",
    ),
]


def evaluate(figures: Figures) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = []
    for target, path, test, show_value in TARGETS:
        value = _get(figures, path)
        if value is None:
            verdicts.append({"target": target, "met": None, "figure": "not measured"})
        else:
            verdicts.append({"target": target, "met": bool(test(value)), "figure": show_value(value)})
    return verdicts


def show(bench: Bench, verdicts: list[dict[str, Any]]) -> None:
    """Print the targets this run measured (``--only`` may have skipped some)."""
    measured = [v for v in verdicts if v["met"] is not None]
    if not measured:
        return
    bench.title("targets", "from the performance issue")
    for verdict in measured:
        mark = "met" if verdict["met"] else "NOT MET"
        bench.say(f"  {mark:<8} {verdict['target']:<56} {verdict['figure']}")
