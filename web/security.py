"""Who may use the dashboard, and what browsers are allowed to do with it.

- **Token** (optional): when the app has one, every page, API route, SSE
  stream and ``/metrics`` needs it, as ``Authorization: Bearer <token>``, or
  as the session cookie set by the login form (``/login``) or by opening any
  page once with ``?token=<token>``. The cookie holds an HMAC of the token,
  never the token. ``/healthz``, ``/login`` and ``/static`` stay open.
  Refused: API, SSE and metrics get 401; pages redirect to the login form.
- **Roles**: that token is the *operator*'s. A *viewer* token (optional)
  opens the same pages, API reads, event streams and ``/metrics``, but every
  state-changing request (launch, cancel, save, delete, re-run) is refused
  with 403 (:func:`operator_only`) and the controls are hidden. The login form
  takes either token; each gets its own session cookie. Tokens are compared in
  constant time, both of them whichever matches.
- **Failed logins** are limited per client (:mod:`web.ratelimit`): after a
  handful of wrong tokens a minute, token attempts get 429.
- **CSRF**: state-changing form posts carry a signed double-submit token: a
  random value signed with the app's secret, set as an HttpOnly SameSite
  cookie and echoed by each form (``csrf_token`` field) and by htmx
  (``X-CSRF-Token`` header, from ``base.html``). A POST without it, or with
  one that differs from the cookie, is refused with 403. JSON API posts must
  be ``Content-Type: application/json`` (which a cross-site page cannot send
  without a CORS preflight, and none is ever granted); a request whose
  ``Origin`` is another site is refused everywhere.
- **Headers**: a Content-Security-Policy that allows only this app's own
  scripts and styles (no inline script or style, no other origin), no
  framing, no referrer, no MIME sniffing; dynamic responses are not cached.
- **Binding**: the CLI binds 127.0.0.1 unless told otherwise, and warns when
  it is told otherwise without a token (:func:`warn_if_exposed`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.datastructures import URL, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .dashboard import Dashboard, get_dashboard
from .metrics import DashboardCounters
from .ratelimit import LoginLimiter
from .roles import OPERATOR, VIEWER, Tokens, client_of, same, session_value

__all__ = [
    "CSP",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "CsrfSigner",
    "SecurityMiddleware",
    "csrf_protect",
    "login_router",
    "operator_only",
    "safe_next",
    "warn_if_exposed",
]

log = logging.getLogger("web.security")

CSRF_COOKIE = "dg_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_COOKIE = "dg_session"
SESSION_MAX_AGE = 7 * 24 * 3600

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    "connect-src 'self'",
    "manifest-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null"
    # on the app's own form posts (login, logout), which then look foreign.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC_PREFIXES = ("/static/",)
_PUBLIC_PATHS = frozenset({"/login", "/logout", "/healthz", "/favicon.ico"})
_MACHINE_PREFIXES = ("/api/", "/events/", "/metrics")


class CsrfSigner:
    """Makes and checks CSRF tokens: ``<nonce>.<signature>``."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"datagraph-dashboard-csrf" + secret).digest()

    def _sign(self, nonce: str) -> str:
        digest = hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def new(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        if not token or token.count(".") != 1 or len(token) > 128:
            return False
        nonce, signature = token.split(".")
        return hmac.compare_digest(signature.encode(), self._sign(nonce).encode())


def is_public(path: str) -> bool:
    return path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


def safe_next(target: str | None) -> str:
    """A local path to go back to after login; anything else becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ch in target for ch in "\r\n\\"):
        return "/"
    return target


class SecurityMiddleware:
    """Token check, CSRF cookie and security headers, for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        signer: CsrfSigner,
        viewer_token: str | None = None,
        limiter: LoginLimiter | None = None,
        counters: DashboardCounters | None = None,
    ) -> None:
        self.app = app
        self.tokens = Tokens(token, viewer_token)
        self.token = self.tokens.operator
        self.signer = signer
        self.limiter = limiter if limiter is not None else LoginLimiter()
        self.counters = counters if counters is not None else DashboardCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        csrf = conn.cookies.get(CSRF_COOKIE)
        fresh_csrf = None
        if not self.signer.valid(csrf):
            csrf = fresh_csrf = self.signer.new()
        state = scope.setdefault("state", {})
        state["csrf_token"] = csrf
        state["auth_required"] = self.token is not None
        state["role"] = OPERATOR  # without a token, everyone operates
        path: str = scope["path"]
        secure = scope.get("scheme") == "https"
        send = self._with_headers(send, path, fresh_csrf, secure)

        if self.token is not None and not is_public(path):
            how, role, presented = self._authenticate(conn)
            if role is None:
                response = self._refuse(conn)
                if presented:
                    retry = self.limiter.retry_after(client_of(conn))
                    if retry is not None:
                        response = too_many_attempts(retry, machine=path.startswith(_MACHINE_PREFIXES))
                    else:
                        self.limiter.failed(client_of(conn))
                        self.counters.failed_logins += 1
                await response(scope, receive, send)
                return
            retry = self.limiter.retry_after(client_of(conn)) if how in ("header", "query") else None
            if retry is not None:  # over budget: even the right token waits, so guessing gains nothing
                machine = path.startswith(_MACHINE_PREFIXES)
                await too_many_attempts(retry, machine=machine)(scope, receive, send)
                return
            if how == "query":
                await self._login_by_query(conn, role)(scope, receive, send)
                return
            state["auth"] = how
            state["role"] = role
        await self.app(scope, receive, send)

    def _authenticate(self, conn: HTTPConnection) -> tuple[str | None, str | None, bool]:
        """(how, role, whether a token was presented); role None when nothing valid was."""
        presented = False
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            presented = True
            role = self.tokens.role_of(credentials.strip())
            if role is not None:
                return "header", role, True
        role = self.tokens.session_role(conn.cookies.get(SESSION_COOKIE))
        if role is not None:
            return "cookie", role, presented
        query = conn.query_params.get("token")
        if conn.scope["method"] in ("GET", "HEAD") and query is not None:
            presented = True
            role = self.tokens.role_of(query)
            if role is not None:
                return "query", role, True
        return None, None, presented

    def _refuse(self, conn: HTTPConnection) -> Response:
        path = conn.url.path
        challenge = {"WWW-Authenticate": 'Bearer realm="datagraph"'}
        message = "this dashboard needs its token: send 'Authorization: Bearer <token>' or log in at /login"
        if path.startswith(_MACHINE_PREFIXES):
            if path.startswith("/api/"):
                return JSONResponse({"detail": message}, status_code=401, headers=challenge)
            return PlainTextResponse(message + "\n", status_code=401, headers=challenge)
        # A wrong ?token= is not carried into the login form's address (nor the logs).
        query = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
        here = path + (f"?{urlencode(query)}" if query else "")
        if conn.headers.get("hx-request"):
            current = URL(conn.headers.get("hx-current-url", "/"))
            back = current.path + (f"?{current.query}" if current.query else "")
            login = "/login?" + urlencode({"next": safe_next(back)})
            return PlainTextResponse(message, status_code=401, headers={**challenge, "HX-Redirect": login})
        if conn.scope["method"] in ("GET", "HEAD"):
            return RedirectResponse("/login?" + urlencode({"next": safe_next(here)}), status_code=303)
        return PlainTextResponse(message + "\n", status_code=401, headers=challenge)

    def _login_by_query(self, conn: HTTPConnection, role: str) -> Response:
        """``?token=`` once: set the session cookie and drop the token from the address."""
        query = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
        target = conn.url.path + (f"?{urlencode(query)}" if query else "")
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(response, self.tokens.token_of(role), secure=conn.url.scheme == "https")
        return response

    def _with_headers(self, send: Send, path: str, fresh_csrf: str | None, secure: bool) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if not path.startswith("/static/") and "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
                if fresh_csrf is not None:
                    headers.append("set-cookie", _cookie(CSRF_COOKIE, fresh_csrf, secure=secure,
                                                         same_site="strict"))
            await send(message)

        return wrapped


