"""Entries missing from a stream: trimmed on purpose, or lost by the store.

Every writer numbers its entries ``0-1, 0-2, ...`` (``streams.entry_id``), so a
reader that sees ``0-7`` right after ``0-4`` knows that two entries are not
there.  Either they were trimmed (every declared reader had consumed them,
so this reader is a late, undeclared one) or the store lost writes it had
acknowledged: a Valkey Cluster primary killed before its replica received
them, the replica then promoted.  ``XINFO STREAM`` tells the two apart:
the stream counts every entry ever added to it (``entries-added``), so with
ids ``0-1 .. 0-n`` all added, that count is ``n`` however much was trimmed;
a stream that lost entries counts fewer.  The lost case fails the reader with
a clear error instead of handing on a stream with a hole.
"""

from __future__ import annotations

from typing import Any

from glide import GlideError as GlideBaseError

from ..exceptions import StoreError
from .batch import Store

__all__ = ["check", "skipped"]


def _seq(entry_id: str) -> int | None:
    """The writer's sequence number of a ``0-<seq>`` id; None for a time-based id."""
    ms, _, seq = entry_id.partition("-")
    return int(seq) if ms == "0" and seq.isdigit() else None


def skipped(last_id: str, entry_id: str) -> bool:
    """Whether entries numbered between ``last_id`` and ``entry_id`` were not read."""
    last, seq = _seq(last_id), _seq(entry_id)
    return last is not None and seq is not None and seq > last + 1


async def check(client: Store, key: str, entry_id: str, where: str) -> None:
    """Raise :class:`StoreError` unless the entries missing before ``entry_id`` were trimmed."""
    try:
        info: Any = await client.custom_command(["XINFO", "STREAM", key])
    except GlideBaseError as exc:
        raise StoreError(f"could not inspect stream {where} for missing entries: {exc}") from exc
    added, newest = _field(info, "entries-added"), _seq(_field(info, "last-generated-id") or "")
    if added is None or newest is None or int(added) >= newest:
        return  # every id up to the newest was added here: the missing ones were trimmed
    raise StoreError(
        f"stream {where} lost entries before {entry_id}: the store dropped writes "
        "it had acknowledged (a Valkey Cluster primary that failed before its replica got them, or a "
        "restart without persistence); start the run again"
    )


def _field(info: Any, name: str) -> str | None:
    for key, value in dict(info).items():  # glide speaks RESP3: a map
        text = key.decode() if isinstance(key, bytes) else str(key)
        if text == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
