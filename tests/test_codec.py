from __future__ import annotations

import pytest

from datagraph.exceptions import TamperedPayloadError
from datagraph.store.codec import Codec


def test_batches_roundtrip() -> None:
    codec = Codec(b"k")
    values = [1, "two", {"three": [3.0]}, None, b"\x00"]
    assert codec.decode_batch(codec.encode_batch(values), "x") == values


def test_other_key_is_refused() -> None:
    payload = Codec(b"one").encode_batch([1])
    with pytest.raises(TamperedPayloadError, match="bad signature"):
        Codec(b"two").decode_batch(payload, "'x' of run r")


def test_flipped_byte_is_refused() -> None:
    codec = Codec(b"k")
    payload = bytearray(codec.encode_batch([1, 2, 3]))
    payload[-2] ^= 1
    with pytest.raises(TamperedPayloadError):
        codec.decode_batch(bytes(payload), "x")


def test_markers_roundtrip_and_are_signed() -> None:
    codec = Codec(b"k")
    marker = {"status": "failed", "processor": "p"}
    assert codec.decode_marker(codec.encode_marker(marker), "x") == marker
    with pytest.raises(TamperedPayloadError):
        Codec(b"z").decode_marker(codec.encode_marker(marker), "x")
