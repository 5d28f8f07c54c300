"""Two dashboard processes behind one load balancer: nothing lives in one process only."""

from __future__ import annotations

import uuid

import httpx
import pytest

from datagraph import Flow, IOVal, Supervisor
from tests.web_support import csrf_token, open_dashboard, web_double, web_source

pytestmark = [pytest.mark.anyio, pytest.mark.stores]

HX = {"HX-Request": "true"}
SHARED = b"the same DATAGRAPH_SECRET in every dashboard process"


async def test_a_browser_may_hit_either_of_two_dashboards(supervisor: Supervisor) -> None:
    name = f"lb flow {uuid.uuid4().hex[:6]}"
    async with (
        open_dashboard(supervisor, secret=SHARED, token="t0ken") as (app_a, _),
        open_dashboard(supervisor, secret=SHARED, token="t0ken") as (app_b, _),
    ):
        def browser(app: object) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        async with browser(app_a) as a, browser(app_b) as b:
            # Logged in on A (its session and CSRF cookies set there) ...
            assert (await a.get("/", params={"token": "t0ken"})).status_code == 303  # to the page
            token = await csrf_token(a)
            # ... the browser's next request lands on B, with the same cookies; B accepts them.
            b.cookies.update(a.cookies)
            saved = await b.post("/designer/save", data={
                "csrf_token": token, "name": name, "processor": ["web_source", "web_double"],
            }, headers=HX)
            assert saved.status_code == 200 and "X-Status" not in saved.headers, saved.text
            assert 'data-testid="designer-saved"' in saved.text
            # What B wrote, A reads: saved flows live in the store.
            listed = (await a.get("/api/flows")).json()
            assert name in [f["name"] for f in listed]
            # A run started anywhere shows on both.
            flow = Flow.from_processors(web_source, web_double).resolve()
            out = await supervisor.start_flow(flow, [IOVal("web_count", 3)])
            assert await out["web_doubled"].collect() == [0, 2, 4]
            run_id = out["web_doubled"].run_id
            assert await supervisor.wait(run_id, timeout=10) == "succeeded"
            for client in (a, b):
                page = await client.get(f"/runs/{run_id}")
                assert page.status_code == 200 and run_id in page.text


async def test_dashboards_without_a_shared_secret_refuse_each_others_forms(supervisor: Supervisor) -> None:
    async with (
        open_dashboard(supervisor, secret=b"process A's own key") as (_, a),
        open_dashboard(supervisor, secret=b"process B's own key") as (_, b),
    ):
        token = await csrf_token(a)
        b.cookies.set("dg_csrf", token)
        refused = await b.post("/designer/save", data={
            "csrf_token": token, "name": "never", "processor": ["web_source"],
        }, headers=HX)
        assert refused.headers["X-Status"] == "403"  # htmx shows it in the page's flash area
        assert "CSRF token is missing or does not match" in refused.text
