"""Launching: the typed form, its per-field validation, and POST /api/runs."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from datagraph import Supervisor, flows_store
from datagraph.store import keys
from tests.web_support import csrf_token, open_dashboard, text_of, web_double, web_source
from web.forms import InputField, launch_fields, parse_form
from web.schema import check_value

pytestmark = pytest.mark.anyio

HX = {"HX-Request": "true"}
TYPED = ["web_typed"]
GOOD = {
    "input.web_i": "3",
    "input.web_f": "2.5",
    "input.web_s": "hello",
    "input.web_b": "true",
    "input.web_l": "[1, 2, 3]",
    "input.web_m": '{"id": 7, "customer": "ada"}',
    "input.web_o": "",
}


def _field_errors(html: str) -> dict[str, str]:
    errors = {}
    for part in html.split('data-testid="field-error" data-io="')[1:]:
        io, rest = part.split('"', 1)
        message = text_of(rest.split(">", 1)[1].split("</div>", 1)[0]).strip()
        if message:
            errors[io] = message
    return errors


async def _post(client: httpx.AsyncClient, fields: dict[str, str], *, htmx: bool = False) -> httpx.Response:
    data: dict[str, object] = {"csrf_token": await csrf_token(client), "processor": TYPED, **fields}
    return await client.post("/launch", data=data, headers=HX if htmx else {})


async def test_form_has_a_typed_field_per_input(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get("/launch", params={"processor": TYPED})
        assert page.status_code == 200
        widgets = dict(
            (part.split('"', 1)[0], part.split('data-widget="', 1)[1].split('"', 1)[0])
            for part in page.text.split('data-testid="launch-field" data-io="')[1:]
        )
        assert widgets == {
            "web_i": "int", "web_f": "float", "web_s": "text", "web_b": "bool",
            "web_l": "json", "web_m": "json", "web_o": "int",
        }
        example = '{"id": 0, "customer": "", "amount": 0.0}'.replace('"', "&#34;")
        assert f'placeholder="{example}"' in page.text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"input.web_i": "abc"}, {"web_i": "enter a whole number"}),
        ({"input.web_i": "1.5"}, {"web_i": "enter a whole number"}),
        ({"input.web_f": "fast"}, {"web_f": "enter a number"}),
        ({"input.web_l": "[1, 2"}, {"web_l": "not valid JSON"}),
        ({"input.web_l": '["a"]'}, {"web_l": "at [0]: expected a whole number, got a string"}),
        ({"input.web_m": '{"id": 1}'}, {"web_m": 'missing required field "customer"'}),
        ({"input.web_m": "{}", "input.web_i": "", "input.web_s": ""},
         {"web_m": "missing required field", "web_i": "required", "web_s": "required"}),
        ({"values.web_i": "[1, 2, \"x\"]"}, {"web_i": "value 3: expected a whole number"}),
        ({"values.web_i": "7"}, {"web_i": "give a non-empty JSON list"}),
    ],
)
async def test_bad_input_gets_a_message_per_field(
    supervisor: Supervisor, fields: dict[str, str], expected: dict[str, str]
) -> None:
    async with open_dashboard(supervisor) as (_, client):
        for htmx in (False, True):
            response = await _post(client, {**GOOD, **fields}, htmx=htmx)
            assert response.status_code == (200 if htmx else 422)
            errors = _field_errors(response.text)
            assert set(errors) == set(expected), errors
            for io, fragment in expected.items():
                assert fragment in errors[io], errors
            if htmx:
                assert "<html" not in response.text and 'id="launch-form"' in response.text
            # What was typed is kept.
            for name, value in fields.items():
                assert f'name="{name}"' in response.text
                if value and name.startswith("input."):
                    assert f'value="{value}"' in response.text or value in text_of(response.text)


async def test_a_good_form_launches_and_redirects_to_the_run(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await _post(client, GOOD)
        assert response.status_code == 303, _field_errors(response.text) or response.text[:2000]
        location = response.headers["location"]
        assert location.startswith("/runs/")
        run_id = location.removeprefix("/runs/")
        assert await supervisor.wait(run_id, timeout=20) == "succeeded"
        run = (await client.get(f"/api/runs/{run_id}")).json()
        assert run["inputs"]["web_i"]["first"] == "3"
        page = await client.get(location)
        # The processor received a WebOrder (validated against its annotation), not a dict.
        assert "WebOrder:ada" in text_of(page.text)

        again = await _post(client, {**GOOD, "values.web_i": "[1, 2, 3]"}, htmx=True)
        assert again.status_code == 200
        run_id = again.headers["HX-Redirect"].removeprefix("/runs/")
        assert await supervisor.wait(run_id, timeout=20) == "succeeded"
        assert (await client.get(f"/api/runs/{run_id}")).json()["inputs"]["web_i"]["count"] == 3


async def test_saved_flow_launches_from_its_name(supervisor: Supervisor) -> None:
    name = f"web-launch-{uuid.uuid4().hex[:6]}"
    await flows_store.save_flow((await supervisor.runtime()).client, name, [web_source, web_double])
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get("/launch", params={"flow": name})
        assert page.status_code == 200 and 'name="input.web_count"' in page.text
        token = await csrf_token(client)
        form = {"csrf_token": token, "flow": name, "input.web_count": "4"}
        response = await client.post("/launch", data=form)
        assert response.status_code == 303
        run_id = response.headers["location"].removeprefix("/runs/")
        assert await supervisor.wait(run_id, timeout=20) == "succeeded"
        run = (await client.get(f"/api/runs/{run_id}")).json()
        assert run["flow"] == name
        edge = next(e for e in run["edges"] if e["io"] == "web_doubled")
        assert edge["written"] == 4
    await flows_store.delete_flow((await supervisor.runtime()).client, name)


async def test_a_flow_that_cannot_run_is_refused_with_a_message(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        token = await csrf_token(client)
        response = await client.post("/launch", data={
            "csrf_token": token, "processor": ["web_cycle_a", "web_cycle_b"], "input.web_ca": "1",
        })
        assert response.status_code == 422
        assert 'data-testid="launch-error"' in response.text
        assert "cycle" in text_of(response.text)


async def test_api_launch_validates_like_the_form(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        bad = await client.post("/api/runs", json={
            "processors": TYPED,
            "inputs": {"web_i": "3", "web_f": 1, "web_s": "x", "web_b": True, "web_l": [1, "2"], "web_m": {}},
            "streams": {"nope": [1]},
        })
        assert bad.status_code == 422
        errors = bad.json()["errors"]
        assert errors["web_i"] == "expected a whole number, got a string"
        assert "at [1]" in errors["web_l"]
        assert "customer" in errors["web_m"] or "id" in errors["web_m"]
        assert "no input 'nope'" in errors["nope"]
        assert "web_o" not in errors  # nullable: may be left out

        good = await client.post("/api/runs", json={
            "processors": ["web_source", "web_double"], "name": "api launched", "inputs": {"web_count": 3},
        })
        assert good.status_code == 201, good.text
        body = good.json()
        assert body["url"] == f"/runs/{body['run_id']}"
        assert await supervisor.wait(body["run_id"], timeout=20) == "succeeded"

        missing = await client.post("/api/runs", json={"flow": "no-such-flow"})
        assert missing.status_code == 404
        neither = await client.post("/api/runs", json={"inputs": {}})
        assert neither.status_code == 422
        extra = await client.post("/api/runs", json={"processors": ["web_source"], "surprise": 1})
        assert extra.status_code == 422 and "surprise" in json.dumps(extra.json())


def test_check_value_covers_the_schemas_pydantic_writes() -> None:
    from pydantic import TypeAdapter

    from tests.web_support import WebOrder

    schema = TypeAdapter(list[WebOrder]).json_schema()
    assert check_value([{"id": 1, "customer": "a"}], schema) is None
    assert check_value([{"id": "1", "customer": "a"}], schema) == (
        "at [0].id: expected a whole number, got a string"
    )
    assert check_value([{"id": 1, "customer": "a", "amount": True}], schema) == (
        "at [0].amount: expected a number, got true or false"
    )
    optional = TypeAdapter(int | None).json_schema()
    assert check_value(None, optional) is None
    assert check_value("x", optional) == "matches none of the allowed types"
    bounded = {"type": "integer", "minimum": 1, "maximum": 3}
    assert check_value(0, bounded) == "must be at least 1"
    assert check_value(4, bounded) == "must be at most 3"
    assert check_value("b", {"enum": ["a", "c"]}) == 'must be one of "a", "c"'
    assert check_value({"x": 1}, {"type": "object", "additionalProperties": False}) == 'unexpected field "x"'
    assert check_value([1, "a"], TypeAdapter(tuple[int, str]).json_schema()) is None
    assert check_value([1, 2], TypeAdapter(tuple[int, str]).json_schema()) == (
        "at [1]: expected a string, got a whole number"
    )


def test_fields_come_from_the_first_reader_with_a_schema() -> None:
    from datagraph.snapshots import PortInfo, ProcessorInfo

    def info(name: str, schema: dict[str, object], type_text: str) -> ProcessorInfo:
        return ProcessorInfo(
            name=name, inputs=(PortInfo("x", type_text, schema),), outputs=(), wait=False, max_backlog=None,
            description="", doc="", module="", function="", kind="", workers=(), online_workers=(),
            online=False, updated=None,
        )

    specs = [{"name": "a", "inputs": ["x"]}, {"name": "b", "inputs": ["x"]}]
    infos = {"a": info("a", {}, "Any"), "b": info("b", {"type": "boolean"}, "bool")}
    (field,) = launch_fields(["x"], specs, infos)
    assert isinstance(field, InputField)
    assert (field.widget, field.type_text, field.readers) == ("bool", "bool", ("a", "b"))
    assert parse_form([field], {}).values == {"x": [False]}
    assert parse_form([field], {"input.x": "on"}).values == {"x": [True]}


async def test_launches_ask_for_retries_from_the_form_and_the_api(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        page = await client.get("/launch", params={"processor": TYPED})
        assert 'name="run_retries"' in page.text
        response = await _post(client, {**GOOD, "run_retries": "2"})
        assert response.status_code == 303, response.text[:2000]
        run_id = response.headers["location"].removeprefix("/runs/")
        assert await supervisor.wait(run_id, timeout=20) == "succeeded"
        record = await (await supervisor.runtime()).client.custom_command(
            ["HGET", keys.run(run_id), "retries"]
        )
        assert record == b"2"

        bad = await _post(client, {**GOOD, "run_retries": "many"})
        assert bad.status_code == 422
        assert "retries must be a whole number from 0 to 20" in text_of(bad.text)

        api = await client.post("/api/runs", json={
            "processors": TYPED, "retries": 1,
            "inputs": {"web_i": 3, "web_f": 1.5, "web_s": "x", "web_b": True, "web_l": [1],
                       "web_m": {"id": 1, "customer": "ada"}},
        })
        assert api.status_code == 201, api.text
        assert (await client.post("/api/runs", json={"processors": TYPED, "retries": -1})).status_code == 422
