"""Webhook notifications, against a local HTTP receiver: each event once, retried, never in the way."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ConfigError
from datagraph.store import keys
from tests.web_support import open_dashboard, web_fail
from web.notify import parse_notify_urls

nt_flood = Processor("nt_flood", inputs=["nt_seconds"], outputs=["nt_flooded"], max_backlog=20)
nt_slow = Processor("nt_slow", inputs=["nt_flooded"], outputs=["nt_out"])
nt_idle = Processor("nt_idle", inputs=["nt_wait"], outputs=["nt_never"])


@nt_flood
async def _flood(nt_seconds: IO[float]) -> AsyncIterator[IOVal[int]]:
    deadline = time.monotonic() + await nt_seconds.first()
    i = 0
    while time.monotonic() < deadline:
        yield IOVal(name="nt_flooded", value=i)
        i += 1


@nt_slow
async def _slow(nt_flooded: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in nt_flooded.stream():
        await anyio.sleep(0.2)
        yield IOVal(name="nt_out", value=value)


@nt_idle
async def _idle(nt_wait: IO[float]) -> AsyncIterator[IOVal[int]]:
    await anyio.sleep(await nt_wait.first())
    yield IOVal(name="nt_never", value=0)


@dataclass
class Receiver:
    """A webhook receiver on a free port: records every POST; the first ``fail_first`` get 500."""

    fail_first: int = 0
    stall: float = 0.0
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    def payloads(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            body for _, body in self.posts
            if body["event"] == event and all(body.get(k) == v for k, v in match.items())
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state.attempts += 1
                failing = state.attempts <= state.fail_first
            if state.stall:
                time.sleep(state.stall)
            if failing:
                self.send_response(500)
                self.end_headers()
                return
            with lock:
                state.posts.append((self.path, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _until(predicate: Any, deadline: float, what: str) -> None:
    """Poll ``predicate`` (fed by the receiver's thread, so no event to wait on) until a deadline."""
    end = anyio.current_time() + deadline
    while not predicate():
        if anyio.current_time() > end:
            pytest.fail(f"{what} did not happen within {deadline:.0f}s", pytrace=False)
        await anyio.sleep(0.05)


def test_notify_urls_must_be_http() -> None:
    assert parse_notify_urls(["http://a/x, https://b/y", "http://c"]) == ["http://a/x", "https://b/y", "http://c"]
    with pytest.raises(ConfigError, match="'ftp://x' is not an http"):
        parse_notify_urls(["ftp://x"])


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_each_event_is_posted_once_by_two_dashboards(
    supervisor: Supervisor, receiver: Receiver
) -> None:
    receiver.fail_first = 2  # the first POSTs fail: they are retried
    options: dict[str, Any] = {
        "notify_urls": [receiver.url], "notify_after": 1.0, "notify_interval": 0.2, "stuck_after": 1.0,
        "public_url": "https://dash.example",
    }
    flow = Flow.from_processors(web_fail, name="nt failing").resolve()
    failing = await supervisor.start_flow(flow, inputs=[IOVal(name="web_trigger", value=1)])
    failed_id = failing["web_never"].run_id
    backed = await supervisor.start_flow(
        Flow.from_processors(nt_flood, nt_slow, name="nt backed up").resolve(),
        inputs=[IOVal(name="nt_seconds", value=30.0)],
    )
    backed_id = backed["nt_out"].run_id
    quiet = await supervisor.start_flow(
        Flow.from_processors(nt_idle, name="nt quiet").resolve(), inputs=[IOVal(name="nt_wait", value=30.0)]
    )
    quiet_id = quiet["nt_never"].run_id
    # A worker that stopped heart-beating long ago, without saying it stopped.
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    runtime = await supervisor.runtime()
    beat = time.time() - 60
    await runtime.client.custom_command(["ZADD", keys.WORKERS, repr(beat), ghost])
    await runtime.client.custom_command(
        ["HSET", keys.worker(ghost), "last_beat", repr(beat), "host", "ghost-host", "lease", "5"]
    )
    try:
        async with open_dashboard(supervisor, **options) as (app_a, client_a), \
                open_dashboard(supervisor, **options) as (app_b, _):
            started = time.monotonic()

            def everything_arrived() -> bool:
                return bool(
                    receiver.payloads("run.failed", run_id=failed_id)
                    and receiver.payloads("edge.backpressured", run_id=backed_id)
                    and receiver.payloads("run.stuck", run_id=quiet_id)
                    and receiver.payloads("worker.offline", worker=ghost)
                )

            await _until(everything_arrived, 45, "every kind of event reaching the receiver")
            # Pages answer while notifications go out.
            assert (await client_a.get("/healthz")).status_code == 200
            await anyio.sleep(1.0)  # a few more polls of both dashboards: nothing is sent twice
        assert time.monotonic() - started < 45
    finally:
        await supervisor.cancel(backed_id)
        await supervisor.cancel(quiet_id)
        await runtime.client.custom_command(["ZREM", keys.WORKERS, ghost])
        await runtime.client.custom_command(["DEL", keys.worker(ghost)])

    (failed,) = receiver.payloads("run.failed", run_id=failed_id)
    assert failed["flow"] == "nt failing" and failed["processor"] == "web_fail"
    assert failed["url"] == f"https://dash.example/runs/{failed_id}"
    assert "web_fail" in failed["text"] and failed["text"].startswith("Datagraph: run ")
    assert failed["worker"] == supervisor.worker_id
    (edge,) = receiver.payloads("edge.backpressured", run_id=backed_id)
    assert (edge["io"], edge["source"], edge["target"], edge["processor"]) == (
        "nt_flooded", "nt_flood", "nt_slow", "nt_slow"
    )
    assert len(receiver.payloads("run.stuck", run_id=quiet_id)) == 1
    (offline,) = receiver.payloads("worker.offline", worker=ghost)
    assert offline["url"] == "https://dash.example/operations" and "ghost-host" in offline["text"]
    # The two dashboards shared the work: together they claimed each event once.
    claims_a = set(app_a.state.notifier.claimed)
    claims_b = set(app_b.state.notifier.claimed)
    assert not claims_a & claims_b
    assert receiver.attempts >= len(receiver.posts) + 2


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_slow_webhook_never_slows_the_pages(supervisor: Supervisor, receiver: Receiver) -> None:
    receiver.stall = 3.0
    flow = Flow.from_processors(web_fail, name="nt stalled").resolve()
    failing = await supervisor.start_flow(flow, inputs=[IOVal(name="web_trigger", value=2)])
    run_id = failing["web_never"].run_id
    async with open_dashboard(supervisor, notify_urls=[receiver.url], notify_interval=0.1) as (app, client):
        await _until(lambda: any(c == f"run.failed:{run_id}" for c in app.state.notifier.claimed), 20,
                     "the failed run being claimed")
        # The POST is stalled in the receiver; pages answer at their usual pace meanwhile.
        for _ in range(5):
            with anyio.fail_after(2):
                assert (await client.get("/operations")).status_code == 200
        assert not receiver.payloads("run.failed", run_id=run_id)
        await _until(lambda: bool(receiver.payloads("run.failed", run_id=run_id)), 20, "the stalled POST")


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_retried_run_alerts_only_when_its_last_attempt_fails(
    supervisor: Supervisor, receiver: Receiver, anyio_backend: str
) -> None:
    from tests.test_retries import Flaky, flaky_processor, new_tag

    recovers = flaky_processor("nt_recovers", fail_times=1)
    gives_up = flaky_processor("nt_gives_up", fail_times=5)
    options: dict[str, Any] = {"notify_urls": [receiver.url], "notify_after": 1.0, "notify_interval": 0.2}
    async with open_dashboard(supervisor, **options):
        ids = []
        for proc in (recovers, gives_up):
            tag = new_tag(proc.name, anyio_backend, wait=False)
            out = await supervisor.start_flow(
                Flow.from_processors(proc).resolve(), [IOVal(f"{proc.name}_job", {"n": 20, "tag": tag})],
                retries=1, retry_on=[Flaky],
            )
            ids.append(out[f"{proc.name}_out"].run_id)
        recovered, gave_up = ids
        assert await supervisor.wait(recovered, timeout=20) == "succeeded"
        assert await supervisor.wait(gave_up, timeout=20) == "failed"
        last = f"{gave_up}.2"
        await _until(lambda: receiver.payloads("run.failed", run_id=last), 30, "the last attempt's alert")
        await anyio.sleep(1.0)  # more polls: the attempts that were retried stay quiet
    assert receiver.payloads("run.failed", run_id=recovered) == []
    assert receiver.payloads("run.failed", run_id=gave_up) == []
    assert len(receiver.payloads("run.failed", run_id=f"{gave_up}.2")) == 1
