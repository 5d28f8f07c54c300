"""Access control, CSRF, headers and escaping of the dashboard."""

from __future__ import annotations

import logging

import pytest

from datagraph import Flow, IOVal, Supervisor
from tests.web_support import csrf_token, open_dashboard, open_sse, web_source
from web.security import CSP, safe_next, session_value, warn_if_exposed

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"


async def _a_run(supervisor: Supervisor) -> str:
    flow = Flow.from_processors(web_source, name="web security").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_count", value=2)])
    run_id = outputs["web_numbers"].run_id
    await supervisor.wait(run_id, timeout=20)
    return run_id


async def test_without_the_token_everything_but_health_is_refused(supervisor: Supervisor) -> None:
    run_id = await _a_run(supervisor)
    async with open_dashboard(supervisor, token=TOKEN) as (app, client):
        page = await client.get(f"/runs/{run_id}?x=1")
        assert page.status_code == 303
        assert page.headers["location"] == f"/login?next=%2Fruns%2F{run_id}%3Fx%3D1"
        for path in ["/api/processors", "/api/runs", f"/api/runs/{run_id}", "/api/flows"]:
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
        metrics = await client.get("/metrics")
        assert metrics.status_code == 401 and "datagraph_" not in metrics.text
        async with open_sse(app, f"/events/runs/{run_id}") as stream:
            assert stream.status == 401
        async with open_sse(app, "/events/operations") as stream:
            assert stream.status == 401
        htmx = await client.get("/processors", headers={"HX-Request": "true", "HX-Current-URL": "http://t/processors?q=a"})
        assert htmx.status_code == 401
        assert htmx.headers["HX-Redirect"] == "/login?next=%2Fprocessors%3Fq%3Da"
        post = await client.post("/api/runs", json={"flow": "x"})
        assert post.status_code == 401

        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/static/app.css")).status_code == 200
        assert (await client.get("/login")).status_code == 200


