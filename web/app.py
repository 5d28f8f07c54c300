"""The dashboard application factory.

::

    from datagraph import Supervisor
    from web.app import create_app

    Supervisor.attach(redis_config={"url": "redis://localhost:6379/0"}, executor=...)
    app = create_app()              # reads and launches through the attached supervisor
    # uvicorn.run(app, host="127.0.0.1", port=8000)

Reads go through :class:`datagraph.telemetry.Telemetry`; runs are launched
and cancelled through the supervisor (``supervisor=``, or the one attached
when the app starts), so through whatever executor it was attached with.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from datagraph.exceptions import ConfigError, StoreError

from . import graph, overlay, redact
from .dashboard import ASSETS, Dashboard, DashboardConfig, ago
from .notify import NOTIFY_URLS_ENV, Notifier, parse_notify_urls
from .ratelimit import LoginLimiter
from .roles import OPERATOR, Tokens
from .routes import api, designer, events, pages, rerun
from .security import CSRF_FIELD, CsrfSigner, SecurityMiddleware, csrf_protect, login_router, operator_only

if TYPE_CHECKING:
    from datagraph.supervisor import Supervisor

__all__ = ["TOKEN_ENV", "VIEWER_TOKEN_ENV", "create_app"]

log = logging.getLogger("web")

#: Environment variable read for the token when ``create_app(token=None)``.
TOKEN_ENV = "DATAGRAPH_DASHBOARD_TOKEN"
#: ... and for the read-only viewer token when ``create_app(viewer_token=None)``.
VIEWER_TOKEN_ENV = "DATAGRAPH_DASHBOARD_VIEWER_TOKEN"


def create_app(
    *,
    supervisor: Supervisor | None = None,
    redis_url: str | None = None,
    token: str | None = None,
    viewer_token: str | None = None,
    secret: bytes | None = None,
    poll_interval: float = 1.0,
    ops_interval: float = 2.0,
    stuck_after: float = 300.0,
    warm_up_graphviz: bool = True,
    notify_urls: Sequence[str] | None = None,
    notify_after: float = 30.0,
    notify_interval: float = 2.0,
    public_url: str = "http://127.0.0.1:8000",
) -> FastAPI:
    """The dashboard as a FastAPI app.

    ``supervisor``: launches, cancels and verifies stream previews (default:
    the one attached when the app starts; without one the app is read-only).
    ``redis_url``: read telemetry over a connection of its own (default: the
    supervisor's connection). One of the two is needed.
    ``token``: required from every client (default: ``$DATAGRAPH_DASHBOARD_TOKEN``;
    ``""`` for none): the operator's. ``viewer_token``: read-only access
    (default: ``$DATAGRAPH_DASHBOARD_VIEWER_TOKEN``; needs ``token``).
    ``secret``: signs CSRF tokens (default: derived from
    ``$DATAGRAPH_SECRET``, so open forms survive a restart; random without it).
    ``poll_interval``: seconds between live updates of a run view;
    ``ops_interval`` of the operations page. ``stuck_after``: seconds without a
    write after which a running run is listed as stuck (the page's
    ``?stuck_after=`` overrides it). ``warm_up_graphviz``: load the Graphviz
    WebAssembly module at startup, in a thread. ``notify_urls``: webhooks
    told about failed and stuck runs, edges red for ``notify_after`` seconds
    and workers gone offline (default: ``$DATAGRAPH_NOTIFY_URLS``, comma-
    separated; see :mod:`web.notify`), polled every ``notify_interval``
    seconds; their links start with ``public_url``, the dashboard's address
    as people open it.
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if viewer_token is None:
        viewer_token = os.environ.get(VIEWER_TOKEN_ENV) or None
    try:
        Tokens(token, viewer_token)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = DashboardConfig(
        token=token or None,
        viewer_token=viewer_token or None,
        poll_interval=poll_interval,
        ops_interval=ops_interval,
        stuck_after=stuck_after,
    )
    templates = Jinja2Templates(directory=str(ASSETS.templates), context_processors=[_context])
    templates.env.globals.update(fmt=overlay, ago=ago, clock=_clock, csrf_field=CSRF_FIELD)
    dashboard = Dashboard(config, supervisor=supervisor, redis_url=redis_url, templates=templates)
    if notify_urls is None:
        notify_urls = [os.environ.get(NOTIFY_URLS_ENV, "")]
    urls = parse_notify_urls(notify_urls)
    notifier = (
        Notifier(dashboard, urls, public_url=public_url, after=notify_after, interval=notify_interval)
        if urls else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact.install()  # again: the server may have configured its logging after create_app()
        await dashboard.open()
        try:
            async with anyio.create_task_group() as tg:
                if warm_up_graphviz:
                    tg.start_soon(_warm_up)
                if notifier is not None:
                    tg.start_soon(notifier.run, name="datagraph-notifier")
                async with dashboard.hub.running():
                    yield
                tg.cancel_scope.cancel()
        finally:
            await dashboard.aclose()

    app = FastAPI(
        title="Datagraph",
        lifespan=lifespan,
        dependencies=[Depends(csrf_protect), Depends(operator_only)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.dashboard = dashboard
    app.state.notifier = notifier
    if secret is None:
        secret = os.environ.get("DATAGRAPH_SECRET", "").encode() or secrets.token_bytes(32)
    app.state.csrf_signer = signer = CsrfSigner(secret)
    app.state.login_limiter = limiter = LoginLimiter()
    redact.install()
    app.add_middleware(
        SecurityMiddleware, token=config.token, viewer_token=config.viewer_token, signer=signer,
        limiter=limiter, counters=dashboard.counters,
    )
    app.mount("/static", StaticFiles(directory=str(ASSETS.static)), name="static")
    app.include_router(login_router)
    app.include_router(pages.router)
    app.include_router(designer.router)
    app.include_router(events.router)
    app.include_router(api.router)
    app.include_router(rerun.router)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, _store_error)  # type: ignore[arg-type]
    return app


async def _warm_up() -> None:
    try:
        await anyio.to_thread.run_sync(graph.warm_up, abandon_on_cancel=True)
    except Exception as exc:  # rendering reports it again, with a fallback
        log.warning("could not load the Graphviz renderer: %s", exc)


def _clock(at: float) -> str:
    """Local wall-clock time of a unix time, for "updated 14:02:11"."""
    return time.strftime("%H:%M:%S", time.localtime(at))


def _context(request: Request) -> dict[str, object]:
    state = request.state
    return {
        "now": time.time(),
        "csrf_token": getattr(state, "csrf_token", ""),
        "auth_required": getattr(state, "auth_required", False),
        "role": getattr(state, "role", OPERATOR),
        "can_operate": getattr(state, "role", OPERATOR) == OPERATOR,
    }


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(("/api/", "/metrics", "/events/", "/healthz"))


def _error_response(request: Request, status: int, message: str, title: str) -> Response:
    if _wants_json(request):
        if request.url.path.startswith("/metrics"):
            return PlainTextResponse(message + "\n", status_code=status)
        return JSONResponse({"detail": message}, status_code=status)
    dashboard: Dashboard = request.app.state.dashboard
    if request.headers.get("hx-request"):
        # htmx swaps no 4xx/5xx body: show the message in the page's flash area instead.
        response: Response = dashboard.templates.TemplateResponse(
            request, "partials/flash.html", {"level": "error", "message": message}, status_code=200
        )
        response.headers.update({"HX-Retarget": "#flash", "HX-Reswap": "innerHTML", "X-Status": str(status)})
        return response
    return dashboard.templates.TemplateResponse(
        request, "pages/error.html", {"status": status, "title": title, "message": message},
        status_code=status,
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    titles = {403: "Refused", 404: "Not found", 405: "Not allowed", 415: "Unsupported body", 429: "Slow down"}
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    response = _error_response(request, exc.status_code, message, titles.get(exc.status_code, "Error"))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": "invalid request", "errors": _plain_errors(exc)}, status_code=422)
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return _error_response(request, 400, f"the request is not valid: {problems}", "Bad request")


def _plain_errors(exc: RequestValidationError) -> dict[str, str]:
    return {".".join(str(part) for part in e["loc"]): str(e["msg"]) for e in exc.errors()}


async def _store_error(request: Request, exc: StoreError) -> Response:
    log.warning("store error on %s: %s", request.url.path, exc)
    return _error_response(request, 503, f"the store did not answer: {exc}", "Store unavailable")

