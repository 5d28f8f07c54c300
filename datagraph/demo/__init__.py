"""The demo: processors, flows and inputs that make the dashboard worth looking at.

This module holds only *declarations* (processor specs, the input model and
the demo flows), so a process can start demo flows without implementing any
processor.  The implementations live in :mod:`datagraph.demo.processors`; the
Celery service that runs them is :mod:`datagraph.demo.service`; ``datagraph
demo`` (:mod:`datagraph.demo.run`) starts everything.

Two flows:

``orders-etl``
    ``feed`` -> extract_orders -> raw_orders -> parse_orders -> orders --+
    ``feed`` -> extract_clicks -> clicks ---------------------------------+->
    merge_events (fan-in) -> events -> enrich_events (slow) -> enriched ->
    load_warehouse -> loaded -> daily_report (``wait=True``) -> report

    ``merge_events`` has a small backpressure limit, so the edge into the slow
    stage fills up (and its colour changes) while ``enrich_events`` is slow,
    and drains while it is fast.

``numbers-check``
    ``n`` -> generate_numbers -> numbers -> check_numbers -> checked, where
    ``check_numbers`` raises when its ``fail`` input is true.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..flow import Flow
from ..io import IOVal
from ..processor import Processor

__all__ = [
    "CONTINUOUS_FEED",
    "ETL_PROCESSORS",
    "NUMBERS_PROCESSORS",
    "OrderFeed",
    "check_numbers",
    "daily_report",
    "demo_flows",
    "enrich_events",
    "etl_flow",
    "etl_inputs",
    "extract_clicks",
    "extract_orders",
    "generate_numbers",
    "load_warehouse",
    "merge_events",
    "numbers_flow",
    "numbers_inputs",
    "parse_orders",
]


class OrderFeed(BaseModel):
    """What the two sources of ``orders-etl`` generate."""

    model_config = ConfigDict(extra="forbid")

    orders: int = Field(
        default=2_000, ge=0, le=10_000_000,
        description="orders to generate (0: keep going until `seconds` pass)",
    )
    rate: int = Field(default=500, ge=1, le=20_000, description="orders per second (and as many clicks)")
    seconds: float | None = Field(
        default=None, gt=0, description="stop after this many seconds, whatever `orders` says"
    )


#: The feed of the continuous run ``datagraph demo`` keeps going: ten minutes
#: at 500 orders and 500 clicks a second, then a new run starts.
CONTINUOUS_FEED = OrderFeed(orders=0, rate=500, seconds=600.0)

extract_orders = Processor(
    "extract_orders", inputs=["feed"], outputs=["raw_orders"],
    description="Reads orders from the shop's export, as CSV lines.",
)
extract_clicks = Processor(
    "extract_clicks", inputs=["feed"], outputs=["clicks"],
    description="Reads the click stream of the web shop.",
)
parse_orders = Processor(
    "parse_orders", inputs=["raw_orders"], outputs=["orders"],
    description="Parses CSV order lines into records.",
)
merge_events = Processor(
    "merge_events", inputs=["orders", "clicks"], outputs=["events"],
    # A small limit on the edge into the slow stage, so its fill level moves.
    max_backlog=2_000,
    description="Fan-in: merges orders and clicks into one event stream, in arrival order.",
)
enrich_events = Processor(
    "enrich_events", inputs=["events"], outputs=["enriched"],
    description="Looks up each event's customer segment (the slow stage).",
)
load_warehouse = Processor(
    "load_warehouse", inputs=["enriched"], outputs=["loaded"],
    description="Loads enriched events into the warehouse, reporting each load.",
)
daily_report = Processor(
    "daily_report", inputs=["loaded"], outputs=["report"], wait=True,
    description="Sums every load once the loads are complete.",
)
generate_numbers = Processor(
    "generate_numbers", inputs=["n"], outputs=["numbers"],
    description="Counts from 0 to n - 1.",
)
check_numbers = Processor(
    "check_numbers", inputs=["numbers", "fail"], outputs=["checked"],
    description="Passes numbers on; fails on purpose when told to.",
)

ETL_PROCESSORS = (
    extract_orders, extract_clicks, parse_orders, merge_events, enrich_events, load_warehouse, daily_report,
)
NUMBERS_PROCESSORS = (generate_numbers, check_numbers)


def etl_flow() -> Flow:
    """``orders-etl``, resolved."""
    return Flow.from_processors(*ETL_PROCESSORS, name="orders-etl").resolve()


def numbers_flow() -> Flow:
    """``numbers-check``, resolved."""
    return Flow.from_processors(*NUMBERS_PROCESSORS, name="numbers-check").resolve()


def etl_inputs(feed: OrderFeed) -> list[IOVal[Any]]:
    """The inputs of an ``orders-etl`` run (the feed travels as plain JSON data)."""
    return [IOVal("feed", feed.model_dump())]


def numbers_inputs(n: int, *, fail: bool = False) -> list[IOVal[Any]]:
    return [IOVal("n", n), IOVal("fail", fail)]


def demo_flows() -> list[Flow]:
    """The flows ``datagraph demo`` saves for the designer."""
    return [etl_flow(), numbers_flow()]
