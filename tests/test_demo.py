"""The demo processors run end to end on the LocalExecutor (the e2e suite runs them on Celery)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

from datagraph import IOVal, Supervisor, demo
from datagraph.exceptions import ProcessorFailed

pytestmark = pytest.mark.anyio

T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def processors() -> ModuleType:
    """The implementations, registered in this process when these tests run, not when
    they are collected: the e2e suite's process must not implement them too."""
    from datagraph.demo import processors

    return processors


def expected_report(processors: ModuleType, orders: int) -> dict[str, object]:
    """What daily_report must say about ``orders`` orders and as many clicks."""
    order_customers = [int(processors.order_line(i).split(",")[1][1:]) for i in range(orders)]
    click_customers = [int(processors.click(i)["customer"][1:]) for i in range(orders)]
    segments: dict[str, int] = {}
    for customer in order_customers + click_customers:
        segment = processors.SEGMENTS[customer % len(processors.SEGMENTS)]
        segments[segment] = segments.get(segment, 0) + 1
    revenue = sum(int(processors.order_line(i).rsplit(",", 1)[1]) for i in range(orders))
    return {
        "orders": orders,
        "clicks": orders,
        "revenue": revenue / 100,
        "segments": dict(sorted(segments.items())),
    }


async def test_orders_etl_reports_every_order_and_click(
    supervisor: Supervisor, processors: ModuleType
) -> None:
    flow = demo.etl_flow()
    assert flow.topology.floating_inputs == ("feed",)
    assert flow.topology.final_outputs == ("report",)
    # daily_report waits for the loads: it is the flow's second partition.
    assert flow.topology.partitions["daily_report"] == 1

    out = await supervisor.start_flow(flow, demo.etl_inputs(demo.OrderFeed(orders=400, rate=10_000)))
    [report] = await out["report"].collect()

    loads = report.pop("loads")
    assert loads >= 1
    assert report == expected_report(processors, 400)


async def test_orders_etl_all_streams_carry_the_values(
    supervisor: Supervisor, processors: ModuleType
) -> None:
    out = await supervisor.start_flow(
        demo.etl_flow(), demo.etl_inputs(demo.OrderFeed(orders=50, rate=10_000)), all_outputs=True
    )
    raw = await out["raw_orders"].collect()
    assert raw == [processors.order_line(i) for i in range(50)]
    events = await out["events"].collect()
    # The fan-in keeps each source's order and loses nothing.
    assert [e["order_id"] for e in events if e["kind"] == "order"] == list(range(50))
    assert sum(e["kind"] == "click" for e in events) == 50
    enriched = await out["enriched"].collect()
    assert len(enriched) == 100
    assert {e["segment"] for e in enriched} <= set(processors.SEGMENTS)


async def test_feed_with_seconds_stops_an_endless_source(supervisor: Supervisor) -> None:
    feed = demo.OrderFeed(orders=0, rate=2_000, seconds=0.3)
    out = await supervisor.start_flow(demo.etl_flow(), demo.etl_inputs(feed))
    [report] = await out["report"].collect()
    # About 0.3 s at 2,000 a second; generous bounds for a busy machine.
    assert 100 <= report["orders"] <= 700
    assert report["clicks"] == report["orders"]


async def test_numbers_check_passes_numbers_through(supervisor: Supervisor) -> None:
    out = await supervisor.start_flow(demo.numbers_flow(), demo.numbers_inputs(25))
    assert await out["checked"].collect() == list(range(25))


async def test_check_numbers_told_to_fail_names_itself(supervisor: Supervisor) -> None:
    out = await supervisor.start_flow(demo.numbers_flow(), demo.numbers_inputs(25, fail=True))
    with pytest.raises(ProcessorFailed) as caught:
        await out["checked"].collect()
    assert caught.value.processor == "check_numbers"
    assert caught.value.error_type == "DemoFailure"
    assert "told to fail" in caught.value.error_message
    assert "check_numbers" in caught.value.traceback
    run_id = out["checked"].run_id
    assert await supervisor.wait(run_id, timeout=10) == "failed"


async def test_generate_numbers_refuses_a_negative_count(supervisor: Supervisor) -> None:
    out = await supervisor.start_flow(demo.numbers_flow(), [IOVal("n", -1), IOVal("fail", False)])
    with pytest.raises(ProcessorFailed, match=r"generate_numbers.*must not be negative"):
        await out["checked"].collect()


