"""Pages of the dashboard over ASGI, against the test Valkey and in-process processors."""

from __future__ import annotations

import pytest

from datagraph import Flow, IOVal, Supervisor
from tests.web_support import (
    csrf_token,
    open_dashboard,
    text_of,
    web_double,
    web_fail,
    web_source,
    web_xss,
)

pytestmark = [pytest.mark.anyio, pytest.mark.stores]


async def _run(supervisor: Supervisor, flow: Flow, **inputs: object) -> str:
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name=k, value=v) for k, v in inputs.items()])
    run_id = next(iter(outputs.values())).run_id
    await supervisor.wait(run_id, timeout=20)
    return run_id


async def test_every_page_renders(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_source, web_double, name="web pages").resolve()
    run_id = await _run(supervisor, flow, web_count=5)
    async with open_dashboard(supervisor) as (_, client):
        for path in [
            "/processors",
            "/processors/web_source",
            "/designer",
            "/designer?processor=web_source&processor=web_double",
            "/runs",
            "/runs?state=succeeded",
            f"/runs/{run_id}",
            "/operations",
            "/operations?state=failed&stuck_after=60",
            "/launch?processor=web_source",
            "/healthz",
            "/metrics",
            "/static/app.css",
            "/static/dashboard.css",
        ]:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
        home = await client.get("/")
        assert home.status_code == 307
        assert home.headers["location"] == "/operations"


async def test_unknown_things_are_404_pages_not_500(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        for path in ["/processors/nope", "/runs/no-such-run", "/runs?state=bogus", "/launch?flow=nope"]:
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "text/html" in response.headers["content-type"]
            assert 'id="error-message"' in response.text


async def test_processor_list_shows_types_workers_and_filters(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get("/processors")
        assert 'data-processor="web_source"' in page.text
        assert 'data-processor="web_fail"' in page.text
        row = page.text.split('data-processor="web_typed"', 1)[1].split("</tr>", 1)[0]
        assert "web_m" in row and "WebOrder" in row and "list[int]" in row
        assert "online" in row

        hx = {"HX-Request": "true"}
        partial = await client.get("/processors", params={"q": "doubles every"}, headers=hx)
        assert partial.status_code == 200
        assert "<html" not in partial.text  # the partial, not the page
        assert 'data-processor="web_double"' in partial.text
        assert 'data-processor="web_source"' not in partial.text

        nothing = await client.get("/processors", params={"q": "zzz-matches-nothing"}, headers=hx)
        assert 'data-testid="processor-empty"' in nothing.text


async def test_processor_detail(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get("/processors/web_source")
        assert page.status_code == 200
        text = text_of(page.text)
        assert "Counts from zero up to" in text
        assert "web_count" in text and "int" in text
        assert 'id="processor-workers"' in page.text
        assert supervisor.worker_id in page.text


async def test_docstring_with_script_is_shown_as_text(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        for path in ["/processors", "/processors/web_xss", "/designer"]:
            page = await client.get(path)
            assert "<script>alert('doc')</script>" not in page.text, path
        detail = await client.get("/processors/web_xss")
        assert "&lt;script&gt;alert(&#39;doc&#39;)&lt;/script&gt;" in detail.text


async def test_run_view_shows_counts_graph_and_escaped_values(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_source, web_double, name="web counts").resolve()
    run_id = await _run(supervisor, flow, web_count=7)
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get(f"/runs/{run_id}")
        assert page.status_code == 200
        html = page.text
        assert 'data-state="succeeded"' in html
        assert 'id="node-web_source"' in html and 'id="edge-web_numbers-web_double"' in html
        edge = html.split('data-edge-id="edge-web_numbers-web_double"', 1)[1].split("</tr>", 1)[0]
        assert '<td class="num" data-testid="edge-written">7</td>' in edge
        assert '<td class="num" data-testid="edge-read">7</td>' in edge
        assert "2/2 processors done" in text_of(html)
        preview = html.split('data-testid="preview" data-io="web_doubled"', 1)[1].split("</div>", 1)[0]
        assert "12" in preview  # the last value, 6 * 2

    xss = Flow.from_processors(web_xss, name="web xss").resolve()
    run_id = await _run(supervisor, xss, web_xss_in={"a": 1})
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get(f"/runs/{run_id}")
        assert "<script>alert('value')</script>" not in page.text
        assert "&lt;script&gt;alert(" in page.text


async def test_failed_run_shows_error_and_traceback(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_fail, name="web failing").resolve()
    run_id = await _run(supervisor, flow, web_trigger=41)
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get(f"/runs/{run_id}")
        assert 'data-state="failed"' in page.text
        assert 'data-testid="run-traceback"' in page.text
        text = text_of(page.text)
        assert "RuntimeError: web_fail exploded on 41" in text
        assert "Traceback" in text and "_web_fail" in text
        ops = await client.get("/operations")
        assert f'data-testid="failed-run" data-run-id="{run_id}"' in ops.text


async def test_cancel_button_cancels_a_running_run(supervisor: Supervisor) -> None:
    from tests.web_support import web_slow

    flow = Flow.from_processors(web_slow, name="web cancel").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=100_000)])
    run_id = outputs["web_slow_out"].run_id
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get(f"/runs/{run_id}")
        assert 'id="run-cancel"' in page.text
        token = await csrf_token(client)
        response = await client.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
        assert response.status_code == 303
        assert response.headers["location"] == f"/runs/{run_id}"
        assert await supervisor.wait(run_id, timeout=10) == "cancelled"
        page = await client.get(f"/runs/{run_id}")
        assert 'id="run-cancel"' not in page.text
        assert 'data-state="cancelled"' in page.text


async def test_runs_list_filters_by_state(supervisor: Supervisor) -> None:
    ok = await _run(supervisor, Flow.from_processors(web_source, name="web ok").resolve(), web_count=1)
    bad = await _run(supervisor, Flow.from_processors(web_fail, name="web bad").resolve(), web_trigger=1)
    async with open_dashboard(supervisor) as (_, client):
        failed = await client.get("/runs", params={"state": "failed", "limit": 500})
        assert f'data-run-id="{bad}"' in failed.text and f'data-run-id="{ok}"' not in failed.text
        partial = await client.get("/runs", params={"state": "succeeded", "limit": 500},
                                   headers={"HX-Request": "true"})
        assert "<html" not in partial.text
        assert f'data-run-id="{ok}"' in partial.text and f'data-run-id="{bad}"' not in partial.text


async def test_cancel_from_the_live_header_uses_htmx(supervisor: Supervisor) -> None:
    from tests.web_support import web_slow

    flow = Flow.from_processors(web_slow, name="web cancel htmx").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=100_000)])
    run_id = outputs["web_slow_out"].run_id
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get(f"/runs/{run_id}")
        header = page.text.split('id="run-header"', 1)[1].split("</div>\n</div>", 1)[0]
        assert f'hx-post="/runs/{run_id}/cancel"' in header
        token = await csrf_token(client)
        response = await client.post(
            f"/runs/{run_id}/cancel", headers={"HX-Request": "true", "X-CSRF-Token": token}
        )
        assert response.status_code == 200
        assert response.headers["HX-Redirect"] == f"/runs/{run_id}"
        assert await supervisor.wait(run_id, timeout=10) == "cancelled"


