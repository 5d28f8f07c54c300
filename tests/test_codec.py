from __future__ import annotations

import gc
import hmac
import pickle
from typing import Any

import pytest
from blake3 import blake3

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


def test_a_clean_end_is_encoded_once_and_its_bytes_verified_once() -> None:
    codec = Codec(b"k")
    end = codec.end_marker("p")
    assert end is codec.end_marker("p")  # kept, not signed again
    assert end == codec.encode_marker({"status": "ok", "processor": "p"})
    assert codec.decode_marker(end, "x") == {"status": "ok", "processor": "p"}
    assert codec.decode_marker(end, "x") == {"status": "ok", "processor": "p"}  # from what it kept
    # Kept by its exact bytes, per key: other bytes, or another key, are verified afresh.
    damaged = bytearray(end)
    damaged[-2] ^= 1
    with pytest.raises(TamperedPayloadError):
        codec.decode_marker(bytes(damaged), "x")
    with pytest.raises(TamperedPayloadError):
        Codec(b"z").decode_marker(end, "x")


def test_payload_is_the_keyed_blake3_mac_then_the_pickled_batch() -> None:
    # The wire format, computed independently: a reader in another process (or
    # language) verifies entries exactly like this.
    secret = b"any length of secret"
    key = blake3(secret, derive_key_context="datagraph 2026-11 stream payload MAC v1").digest()
    body = pickle.dumps([1, "two"], protocol=pickle.HIGHEST_PROTOCOL)
    assert Codec(secret).encode_batch([1, "two"]) == blake3(body, key=key).digest(16) + body


@pytest.mark.parametrize("damage", ["mac byte", "truncated", "empty"])
def test_damaged_payloads_are_refused(damage: str) -> None:
    codec = Codec(b"k")
    payload = bytearray(codec.encode_batch(list(range(100))))
    if damage == "mac byte":
        payload[0] ^= 0x80
    elif damage == "truncated":
        del payload[-10:]
    else:
        payload = bytearray()
    with pytest.raises(TamperedPayloadError, match="bad signature"):
        codec.decode_batch(bytes(payload), "x")


def test_an_hmac_signed_entry_of_the_earlier_format_is_refused_and_named() -> None:
    body = pickle.dumps([1], protocol=pickle.HIGHEST_PROTOCOL)
    old = hmac.digest(b"k", body, "sha256")[:16] + body
    with pytest.raises(TamperedPayloadError, match="another version of Datagraph"):
        Codec(b"k").decode_batch(old, "'x' of run r")


_gc_seen: list[bool] = []


def _note_gc_state() -> int:
    _gc_seen.append(gc.isenabled())
    return 0


def _refuse_to_load() -> int:
    raise RuntimeError("this value cannot be rebuilt here")


class _Probe:
    """Records whether the garbage collector is on at the moment it is unpickled."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_note_gc_state, ())


class _Broken:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load, ())


def test_a_batch_is_unpickled_without_collector_passes_and_the_collector_is_left_as_found() -> None:
    codec = Codec(b"k")
    _gc_seen.clear()
    was = gc.isenabled()
    try:
        gc.enable()
        assert codec.decode_batch(codec.encode_batch([_Probe(), 1]), "x") == [0, 1]
        assert _gc_seen == [False] and gc.isenabled()
        with pytest.raises(RuntimeError, match="cannot be rebuilt"):
            codec.decode_batch(codec.encode_batch([_Broken()]), "x")
        assert gc.isenabled(), "a failed decode left the collector off"
        gc.disable()  # the application's choice stands
        codec.decode_batch(codec.encode_batch([_Probe()]), "x")
        assert _gc_seen == [False, False] and not gc.isenabled()
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()