async def test_enrich_closes_its_directory_dependency(
    supervisor: Supervisor, processors: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    original = processors.CustomerDirectory.__init__

    def spy(self: Any, *args: float, **kwargs: float) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(processors.CustomerDirectory, "__init__", spy)
    out = await supervisor.start_flow(demo.etl_flow(), demo.etl_inputs(demo.OrderFeed(orders=20)))
    await out["report"].collect()
    [directory] = opened
    assert directory.lookups == 40
    assert directory.closed


def test_customer_directory_capacity_swings_between_its_bounds(processors: ModuleType) -> None:
    directory = object.__new__(processors.CustomerDirectory)
    directory.low, directory.high, directory.period, directory.opened = 500.0, 1_700.0, 30.0, 0.0
    samples = [directory.capacity(t / 10) for t in range(300)]
    assert min(samples) == pytest.approx(500.0, abs=1)
    assert max(samples) == pytest.approx(1_700.0, abs=1)


def test_order_feed_validates_like_the_launch_form_does() -> None:
    assert demo.OrderFeed.model_validate({"orders": 10}).rate == 500
    with pytest.raises(ValueError, match="rate"):
        demo.OrderFeed.model_validate({"rate": 0})
    with pytest.raises(ValueError, match="extra"):
        demo.OrderFeed.model_validate({"orderz": 1})
    schema = demo.OrderFeed.model_json_schema()
    assert set(schema["properties"]) == {"orders", "rate", "seconds"}


@pytest.mark.celery
def test_demo_command_leaves_nothing_behind_when_killed(tmp_path: Path) -> None:
    """``datagraph demo`` killed with SIGKILL (no cleanup runs): the kernel ends its worker and Valkey."""
    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["TMPDIR"] = str(tmp_path)  # what a killed demo cannot clean up stays here
    command = [sys.executable, "-m", "datagraph", "demo", "--port", "0", "--no-browser", "--rate", "50"]
    with output.open("wb") as sink:
        demo_process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    try:
        banner = _wait_for(
            lambda: BANNER.search(output.read_text(errors="replace")), 60, demo_process, output
        )
    finally:
        demo_process.kill()
        demo_process.wait(10)
    worker_pid, store_port = int(banner["pid"]), int(banner["port"])

    def gone() -> bool:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            pass
        else:
            return False
        try:
            socket.create_connection(("127.0.0.1", store_port), timeout=0.5).close()
        except OSError:
            return True
        return False

    _wait_for(gone, 15, None, output)


BANNER = re.compile(r"store\s+redis://127\.0\.0\.1:(?P<port>\d+)/0.*?\(pid (?P<pid>\d+),", re.DOTALL)


def _wait_for(
    condition: Callable[[], T | None], seconds: float, process: subprocess.Popen[bytes] | None, output: Path
) -> T:
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if process is not None and process.poll() is not None:
            pytest.fail(f"datagraph demo exited ({process.returncode}):\n{output.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {seconds:.0f}s:\n{output.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return result


@pytest.mark.celery
def test_demo_keeps_its_store_on_a_cluster_given_by_url(tmp_path: Path, valkey_cluster: Any) -> None:
    """``datagraph demo --redis-url <a cluster node>``: runs live on the cluster; the broker is embedded."""
    import anyio

    from datagraph.telemetry import Telemetry

    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [
        sys.executable, "-m", "datagraph", "demo", "--port", "0", "--no-browser", "--rate", "50",
        "--redis-url", valkey_cluster.url,
    ]
    with output.open("wb") as sink:
        demo_process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    try:
        banner = _wait_for(
            lambda: CLUSTER_BANNER.search(output.read_text(errors="replace")), 90, demo_process, output
        )
        assert banner["url"] == valkey_cluster.url

        async def live_run_state() -> str | None:
            async with await Telemetry.connect(valkey_cluster.url) as telemetry:
                run = await telemetry.run(banner["run"])
                return run.state if run is not None else None

        assert anyio.run(live_run_state) in ("running", "succeeded")
    finally:
        demo_process.send_signal(signal.SIGINT)
        try:
            demo_process.wait(30)
        except subprocess.TimeoutExpired:
            demo_process.kill()
            demo_process.wait(10)


CLUSTER_BANNER = re.compile(
    r"store\s+(?P<url>redis://\S+) \(Celery's broker: the embedded Valkey.*?/runs/(?P<run>\w+)", re.DOTALL
)
