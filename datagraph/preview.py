"""The latest values of a run's streams, as short ``repr`` strings.

For live views: one pipelined ``XREVRANGE`` per call reads the newest
entries of each IO, and the newest batches are decoded with the supervisor's
:class:`~datagraph.store.codec.Codec`, which checks each entry's signature
before unpickling it. An entry that does not verify is reported, never
decoded. Streams of continuous flows are trimmed once every reader has
consumed them, so a preview may legitimately be empty.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glide import GlideError as GlideBaseError

from .exceptions import StoreError, TamperedPayloadError
from .store import keys
from .store.client import Store, exec_batch, new_batch
from .store.codec import Codec
from .streams import BATCH

__all__ = ["StreamPreview", "latest_values", "short_repr"]

#: Newest entries read per IO (a stream ends with one marker entry).
_ENTRIES = 4
#: Batches larger than this many bytes are not decoded for a preview.
MAX_PREVIEW_BYTES = 1_000_000

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 6
_repr.maxlevel = 3


def short_repr(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to about ``width`` characters."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a user's __repr__ may raise
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class StreamPreview:
    """The newest values of one IO (oldest first), or why there are none."""

    io: str
    values: tuple[str, ...]
    #: Why ``values`` is empty or partial ("no values yet", "signature does not verify", ...).
    note: str | None = None


async def latest_values(
    client: Store,
    codec: Codec,
    run_id: str,
    ios: Sequence[str],
    *,
    count: int = 3,
    width: int = 80,
) -> dict[str, StreamPreview]:
    """Up to ``count`` newest values of each of ``ios`` in run ``run_id``."""
    if not ios:
        return {}
    batch = new_batch(client)
    for io in ios:
        batch.custom_command(["XREVRANGE", keys.stream(run_id, io), "+", "-", "COUNT", str(_ENTRIES)])
    try:
        replies = await exec_batch(client, batch, raise_on_error=True)
    except GlideBaseError as exc:
        raise StoreError(f"could not read the streams of run {run_id}: {exc}") from exc
    previews = {}
    for io, reply in zip(ios, replies or [], strict=False):
        previews[io] = _preview(codec, run_id, io, reply or {}, count, width)
    return previews


def _preview(codec: Codec, run_id: str, io: str, entries: Any, count: int, width: int) -> StreamPreview:
    newest_first: list[str] = []
    batch_field = BATCH.encode()
    for fields in entries.values():
        if not fields or fields[0][0] != batch_field:
            continue
        payload = fields[0][1]
        if len(payload) > MAX_PREVIEW_BYTES:
            return StreamPreview(
                io, tuple(reversed(newest_first)),
                f"latest batch is {len(payload) / 1e6:.1f} MB; not previewed",
            )
        try:
            values = codec.decode_batch(payload, f"{io!r} of run {run_id}")
        except TamperedPayloadError:
            return StreamPreview(
                io, tuple(reversed(newest_first)),
                "an entry's signature does not verify (another DATAGRAPH_SECRET?); not decoded",
            )
        except Exception as exc:  # authentic, but of a type this process cannot import
            return StreamPreview(
                io, tuple(reversed(newest_first)),
                f"cannot decode here: {type(exc).__name__}: {str(exc)[:80]}",
            )
        for value in reversed(values):
            newest_first.append(short_repr(value, width))
            if len(newest_first) >= count:
                return StreamPreview(io, tuple(reversed(newest_first)))
    note = None if newest_first else "no values (yet, or already consumed and trimmed)"
    return StreamPreview(io, tuple(reversed(newest_first)), note)
