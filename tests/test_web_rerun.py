"""Re-running from the dashboard: the API, the run page's panel and the pre-filled launch form."""

from __future__ import annotations

import pytest

from datagraph import Flow, IOVal, LocalExecutor, Supervisor
from tests.web_support import csrf_token, open_dashboard, text_of, web_slow, web_source

pytestmark = pytest.mark.anyio


async def _finished(supervisor: Supervisor, count: int = 3) -> str:
    flow = Flow.from_processors(web_source, name="web rerun").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_count", value=count)])
    run_id = outputs["web_numbers"].run_id
    await supervisor.wait(run_id, timeout=20)
    return run_id


async def test_api_rerun_starts_the_same_flow_and_links_both_runs(supervisor: Supervisor) -> None:
    origin = await _finished(supervisor)
    async with open_dashboard(supervisor) as (_, client):
        response = await client.post(f"/api/runs/{origin}/rerun", json={})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["rerun_of"] == origin and body["url"] == f"/runs/{body['run_id']}"
        assert await supervisor.wait(body["run_id"], timeout=20) == "succeeded"
        new = (await client.get(f"/api/runs/{body['run_id']}")).json()
        assert new["flow"] == "web rerun" and new["inputs"]["web_count"]["first"] == "3"
        info = (await client.get(f"/api/runs/{origin}/rerun")).json()
        assert info["reruns"] == [body["run_id"]] and info["can_rerun"] is True
        assert (await client.get(f"/api/runs/{body['run_id']}/rerun")).json()["rerun_of"] == origin

        # Both pages say so.
        panel = text_of((await client.get(f"/runs/{origin}/rerun-panel")).text)
        assert "Run again" in panel and "Edit and run again" in panel and body["run_id"][:12] in panel
        child = text_of((await client.get(f"/runs/{body['run_id']}/rerun-panel")).text)
        assert f"Re-run of {origin[:12]}" in child

        assert (await client.post("/api/runs/nope/rerun", json={})).status_code == 404


async def test_the_form_rerun_lands_on_the_new_run(supervisor: Supervisor) -> None:
    origin = await _finished(supervisor)
    async with open_dashboard(supervisor) as (_, client):
        token = await csrf_token(client)
        response = await client.post(f"/runs/{origin}/rerun", data={"csrf_token": token})
        assert response.status_code == 303
        new_id = response.headers["location"].removeprefix("/runs/")
        assert await supervisor.wait(new_id, timeout=20) == "succeeded"


async def test_a_running_run_is_not_offered_and_refused(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_slow, name="web rerun slow").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=100_000)])
    run_id = outputs["web_slow_out"].run_id
    try:
        async with open_dashboard(supervisor) as (_, client):
            panel = await client.get(f"/runs/{run_id}/rerun-panel")
            assert 'hx-trigger="every 2s"' in panel.text  # polled until the run ends
            assert "run-rerun-button" not in panel.text
            refused = await client.post(f"/api/runs/{run_id}/rerun", json={})
            assert refused.status_code == 409 and "still running" in refused.json()["detail"]
    finally:
        await supervisor.cancel(run_id)


async def test_edit_and_run_again_prefills_the_launch_form(supervisor: Supervisor) -> None:
    origin = await _finished(supervisor, count=7)
    async with open_dashboard(supervisor) as (_, client):
        form = await client.get(f"/runs/{origin}/rerun/edit")
        assert form.status_code == 200
        assert 'name="input.web_count" value="7"' in form.text
        assert '<input type="hidden" name="processor" value="web_source">' in form.text
        assert f'action="/runs/{origin}/rerun/edit"' in form.text
        assert (await client.get("/runs/nope/rerun/edit")).status_code == 404

        # Posting it runs the same flow with the edited inputs, linked to the origin.
        token = await csrf_token(client)
        edit = f"/runs/{origin}/rerun/edit"
        bad = await client.post(edit, data={"csrf_token": token, "input.web_count": "x"})
        assert bad.status_code == 422 and "whole number" in text_of(bad.text)
        good = await client.post(edit, data={"csrf_token": token, "input.web_count": "2"})
        assert good.status_code == 303
        new_id = good.headers["location"].removeprefix("/runs/")
        assert await supervisor.wait(new_id, timeout=20) == "succeeded"
        new = (await client.get(f"/api/runs/{new_id}")).json()
        assert new["inputs"]["web_count"]["first"] == "2"
        assert (await client.get(f"/api/runs/{new_id}/rerun")).json()["rerun_of"] == origin


async def test_a_run_with_inputs_too_large_to_keep_says_so(valkey_url: str, anyio_backend: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"test-secret",
        rerun_inputs_max_bytes=64,
    )
    try:
        flow = Flow.from_processors(web_source, name="web rerun large").resolve()
        outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_count", value=1)] * 100)
        run_id = outputs["web_numbers"].run_id
        await supervisor.wait(run_id, timeout=20)
        async with open_dashboard(supervisor) as (_, client):
            panel = await client.get(f"/runs/{run_id}/rerun-panel")
            assert "run-rerun-button" not in panel.text and "run-rerun-edit" not in panel.text
            assert "cannot be run again as it was" in text_of(panel.text)
            assert "rerun_inputs_max_bytes" in text_of(panel.text)
            refused = await client.post(f"/api/runs/{run_id}/rerun", json={})
            assert refused.status_code == 409 and "more than the 64 kept" in refused.json()["detail"]
    finally:
        await Supervisor.adetach()
