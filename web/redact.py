"""Keep tokens out of logs: ``?token=...`` in any logged URL becomes ``token=[redacted]``.

Opening a page with ``?token=<token>`` logs in (see :mod:`web.security`), and
uvicorn's access log prints every request line with its query. A
:class:`RedactTokens` filter on uvicorn's loggers rewrites the record before
it is formatted, also when the token sits URL-encoded inside another
parameter (``/login?next=%2Fruns%3Ftoken%3D...``).
"""

from __future__ import annotations

import logging
import re

__all__ = ["LOGGERS", "RedactTokens", "install", "redact"]

#: Loggers that print URLs: the access log, and uvicorn's own messages.
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")

REDACTED = "[redacted]"
# token=... up to the next parameter; %3D / %26 are "=" and "&" URL-encoded (once or twice).
_PLAIN = re.compile(r"(?i)(token=)[^&\s\"'#]*")
_ENCODED = re.compile(r"(?i)(token(?:%3D|%253D))(?:(?!%26|%2526)[^&\s\"'#])*")


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` parameter replaced."""
    if "token" not in text.lower():
        return text
    return _PLAIN.sub(rf"\g<1>{REDACTED}", _ENCODED.sub(rf"\g<1>{REDACTED}", text))


class RedactTokens(logging.Filter):
    """Rewrites a record's message and string arguments with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install() -> None:
    """Add the filter to uvicorn's loggers (once; safe to call again after logging is reconfigured)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
