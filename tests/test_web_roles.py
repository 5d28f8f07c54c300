"""Roles (operator, viewer), failed-login limits, tokens kept out of logs, Secure cookies."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from datagraph import Flow, IOVal, Supervisor
from datagraph.exceptions import ConfigError
from tests.dashboard_process import dashboard_process
from tests.web_support import csrf_token, open_dashboard, open_sse, text_of, web_slow, web_source
from web.app import create_app
from web.ratelimit import LoginLimiter
from web.redact import RedactTokens, redact

OPERATOR = "operator-token-1"
VIEWER = "viewer-token-2"


async def _a_run(supervisor: Supervisor) -> str:
    flow = Flow.from_processors(web_source, name="web roles").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_count", value=2)])
    run_id = outputs["web_numbers"].run_id
    await supervisor.wait(run_id, timeout=20)
    return run_id


@pytest.mark.anyio
async def test_a_viewer_reads_everything_and_changes_nothing(supervisor: Supervisor) -> None:
    run_id = await _a_run(supervisor)
    slow = Flow.from_processors(web_slow, name="web roles slow").resolve()
    running = (await supervisor.start_flow(slow, inputs=[IOVal(name="web_slow_n", value=100_000)]))
    running_id = running["web_slow_out"].run_id
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    try:
        async with open_dashboard(supervisor, token=OPERATOR, viewer_token=VIEWER) as (app, client):
            for path in [
                "/processors", "/designer", f"/runs/{run_id}", "/operations", "/runs",
                "/api/processors", "/api/workers", f"/api/runs/{run_id}", "/metrics",
            ]:
                assert (await client.get(path, headers=viewer)).status_code == 200, path
            async with open_sse(app, f"/events/runs/{run_id}", headers=viewer) as stream:
                assert stream.status == 200

            body = {"processors": ["web_source"], "inputs": {"web_count": 1}}
            launch = await client.post("/api/runs", json=body, headers=viewer)
            assert launch.status_code == 403 and "viewer" in launch.json()["detail"]
            cancel = await client.post(f"/api/runs/{running_id}/cancel", json={}, headers=viewer)
            assert cancel.status_code == 403
            again = await client.post(f"/api/runs/{run_id}/rerun", json={}, headers=viewer)
            assert again.status_code == 403
            token = await csrf_token(client)
            for path, data in [
                ("/launch", {"processor": "web_source", "web_count": "1"}),
                (f"/runs/{running_id}/cancel", {}),
                ("/designer/save", {"processor": "web_source", "name": "viewer flow"}),
                ("/flows/delete", {"name": "viewer flow"}),
                (f"/runs/{run_id}/rerun", {}),
            ]:
                refused = await client.post(path, data={**data, "csrf_token": token}, headers=viewer)
                assert refused.status_code == 403, path
                assert "viewer" in text_of(refused.text)
            assert await supervisor.run_state(running_id) == "running"

            # The operator's token still does all of it.
            operator = {"Authorization": f"Bearer {OPERATOR}"}
            ok = await client.post(f"/api/runs/{running_id}/cancel", json={}, headers=operator)
            assert ok.status_code == 200 and ok.json()["cancelled"] is True
    finally:
        await supervisor.cancel(running_id)


@pytest.mark.anyio
async def test_the_login_form_takes_either_token_and_the_header_says_which(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor, token=OPERATOR, viewer_token=VIEWER) as (_, client):
        for token, role in [(VIEWER, "viewer"), (OPERATOR, "operator")]:
            client.cookies.delete("dg_session")
            csrf = await csrf_token(client)
            form = {"csrf_token": csrf, "next": "/processors", "token": token}
            login = await client.post("/login", data=form)
            assert login.status_code == 303 and login.headers["location"] == "/processors"
            page = await client.get("/processors")
            assert page.status_code == 200
            assert f'data-role="{role}"' in page.text
            assert 'data-testid="signed-in-role"' in page.text and f">{role}</span>" in page.text
        # ?token= logs a viewer in too, and drops the token from the address.
        client.cookies.delete("dg_session")
        link = await client.get(f"/operations?token={VIEWER}")
        assert link.status_code == 303 and link.headers["location"] == "/operations"
        assert 'data-role="viewer"' in (await client.get("/operations")).text


@pytest.mark.anyio
async def test_wrong_tokens_are_rate_limited_per_client(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor, token=OPERATOR, viewer_token=VIEWER) as (app, client):
        limiter: LoginLimiter = app.state.login_limiter
        statuses = [
            (await client.get("/api/processors", headers={"Authorization": f"Bearer wrong-{i}"})).status_code
            for i in range(limiter.limit + 3)
        ]
        assert statuses[: limiter.limit] == [401] * limiter.limit
        assert set(statuses[limiter.limit :]) == {429}
        # Over the budget, even the right token waits: guessing fast gains nothing.
        blocked = await client.get("/api/processors", headers={"Authorization": f"Bearer {OPERATOR}"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        csrf = await csrf_token(client)
        form = await client.post("/login", data={"csrf_token": csrf, "next": "/", "token": OPERATOR})
        assert form.status_code == 429 and "Too many wrong tokens" in text_of(form.text)
        metrics = await client.get("/healthz")  # open: the limiter is about tokens only
        assert metrics.status_code == 200
        assert app.state.dashboard.counters.failed_logins == limiter.limit


def test_the_limiter_forgets_failures_after_its_window() -> None:
    limiter = LoginLimiter(limit=3, window=60.0)
    for second in range(3):
        limiter.failed("10.0.0.1", now=100.0 + second)
    assert limiter.retry_after("10.0.0.1", now=103.0) == 57
    assert limiter.retry_after("10.0.0.2", now=103.0) is None  # another client is not affected
    assert limiter.retry_after("10.0.0.1", now=160.5) is None  # the first failure aged out
    with pytest.raises(ValueError, match="limit >= 1"):
        LoginLimiter(limit=0)


def test_a_viewer_token_needs_an_operator_token_that_differs() -> None:
    with pytest.raises(ConfigError, match="needs an operator token"):
        create_app(redis_url="redis://127.0.0.1:1/0", token="", viewer_token="v")
    with pytest.raises(ConfigError, match="must differ"):
        create_app(redis_url="redis://127.0.0.1:1/0", token="same", viewer_token="same")


@pytest.mark.anyio
async def test_the_session_cookie_is_secure_over_https(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor, token=OPERATOR, viewer_token=VIEWER) as (app, _):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            csrf = await csrf_token(client)
            login = await client.post("/login", data={"csrf_token": csrf, "next": "/", "token": VIEWER})
            cookie = _session_cookie(login)
            assert "Secure" in cookie and "HttpOnly" in cookie
        plain = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=plain, base_url="http://testserver") as client:
            csrf = await csrf_token(client)
            login = await client.post("/login", data={"csrf_token": csrf, "next": "/", "token": VIEWER})
            cookie = _session_cookie(login)
            assert "Secure" not in cookie


def _session_cookie(response: httpx.Response) -> str:
    return next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "dg_session" in v)


def test_tokens_are_redacted_from_logged_urls() -> None:
    line = '"GET /operations?token=abc123&x=1 HTTP/1.1"'
    assert redact(line) == '"GET /operations?token=[redacted]&x=1 HTTP/1.1"'
    encoded = "/login?next=%2Fruns%3Ftoken%3Dabc123%26x%3D1"
    assert redact(encoded) == "/login?next=%2Fruns%3Ftoken%3D[redacted]%26x%3D1"
    assert redact("/processors?q=tokens") == "/processors?q=tokens"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s"',
                               ("127.0.0.1:1", "GET", "/runs?token=abc123"), None)
    assert RedactTokens().filter(record)
    assert "abc123" not in record.getMessage()


@pytest.mark.timeout(90)
def test_the_access_log_never_shows_a_token(valkey_url: str, tmp_path: Path) -> None:
    env = {"DATAGRAPH_REDIS_URL": valkey_url}
    args = ("--redis-url", valkey_url, "--token", OPERATOR, "--viewer-token", VIEWER, "--log-level", "info")
    with dashboard_process(*args, env=env, log=tmp_path / "dashboard.log") as dash:
        with httpx.Client(base_url=dash.url, follow_redirects=True) as client:
            assert client.get(f"/operations?token={OPERATOR}").status_code == 200
            assert client.get(f"/processors?token={VIEWER}&q=oc").status_code == 200
        with httpx.Client(base_url=dash.url, follow_redirects=True) as client:
            assert client.get("/runs?token=a-wrong-guess").status_code == 200  # the login form
        with httpx.Client(base_url=dash.url, follow_redirects=True) as client:
            bearer = {"Authorization": f"Bearer {VIEWER}"}
            assert client.get("/api/processors", headers=bearer).status_code == 200
    output = dash.output()
    assert "GET /operations?token=[redacted]" in output, output[-3000:]
    for secret in (OPERATOR, VIEWER, "a-wrong-guess"):
        assert secret not in output