async def test_operations_finds_running_runs_behind_the_recent_ones(
    supervisor: Supervisor, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running runs come from the recent ones when those cover them, else from further back."""
    import uuid
    from collections.abc import AsyncIterator

    import anyio

    from datagraph import IO, Processor
    from datagraph.telemetry import Telemetry
    from web import views

    await Supervisor.adetach()  # a namespace of its own: a run index with only this test's runs
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, secret=b"test-secret", namespace=f"ops{uuid.uuid4().hex[:8]}"
    )
    gate = anyio.Event()
    parked = Processor("ops_parked", ["ops_in"], ["ops_out"])

    @parked
    async def _parked(ops_in: IO[int]) -> AsyncIterator[IOVal[int]]:
        value = await ops_in.first()
        await gate.wait()
        yield IOVal("ops_out", value)

    old = await supervisor.start_flow(Flow.from_processors(parked).resolve(), [IOVal("ops_in", 1)])
    old_id = old["ops_out"].run_id
    flow = Flow.from_processors(web_source, web_double).resolve()
    for _ in range(3):
        out = await supervisor.start_flow(flow, [IOVal("web_count", 1)])
        assert await out["web_doubled"].collect() == [0]
        assert await supervisor.wait(out["web_doubled"].run_id, timeout=10) == "succeeded"
    telemetry = Telemetry((await supervisor.runtime()).client, supervisor.settings)

    async def stuck_ids() -> list[str]:
        view = await views.ops_view(telemetry, state=None, stuck_after=0.0, failed_window=3600.0)
        return [run.id for run, _ in view.stuck]

    assert await stuck_ids() == [old_id]  # the recent runs hold every run: one read
    monkeypatch.setattr(views, "OPS_RECENT_RUNS", 3)
    assert await stuck_ids() == [old_id]  # behind the 3 most recent: read further back
    gate.set()
    assert await old["ops_out"].collect() == [1]