def _cookie(name: str, value: str, *, secure: bool, same_site: str, max_age: int | None = None) -> str:
    parts = [f"{name}={value}", "Path=/", "HttpOnly", f"SameSite={same_site.capitalize()}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def set_session_cookie(response: Response, token: str, *, secure: bool) -> None:
    # Lax, not Strict: a link to a run pasted in chat should open logged in.
    response.headers.append(
        "set-cookie",
        _cookie(SESSION_COOKIE, session_value(token), secure=secure, same_site="lax",
                max_age=SESSION_MAX_AGE),
    )


def too_many_attempts(retry_after: int, *, machine: bool) -> Response:
    message = (
        f"too many wrong tokens from this address; try again in {retry_after} seconds"
    )
    headers = {"Retry-After": str(retry_after)}
    if machine:
        return JSONResponse({"detail": message}, status_code=429, headers=headers)
    return PlainTextResponse(message + "\n", status_code=429, headers=headers)


async def operator_only(request: Request) -> None:
    """App-wide dependency: a viewer may read everything and change nothing."""
    if request.method in _SAFE_METHODS or is_public(request.url.path):
        return
    if getattr(request.state, "role", OPERATOR) == VIEWER:
        raise HTTPException(
            403, "you are signed in as a viewer, which can look but not launch, cancel, save, delete "
            "or re-run; log in with the operator token (--token) to do that",
        )


# -- CSRF ----------------------------------------------------------------------------


def _check_origin(request: Request) -> None:
    """Browsers name the page that sent a request in ``Origin``: it must be this host.

    Host and port are compared, not the scheme, so that a proxy terminating
    TLS in front of the app does not make every post look foreign.
    """
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # No usable origin (old browsers, privacy settings, sandboxed frames):
        # the CSRF token (forms) or the JSON content type (API) still has to hold.
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise HTTPException(403, f"cross-site request refused: it comes from {origin}, not from {host}")


async def csrf_protect(request: Request) -> None:
    """App-wide dependency: refuse state-changing requests that a foreign page could forge."""
    if request.method in _SAFE_METHODS:
        return
    _check_origin(request)
    if request.url.path.startswith("/api/"):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPException(415, "send the request body as JSON (Content-Type: application/json)")
        return
    signer: CsrfSigner = request.app.state.csrf_signer
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    cookie = request.cookies.get(CSRF_COOKIE)
    if not sent or cookie is None or not same(sent, cookie) or not signer.valid(cookie):
        raise HTTPException(
            403, "the form's CSRF token is missing or does not match this browser's; reload the page"
        )


# -- login ---------------------------------------------------------------------------

login_router = APIRouter()


DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]


