"""Who is signed in: the operator's token, the viewer's, and the session cookies they get.

The operator's token (``--token``) can do everything; the viewer's
(``--viewer-token``) can read everything and change nothing (enforced by
:func:`web.security.operator_only`). Each token gets its own session cookie,
an HMAC of the token (never the token). Every comparison runs in constant
time and compares against every token, whichever matches.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import HTTPConnection

__all__ = ["OPERATOR", "VIEWER", "Tokens", "client_of", "same", "session_value"]

OPERATOR = "operator"
VIEWER = "viewer"


def session_value(token: str) -> str:
    """What the session cookie holds for ``token``."""
    return hmac.new(token.encode(), b"datagraph dashboard session", hashlib.sha256).hexdigest()


def same(a: str | None, b: str) -> bool:
    """Whether ``a`` is ``b``, in time that does not depend on where they differ."""
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def client_of(conn: HTTPConnection) -> str:
    """Who failed logins are counted against: the peer address (uvicorn applies trusted proxies' headers)."""
    return conn.client.host if conn.client is not None else "unknown"


class Tokens:
    """The operator's token and the viewer's (optional): which role a presented token grants."""

    def __init__(self, operator: str | None, viewer: str | None = None) -> None:
        self.operator = operator or None
        self.viewer = viewer or None
        if self.viewer is not None and self.operator is None:
            raise ValueError(
                "a viewer token needs an operator token: without --token the dashboard is open to "
                "everyone, so --viewer-token would restrict nobody; set --token as well"
            )
        if self.viewer is not None and self.viewer == self.operator:
            raise ValueError("the viewer token must differ from the operator token (--token)")
        self.sessions = {session_value(t): role for t, role in self.pairs()}

    def pairs(self) -> list[tuple[str, str]]:
        found = [(self.operator, OPERATOR), (self.viewer, VIEWER)]
        return [(token, role) for token, role in found if token is not None]

    def role_of(self, presented: str | None) -> str | None:
        """The role ``presented`` grants; every token is compared, in constant time."""
        if presented is None:
            return None
        granted = None
        for token, role in self.pairs():
            if same(presented, token) and granted is None:
                granted = role
        return granted

    def session_role(self, cookie: str | None) -> str | None:
        """The role a session cookie stands for (compared in constant time, like tokens)."""
        if cookie is None:
            return None
        granted = None
        for value, role in self.sessions.items():
            if same(cookie, value) and granted is None:
                granted = role
        return granted

    def token_of(self, role: str) -> str:
        return next(token for token, r in self.pairs() if r == role)
