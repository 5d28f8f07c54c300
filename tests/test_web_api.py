"""JSON API, Prometheus metrics and health check."""

from __future__ import annotations

import pytest

from datagraph import Flow, IOVal, Supervisor
from tests.web_support import open_dashboard, web_double, web_slow, web_source

pytestmark = pytest.mark.anyio


async def test_json_endpoints(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_source, web_double, name="web api").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_count", value=3)])
    run_id = outputs["web_doubled"].run_id
    await supervisor.wait(run_id, timeout=20)
    async with open_dashboard(supervisor) as (_, client):
        processors = (await client.get("/api/processors")).json()
        source = next(p for p in processors if p["name"] == "web_source")
        assert source["inputs"] == [{"name": "web_count", "type": "int", "schema": {"type": "integer"}}]
        assert source["online"] is True
        one = (await client.get("/api/processors/web_source")).json()
        # Which workers are online may change between the two reads (other tests' workers expire).
        volatile = {"online_workers", "workers", "updated"}
        assert {k: v for k, v in one.items() if k not in volatile} == {
            k: v for k, v in source.items() if k not in volatile
        }
        assert one["online"] is True and set(one["online_workers"]) <= set(one["workers"])
        assert (await client.get("/api/processors/nope")).status_code == 404

        workers = (await client.get("/api/workers")).json()
        me = next(w for w in workers if w["id"] == supervisor.worker_id)
        assert me["online"] is True and "web_source" in me["processors"]

        runs = (await client.get("/api/runs", params={"state": "succeeded", "limit": 500})).json()
        assert run_id in {r["id"] for r in runs}
        assert all(r["state"] == "succeeded" for r in runs)
        assert (await client.get("/api/runs", params={"state": "bogus"})).status_code == 422
        assert (await client.get("/api/runs", params={"limit": 0})).status_code == 422

        run = (await client.get(f"/api/runs/{run_id}")).json()
        assert run["state"] == "succeeded" and run["flow"] == "web api"
        edge = next(e for e in run["edges"] if e["io"] == "web_numbers")
        assert (edge["source"], edge["target"]) == ("web_source", "web_double")
        assert (edge["written"], edge["read"]) == (3, 3)
        missing = await client.get("/api/runs/nope")
        assert missing.status_code == 404 and "unknown" in missing.json()["detail"]

        assert isinstance((await client.get("/api/flows")).json(), list)
        assert (await client.get("/api/flows/nope")).status_code == 404


async def test_api_cancel(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_slow, name="web api cancel").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=100_000)])
    run_id = outputs["web_slow_out"].run_id
    async with open_dashboard(supervisor) as (_, client):
        response = await client.post(f"/api/runs/{run_id}/cancel", json={})
        assert response.status_code == 200 and response.json() == {"run_id": run_id, "cancelled": True}
        again = await client.post(f"/api/runs/{run_id}/cancel", json={})
        assert again.json()["cancelled"] is False
        assert (await client.post("/api/runs/nope/cancel", json={})).status_code == 404
    assert await supervisor.wait(run_id, timeout=10) == "cancelled"


async def test_healthz(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


async def test_read_only_dashboard_on_a_url(valkey_url: str, anyio_backend: str) -> None:
    from datagraph.supervisor import Supervisor as SupervisorClass

    SupervisorClass.detach()
    async with open_dashboard(redis_url=valkey_url) as (_, client):
        assert (await client.get("/processors")).status_code == 200
        assert (await client.get("/operations")).status_code == 200
        body = {"processors": ["web_source"], "inputs": {"web_count": 1}}
        response = await client.post("/api/runs", json=body)
        assert response.status_code == 422
        assert "read-only" in response.json()["detail"]