async def test_a_wrong_token_is_refused(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor, token=TOKEN) as (_, client):
        response = await client.get("/api/processors", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401
        response = await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        assert response.status_code == 401
        client.cookies.set("dg_session", session_value("nope"))
        assert (await client.get("/api/workers")).status_code == 401
        response = await client.get("/processors?token=nope")
        assert response.status_code == 303 and response.headers["location"].startswith("/login")


async def test_the_bearer_token_opens_everything(supervisor: Supervisor) -> None:
    run_id = await _a_run(supervisor)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with open_dashboard(supervisor, token=TOKEN) as (app, client):
        for path in ["/processors", f"/runs/{run_id}", "/api/processors", "/metrics", "/operations"]:
            response = await client.get(path, headers=headers)
            assert response.status_code == 200, path
        async with open_sse(app, f"/events/runs/{run_id}", headers) as stream:
            assert stream.status == 200
            event = await stream.until("run-header")
            assert 'data-state="succeeded"' in event.data


async def test_login_form_and_token_link_set_a_session_cookie(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor, token=TOKEN) as (app, client):
        login = await client.get("/login?next=/operations")
        assert 'name="next" value="/operations"' in login.text
        token = await csrf_token(client)
        form = {"csrf_token": token, "next": "/operations"}
        wrong = await client.post("/login", data={**form, "token": "nope"})
        assert wrong.status_code == 401 and "not right" in wrong.text
        assert "dg_session" not in client.cookies
        right = await client.post("/login", data={**form, "token": TOKEN, "next": "//evil.example"})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert (await client.get("/api/processors")).status_code == 200
        async with open_sse(app, "/events/operations",
                            {"cookie": f"dg_session={client.cookies['dg_session']}"}) as stream:
            assert stream.status == 200
        logout = await client.post("/logout", data={"csrf_token": token})
        assert logout.status_code == 303
        client.cookies.delete("dg_session")
        assert (await client.get("/api/processors")).status_code == 401

    async with open_dashboard(supervisor, token=TOKEN) as (_, client):
        link = await client.get(f"/processors?q=web&token={TOKEN}")
        assert link.status_code == 303 and link.headers["location"] == "/processors?q=web"
        assert (await client.get("/processors?q=web")).status_code == 200


async def test_token_comes_from_the_environment(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAGRAPH_DASHBOARD_TOKEN", TOKEN)
    async with open_dashboard(supervisor) as (_, client):
        assert (await client.get("/api/processors")).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/api/processors", headers=headers)).status_code == 200
    async with open_dashboard(supervisor, token="") as (_, client):
        assert (await client.get("/api/processors")).status_code == 200


async def test_forms_need_the_csrf_token(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        token = await csrf_token(client)
        data = {"processor": ["web_source"], "input.web_count": "1"}
        missing = await client.post("/launch", data=data)
        assert missing.status_code == 403
        assert "CSRF" in missing.text
        wrong = await client.post("/launch", data={**data, "csrf_token": token[:-2] + "xx"})
        assert wrong.status_code == 403
        header_wrong = await client.post("/flows/delete", data={"name": "x"}, headers={"X-CSRF-Token": "a.b"})
        assert header_wrong.status_code == 403
        # A valid token that is not this browser's own is refused too.
        async with open_dashboard(supervisor) as (_, other_client):
            other = await csrf_token(other_client)
        assert other != token
        stolen = await client.post("/launch", data={**data, "csrf_token": other})
        assert stolen.status_code == 403
        for path in ["/designer/save", "/flows/duplicate", "/flows/delete", "/runs/x/cancel", "/logout"]:
            assert (await client.post(path, data={})).status_code == 403, path

        ok = await client.post("/launch", data={**data, "csrf_token": token})
        assert ok.status_code == 303
        htmx = await client.post("/launch", data=data, headers={"X-CSRF-Token": token, "HX-Request": "true"})
        assert htmx.status_code == 200 and htmx.headers["HX-Redirect"].startswith("/runs/")


async def test_cross_site_and_non_json_posts_are_refused(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        token = await csrf_token(client)
        foreign = await client.post(
            "/launch", data={"csrf_token": token, "processor": ["web_source"]},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        # A browser that hides the origin ("null") is judged by the CSRF token alone.
        hidden = await client.post("/logout", data={"csrf_token": token}, headers={"Origin": "null"})
        assert hidden.status_code == 303
        forged = await client.post("/logout", data={"csrf_token": "forged"}, headers={"Origin": "null"})
        assert forged.status_code == 403
        as_form = await client.post("/api/runs", data={"flow": "x"})
        assert as_form.status_code == 415
        as_text = await client.post(
            "/api/runs", content=b'{"flow": "x"}', headers={"Content-Type": "text/plain"}
        )
        assert as_text.status_code == 415
        foreign_json = await client.post(
            "/api/runs", json={"flow": "x"}, headers={"Origin": "https://evil.example"}
        )
        assert foreign_json.status_code == 403
        same_origin = await client.post(
            "/api/runs", json={"flow": "no-such"}, headers={"Origin": "http://testserver"}
        )
        assert same_origin.status_code == 404


async def test_security_headers(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        first = await client.get("/processors")
        csrf_cookie = first.headers["set-cookie"]
        assert "dg_csrf=" in csrf_cookie and "HttpOnly" in csrf_cookie and "SameSite=Strict" in csrf_cookie
        for path in ["/processors", "/api/processors", "/metrics", "/static/app.css", "/nope"]:
            response = await client.get(path)
            assert response.headers["content-security-policy"] == CSP, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "same-origin"
        page = await client.get("/processors")
        assert page.headers["cache-control"] == "no-store"
        assert "set-cookie" not in page.headers  # issued once per browser
    policy = dict(part.split(" ", 1) for part in CSP.split("; "))
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP and "http" not in CSP


async def test_pages_have_no_inline_script_or_style(supervisor: Supervisor) -> None:
    run_id = await _a_run(supervisor)
    async with open_dashboard(supervisor) as (_, client):
        for path in ["/processors", "/processors/web_source", "/designer?processor=web_source", "/runs",
                     f"/runs/{run_id}", "/operations", "/launch?processor=web_source"]:
            html = (await client.get(path)).text
            assert "style=" not in html, path
            assert " on" + "click=" not in html and "javascript:" not in html, path
            for tag in html.split("<script")[1:]:
                assert tag.lstrip().startswith("src="), (path, tag[:80])


def test_login_redirects_only_to_local_paths() -> None:
    assert safe_next("/runs/abc?x=1") == "/runs/abc?x=1"
    for bad in ["//evil.example/x", "https://evil.example", "/\\evil.example", "", None, "runs", "/a\r\nb"]:
        assert safe_next(bad) == "/"


def test_binding_elsewhere_without_a_token_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="web.security"):
        assert warn_if_exposed("127.0.0.1", None) is None
        assert warn_if_exposed("::1", None) is None
        assert warn_if_exposed("localhost", "") is None
        assert warn_if_exposed("0.0.0.0", "token") is None
        message = warn_if_exposed("0.0.0.0", None)
    assert message is not None and "WITHOUT a token" in message
    assert "WITHOUT a token" in caplog.text
