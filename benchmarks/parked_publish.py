"""parked_publish: callers' read positions published folded against as a plain pipeline.

    python -m benchmarks.parked_publish [--rounds 40] [--runs 65] [--backend asyncio|trio]

At 50 one-value runs at a time the runtime's publisher sends the callers' read
positions of about 65 runs every 50 ms (``datagraph.parked``).  Each round
parks the positions of ``--runs`` runs and publishes them twice over, once
folded into one script call (``datagraph.store.fold``, what a standalone
store gets) and once as a plain pipeline of two commands a run (what a
publication of more than ``parked.FOLD_AT_MOST`` commands, or a cluster,
gets), in alternating order.  It prints the event-loop thread's CPU per run's
positions for each (median of the rounds) and the median of the per-round
ratios folded / plain.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from datagraph import parked
from datagraph.store import keys

from ._harness import Session, quick_session


async def _publish(session: Session, runs: int, fold_at_most: int) -> float:
    """Loop-thread seconds per run for one publication of ``runs`` runs' positions."""
    positions = (await session.supervisor.runtime()).parked
    reader = keys.OUTPUT_READER
    for _ in range(runs):
        fields = [keys.pos_field(reader, "out"), "1", keys.pos_id_field(reader, "out"), "0-2"]
        positions.park(keys.pos(uuid.uuid4().hex), fields)
    saved, parked.FOLD_AT_MOST = parked.FOLD_AT_MOST, fold_at_most
    try:
        started = time.thread_time()
        await positions.publish()
        return (time.thread_time() - started) / runs
    finally:
        parked.FOLD_AT_MOST = saved


async def _measure(session: Session, args: argparse.Namespace) -> None:
    folded: list[float] = []
    plain: list[float] = []
    ratios: list[float] = []
    await _publish(session, args.runs, parked.FOLD_AT_MOST)  # scripts cached, connection warm
    await _publish(session, args.runs, 0)
    for round_ in range(args.rounds):
        if round_ % 2:
            p = await _publish(session, args.runs, 0)
            f = await _publish(session, args.runs, parked.FOLD_AT_MOST)
        else:
            f = await _publish(session, args.runs, parked.FOLD_AT_MOST)
            p = await _publish(session, args.runs, 0)
        folded.append(f)
        plain.append(p)
        ratios.append(f / p)
    print(
        f"{args.backend}, {args.runs} runs' positions per publication, {args.rounds} rounds: "
        f"folded {statistics.median(folded) * 1e6:.1f} us per run, "
        f"plain pipeline {statistics.median(plain) * 1e6:.1f} us per run; "
        f"folded / plain {statistics.median(ratios):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parked_publish", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--runs", type=int, default=65, help="runs whose positions one publication carries")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    if args.rounds < 1 or not 1 <= args.runs <= parked.FOLD_AT_MOST // 2:
        parser.error(f"give --rounds >= 1 and 1 <= --runs <= {parked.FOLD_AT_MOST // 2}")
    quick_session(args.backend, lambda session: _measure(session, args))


if __name__ == "__main__":
    main()
