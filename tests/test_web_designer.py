"""The designer: validation messages, saved flows, export; and datagraph.flows_store."""

from __future__ import annotations

import uuid

import pytest

from datagraph import Flow, Supervisor, flows_store
from datagraph.exceptions import FlowError
from datagraph.telemetry import Telemetry
from tests.web_support import csrf_token, open_dashboard, text_of, web_double, web_source
from web.designer import export_python

pytestmark = pytest.mark.anyio

HX = {"HX-Request": "true"}


def _messages(html: str, level: str) -> list[str]:
    marker = f'data-testid="designer-{level}">'
    return [text_of(part.split("</li>", 1)[0]).strip() for part in html.split(marker)[1:]]


async def test_valid_flow_is_drawn_and_lists_its_inputs(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(
            "/designer/workspace", params={"processor": ["web_source"], "add": "web_double"}, headers=HX
        )
        assert response.status_code == 200
        html = response.text
        assert 'data-testid="designer-valid"' in html
        assert not _messages(html, "error")
        assert any("'web_count'" in m for m in _messages(html, "info"))
        assert 'id="node-web_source"' in html and 'id="edge-web_numbers-web_double"' in html
        assert 'id="input-web_count"' in html and 'id="output-web_doubled"' in html
        assert response.headers["HX-Push-Url"] == "/designer?processor=web_source&processor=web_double"

        removed = await client.get(
            "/designer/workspace", params={"processor": ["web_source", "web_double"], "remove": "web_source"},
            headers=HX,
        )
        assert 'id="node-web_source"' not in removed.text
        assert any("'web_numbers'" in m for m in _messages(removed.text, "info"))


async def test_cycle_is_reported_with_its_processors(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(
            "/designer/workspace", params={"processor": ["web_cycle_a", "web_cycle_b"]}, headers=HX
        )
        errors = _messages(response.text, "error")
        assert len(errors) == 1
        assert "cycle" in errors[0]
        assert "web_cycle_a -> web_cycle_b -> web_cycle_a" in errors[0]
        assert 'data-testid="designer-invalid"' in response.text
        # Still drawn, with the culprits marked.
        assert 'id="node-web_cycle_a"' in response.text
        assert 'class="node state-failed problem"' in response.text


async def test_io_produced_twice_is_reported(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(
            "/designer/workspace", params={"processor": ["web_source", "web_dup", "web_double"]}, headers=HX
        )
        errors = _messages(response.text, "error")
        assert any("'web_numbers'" in e and "web_source" in e and "web_dup" in e for e in errors), errors


async def test_unknown_and_offline_processors_are_reported(supervisor: Supervisor, valkey_url: str) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(
            "/designer/workspace", params={"processor": ["web_source", "web_no_such_processor"]}, headers=HX
        )
        errors = _messages(response.text, "error")
        assert any("'web_no_such_processor' is not registered" in e for e in errors)

    # A registration whose worker never beats is offline.
    name = f"web_ghost_{uuid.uuid4().hex[:6]}"
    async with await Telemetry.connect(valkey_url) as telemetry:
        import json
        import time

        from datagraph.store import keys

        record = {"name": name, "inputs": [], "outputs": [{"name": "ghost_out", "type": "int", "schema": {}}],
                  "wait": False, "updated": time.time()}
        await telemetry.client.custom_command(["HSET", keys.PROCESSORS, name, json.dumps(record)])
        await telemetry.client.custom_command(
            ["HSET", keys.IMPLEMENTERS, keys.implementer_field(name, "ghost-worker"), repr(time.time())]
        )
        try:
            async with open_dashboard(supervisor) as (_, client):
                response = await client.get("/designer/workspace", params={"processor": [name]}, headers=HX)
                warnings = _messages(response.text, "warning")
                assert any("no online worker" in w and name in w for w in warnings), warnings
        finally:
            await telemetry.client.custom_command(["HDEL", keys.PROCESSORS, name])
            await telemetry.client.custom_command(
                ["HDEL", keys.IMPLEMENTERS, keys.implementer_field(name, "ghost-worker")]
            )


async def test_save_load_duplicate_delete(supervisor: Supervisor) -> None:
    name = f"web flow {uuid.uuid4().hex[:6]}"
    async with open_dashboard(supervisor) as (_, client):
        token = await csrf_token(client)
        saved = await client.post("/designer/save", data={
            "csrf_token": token, "name": name, "processor": ["web_source", "web_double"],
        }, headers=HX)
        assert saved.status_code == 200
        assert 'data-testid="designer-saved"' in saved.text
        assert f'data-flow="{name}"' in saved.text and 'hx-swap-oob="true"' in saved.text

        listed = (await client.get("/api/flows")).json()
        mine = next(f for f in listed if f["name"] == name)
        assert [p["name"] for p in mine["processors"]] == ["web_source", "web_double"]

        loaded = await client.get("/designer", params={"flow": name})
        assert loaded.status_code == 200
        assert '<input type="hidden" name="processor" value="web_source">' in loaded.text
        assert f'value="{name}"' in loaded.text

        copy = await client.post("/flows/duplicate", data={"csrf_token": token, "name": name}, headers=HX)
        assert f'data-flow="{name} copy"' in copy.text
        again = await client.post("/flows/duplicate", data={"csrf_token": token, "name": name}, headers=HX)
        assert f'data-flow="{name} copy 2"' in again.text

        for victim in (name, f"{name} copy", f"{name} copy 2"):
            deleted = await client.post("/flows/delete", data={"csrf_token": token, "name": victim})
            assert deleted.status_code == 303
        names = {f["name"] for f in (await client.get("/api/flows")).json()}
        assert not {name, f"{name} copy", f"{name} copy 2"} & names
        missing = await client.post("/flows/delete", data={"csrf_token": token, "name": name})
        assert missing.status_code == 404


async def test_bad_flow_name_is_a_message_not_an_error(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        token = await csrf_token(client)
        response = await client.post("/designer/save", data={
            "csrf_token": token, "name": "<b>bad/name</b>", "processor": ["web_source"],
        }, headers=HX)
        assert response.status_code == 200
        message = response.text.split('data-testid="designer-save-error">', 1)[1].split("</div>", 1)[0]
        assert "cannot be used" in message
        assert "<b>bad" not in response.text
        plain = await client.post("/designer/save", data={
            "csrf_token": token, "name": "", "processor": ["web_source"],
        })
        assert plain.status_code == 422
        assert 'data-testid="designer-add" data-processor="web_source"' in plain.text  # the palette too


async def test_export_builds_the_same_flow(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(
            "/designer/export.py", params={"processor": ["web_source", "web_double"], "name": "exported"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/x-python")
        namespace: dict[str, object] = {}
        exec(response.text, namespace)
        flow = namespace["flow"]
        assert isinstance(flow, Flow)
        expected = Flow.from_processors(web_source, web_double, name="exported").resolve()
        assert flow.spec() == expected.spec()
        assert flow.topology == expected.topology


def test_export_names_are_valid_python() -> None:
    code = export_python([
        {"name": "class", "inputs": [], "outputs": ["a"], "wait": False, "max_backlog": None},
        {"name": "1st-step", "inputs": ["a"], "outputs": ["b"], "wait": True, "max_backlog": 5},
        {"name": "1st_step", "inputs": ["b"], "outputs": ["c"], "wait": False, "max_backlog": None},
    ], 'quote"name')
    namespace: dict[str, object] = {}
    exec(code, namespace)
    flow = namespace["flow"]
    assert isinstance(flow, Flow)
    assert flow.name == 'quote"name'
    assert [p.name for p in flow.processors] == ["class", "1st-step", "1st_step"]
    assert flow.processor("1st-step").wait and flow.processor("1st-step").max_backlog == 5


async def test_flows_store(supervisor: Supervisor) -> None:
    client = (await supervisor.runtime()).client
    name = f"store-{uuid.uuid4().hex[:6]}"
    saved = await flows_store.save_flow(client, f"  {name} ", [web_source, web_double])
    assert saved.name == name
    loaded = await flows_store.load_flow(client, name)
    assert loaded is not None and loaded.processor_names == ("web_source", "web_double")
    assert loaded.flow().resolve().topology.floating_inputs == ("web_count",)
    copy = await flows_store.duplicate_flow(client, name, f"{name}-2")
    assert copy.processors == loaded.processors
    with pytest.raises(FlowError, match="already exists"):
        await flows_store.duplicate_flow(client, name, f"{name}-2")
    with pytest.raises(FlowError, match="no saved flow"):
        await flows_store.duplicate_flow(client, "nope-nope", f"{name}-3")
    with pytest.raises(FlowError, match="cannot be used"):
        await flows_store.save_flow(client, "a/b", [web_source])
    with pytest.raises(FlowError, match="no processors"):
        await flows_store.save_flow(client, name, [])
    assert name in {f.name for f in await flows_store.list_flows(client)}
    assert await flows_store.delete_flow(client, name)
    assert await flows_store.delete_flow(client, f"{name}-2")
    assert not await flows_store.delete_flow(client, name)
    assert await flows_store.load_flow(client, name) is None
