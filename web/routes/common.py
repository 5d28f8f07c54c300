"""Helpers shared by the HTML routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ..dashboard import Dashboard

__all__ = ["is_htmx", "page"]


def is_htmx(request: Request) -> bool:
    """Whether htmx sent the request (it wants a partial, not a page)."""
    return request.headers.get("hx-request") == "true"


def page(
    request: Request,
    dashboard: Dashboard,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return dashboard.templates.TemplateResponse(
        request, template, dict(context or {}), status_code=status_code, headers=dict(headers or {})
    )