@login_router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, dashboard: DashboardDep, next: str = "/") -> Response:
    if dashboard.config.token is None:
        return RedirectResponse(safe_next(next), status_code=303)
    return dashboard.templates.TemplateResponse(
        request, "pages/login.html", {"next": safe_next(next), "error": None}
    )


@login_router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    dashboard: DashboardDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    target = safe_next(next)
    if dashboard.config.token is None:
        return RedirectResponse(target, status_code=303)
    tokens = Tokens(dashboard.config.token, dashboard.config.viewer_token)
    limiter: LoginLimiter = request.app.state.login_limiter
    client = client_of(request)
    retry = limiter.retry_after(client)
    if retry is not None:
        return dashboard.templates.TemplateResponse(
            request, "pages/login.html",
            {"next": target, "error": f"Too many wrong tokens; try again in {retry} seconds."},
            status_code=429, headers={"Retry-After": str(retry)},
        )
    role = tokens.role_of(token)
    if role is None:
        limiter.failed(client)
        dashboard.counters.failed_logins += 1
        return dashboard.templates.TemplateResponse(
            request, "pages/login.html", {"next": target, "error": "That token is not right."},
            status_code=401,
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, tokens.token_of(role), secure=request.url.scheme == "https")
    return response


@login_router.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.headers.append(
        "set-cookie", _cookie(SESSION_COOKIE, "", secure=request.url.scheme == "https",
                              same_site="lax", max_age=0),
    )
    return response


# -- binding -------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, token: str | None) -> str | None:
    """Log (and return) a warning when ``host`` is reachable from elsewhere and no token is set."""
    if token or is_loopback(host):
        return None
    message = (
        f"the dashboard listens on {host}, reachable from other machines, WITHOUT a token: anyone "
        "who can reach it can see every run and launch or cancel flows. Set --token (or "
        "DATAGRAPH_DASHBOARD_TOKEN), or bind 127.0.0.1"
    )
    log.warning(message)
    return message
