"""A run's commands folded into one script call give the replies the pipeline would have (store.fold)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from glide import GlideError

from datagraph import Supervisor
from datagraph.store import keys
from datagraph.store.batch import is_cluster, pipeline
from datagraph.store.evalsha import Script
from datagraph.store.fold import fold, folded
from datagraph.store.scripts import sample_history_command

pytestmark = [pytest.mark.anyio, pytest.mark.stores]


def _commands(run_id: str) -> list[list[Any]]:
    stream, stats = keys.stream(run_id, "fold_xs"), keys.stats(run_id)
    return [
        ["XADD", stream, "0-1", "b", b"\x80\x05K\x01."],
        ["XADD", stream, "0-1", "b", b"again"],  # refused: the id is taken
        ["EXPIRE", stream, "60", "NX"],
        # A key of no run: folded in on a standalone store, sent beside the fold on a cluster.
        ["ZADD", f"fold-test:{run_id}", "1", run_id],
        ["HSET", stats, "written:fold_xs", "1", "state:p", "running"],
        ["HMGET", keys.run(run_id), "state", "error"],  # no run record: nil, nil
        ["EXPIRE", stats, "60"],  # a run's stats expire: the sample below is taken
        sample_history_command(run_id, force=True),  # a script, run inside the fold
        ["HMGET", stats, "written:fold_xs", "state:p"],
    ]


async def test_a_fold_replies_as_its_pipeline_would(supervisor: Supervisor) -> None:
    runtime = await supervisor.runtime()
    cluster = is_cluster(runtime.client)
    replies: dict[bool, list[Any]] = {}
    for folding in (False, True):
        run_id = uuid.uuid4().hex
        commands = _commands(run_id)
        plan = fold(commands, run_id, cluster=cluster) if folding else None
        sent = plan[0] if plan else commands
        result, _ = await pipeline(runtime.client, sent, retry_for=5.0, doing="folding")
        replies[folding] = plan[1](result) if plan else result
        if folding:
            assert plan is not None
            if cluster:
                assert len(sent) == 2  # the ZADD, then one script call
                assert sent[0][0] == "ZADD" and len(folded(sent[1]) or ()) == 8
            else:
                assert len(sent) == 1 and [c[0] for c in folded(sent[0]) or ()] == [c[0] for c in commands]
        await runtime.client.custom_command(["DEL", f"fold-test:{run_id}"])
    plain, via_fold = replies[False], replies[True]
    assert len(via_fold) == len(plain) == 9
    for i in (0, 4, 5, 7, 8):
        assert via_fold[i] == plain[i], i
    assert via_fold[0] == b"0-1" and via_fold[5] == [None, None] and via_fold[7] == 1
    assert via_fold[8] == [b"1", b"running"]
    # The refused XADD: an error in its own slot, with the store's words.
    assert isinstance(plain[1], GlideError) and isinstance(via_fold[1], GlideError)
    assert "equal or smaller" in str(via_fold[1])
    assert via_fold[3] == plain[3] == 1
    # EXPIRE: 1 from a script, True from glide.
    assert [bool(via_fold[i]) for i in (2, 6)] == [bool(plain[i]) for i in (2, 6)] == [True, True]


async def test_a_pipeline_of_one_command_replies_as_a_batch_of_it_would(supervisor: Supervisor) -> None:
    """A folded flush is one command, sent as a command: same replies, errors in their slot."""
    runtime = await supervisor.runtime()
    key = f"one-test:{{{uuid.uuid4().hex}}}"
    try:
        written, _ = await pipeline(runtime.client, [["HSET", key, "a", "1"]], retry_for=5.0, doing="one")
        assert written == [1]
        refused, _ = await pipeline(runtime.client, [["HSET", key]], retry_for=5.0, doing="one")
        assert len(refused) == 1 and isinstance(refused[0], GlideError)
        assert "wrong number of arguments" in str(refused[0])
        # A script the store has never seen goes again with its text, as in a batch.
        script = Script(f"-- {uuid.uuid4().hex}\nreturn ARGV[1] .. '!'")
        got, _ = await pipeline(runtime.client, [script.command([key], ["x"])], retry_for=5.0, doing="one")
        assert got == [b"x!"]
    finally:
        await runtime.client.custom_command(["DEL", key])


def test_commands_of_a_script_it_does_not_hold_are_not_folded() -> None:
    run_id = uuid.uuid4().hex
    other = ["EVALSHA", "0" * 40, "1", keys.run(run_id), "x"]
    assert fold([["HSET", keys.stats(run_id), "a", "1"], other], run_id) is None
    assert fold([["HSET", keys.stats(run_id), "a", "1"]], run_id) is None  # nothing to gain
    # XRANGE's reply is a map sent alone, a list from a script.
    stream = keys.stream(run_id, "xs")
    assert fold([["XADD", stream, "0-1", "b", "x"], ["XRANGE", stream, "-", "+"]], run_id) is None


def test_a_standalone_store_folds_commands_on_other_keys_that_reply_alike() -> None:
    run_id = uuid.uuid4().hex
    own = ["HSET", keys.stats(run_id), "a", "1"]
    index = ["ZADD", "fold-test:index", "1", run_id]
    plan = fold([own, index], run_id, cluster=False)
    assert plan is not None and len(plan[0]) == 1
    clustered = fold([own, own, index], run_id, cluster=True)
    assert clustered is not None and clustered[0][0] == index  # one slot per script on a cluster
    # ZADD INCR replies a score, which a script would turn into a string: sent beside.
    incr = ["ZADD", "fold-test:index", "INCR", "1", run_id]
    beside = fold([own, own, incr], run_id, cluster=False)
    assert beside is not None and beside[0][0] == incr and len(beside[0]) == 2
