"""codec: what signing and serialising one batch costs, per value.

A batch of 1,000 values (small ints, or the 1 KiB dicts of the pipeline
scenario) is pickled and signed once by its writer, then verified and
unpickled once by each reader.  This scenario times each step on its own,
and the MAC the codec uses (keyed BLAKE3) against the two it could use
instead, measured here on the same bytes: HMAC-SHA256 (OpenSSL) and keyed
BLAKE2b (CPython's ``hashlib``).  No store involved.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import time
from collections.abc import Callable
from typing import Any

from blake3 import blake3

from datagraph.store.codec import Codec

from ._flows import make_records
from ._harness import SECRET, Bench, median

NAME = "codec"
BATCH = 1_000
KEY = hashlib.sha256(SECRET).digest()


def per_value_us(func: Callable[[], Any], repeats: int) -> float:
    """Median over ``repeats`` timings of ``func()`` (one batch), in microseconds per value."""
    func()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return median(samples) / BATCH * 1e6


def steps(codec: Codec, values: list[Any], repeats: int) -> dict[str, float]:
    """Each step's cost for one batch of ``values``, in microseconds per value."""
    body = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    signed = codec.encode_batch(values)
    return {
        "bytes_per_value": len(body) / BATCH,
        "pickle": per_value_us(lambda: pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL), repeats),
        "unpickle": per_value_us(lambda: pickle.loads(body), repeats),
        "encode_batch": per_value_us(lambda: codec.encode_batch(values), repeats),
        "decode_batch": per_value_us(lambda: codec.decode_batch(signed, "the codec benchmark"), repeats),
        "blake3": per_value_us(lambda: blake3(body, key=KEY).digest(16), repeats),
        "hmac_sha256": per_value_us(lambda: hmac.digest(KEY, body, "sha256"), repeats),
        "blake2b": per_value_us(lambda: hashlib.blake2b(body, key=KEY).digest(), repeats),
    }


def run(bench: Bench) -> dict[str, Any]:
    repeats = bench.pick(30, 150)
    bench.title(NAME, f"one batch of {BATCH:,} values, median of {repeats} timings; microseconds per value")
    codec = Codec(SECRET)
    figures: dict[str, Any] = {"batch": BATCH, "repeats": repeats}
    for key, payload, values in (
        ("ints", "ints", list(range(BATCH))),
        ("records", "1 KiB dicts", make_records(0, BATCH)),
    ):
        got = steps(codec, values, repeats)
        bench.say(f"  {payload}: {got['bytes_per_value']:,.0f} bytes per value pickled")
        bench.row(
            f"pickle + sign (encode_batch), {payload}",
            f"{got['encode_batch']:.3f} us/value",
            f"{got['encode_batch'] / got['pickle']:.2f}x pickle alone",
        )
        bench.row(
            f"verify + unpickle (decode_batch), {payload}",
            f"{got['decode_batch']:.3f} us/value",
            f"{got['decode_batch'] / got['unpickle']:.2f}x unpickle alone",
        )
        bench.row(f"MAC: HMAC-SHA256, {payload}", f"{got['hmac_sha256']:.3f} us/value", "baseline")
        for mac, label in (("blake2b", "keyed BLAKE2b"), ("blake3", "keyed BLAKE3 (the codec's)")):
            bench.row(
                f"MAC: {label}, {payload}",
                f"{got[mac]:.3f} us/value",
                f"{got['hmac_sha256'] / got[mac]:.2f}x as fast",
            )
        figures[key] = got
    bench.record(NAME, **figures)
    return figures
