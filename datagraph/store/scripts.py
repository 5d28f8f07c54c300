"""Server-side scripts: state changes that must be atomic."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from glide import GlideError as GlideBaseError

from ..exceptions import RunLostError, StoreError
from . import keys
from .evalsha import Script, is_script, is_unknown_script, with_script_text

if TYPE_CHECKING:
    from ..plan import Plan
    from ..settings import Settings
    from .client import Store


class RuntimeLike(Protocol):
    """What the scripts' helpers need of a runtime (the store layer knows no more of it)."""

    @property
    def client(self) -> Store: ...

    @property
    def settings(self) -> Settings: ...

__all__ = [
    "Script",
    "finish_run",
    "finish_run_command",
    "is_script",
    "is_unknown_script",
    "lost_run_error",
    "processor_done_command",
    "sample_history_command",
    "start_run_command",
    "with_script_text",
]

TERMINAL = ("succeeded", "failed", "cancelled")


# KEYS[1] run hash, KEYS[2..] the run's other keys.
# ARGV[1] new state, ARGV[2] end time, ARGV[3] retention seconds, ARGV[4] error JSON or "".
_FINISH = Script("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'ended', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
-- The positions hash must exist now, so that readers arriving later keep its expiry.
redis.call('HSETNX', KEYS[2], 'ended', ARGV[2])
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
""")


async def finish_run(
    runtime: RuntimeLike, plan: Plan, state: str, *, error: dict[str, Any] | None = None
) -> bool:
    """Move the run to a terminal state (once) and start its retention clock."""
    try:
        command = finish_run_command(runtime, plan, state, error=error)
        try:
            changed = await runtime.client.custom_command(command)
        except GlideBaseError as exc:
            if not is_unknown_script(exc, command):
                raise
            changed = await runtime.client.custom_command(with_script_text(command))
    except GlideBaseError as exc:
        raise StoreError(f"could not record the end of run {plan.run_id}: {exc}") from exc
    if changed == -1:
        raise lost_run_error(plan.run_id)
    return bool(changed == 1)


def finish_run_command(
    runtime: RuntimeLike, plan: Plan, state: str, *, error: dict[str, Any] | None = None
) -> list[str]:
    """The EVALSHA behind :func:`finish_run`, to send in a pipeline of one's own.

    Returns 1 when it moved the run, 0 when the run had already ended, -1 when
    the run is gone.
    """
    run_keys = keys.run_keys(plan.run_id, plan.ios)
    args = [
        state,
        repr(time.time()),
        str(int(runtime.settings.retention)),
        json.dumps(error) if error else "",
    ]
    return _FINISH.command(run_keys, args)


# A run starts: its record, its stats, its kept inputs and its input streams (each
# with its batches and its end marker), all with the run's expiry, in one call.
# Safe to run twice (a pipeline retried after a lost connection): the hashes are
# plain sets, and a stream that exists already holds this script's own entries
# (the run id is new), so its entries are not added again.
# KEYS[1] run hash, KEYS[2] stats, KEYS[3] rerun hash, KEYS[4..] input streams.
# ARGV[1] ttl, ARGV[2] now, ARGV[3] n: run fields and values in ARGV[4 .. 3+n];
# then the rerun hash's field and value; then per input stream: its entry count k,
# k triples (id, field, payload), then its stats field ``written:<io>`` and the
# number of values written.
_START = Script("""
local ttl = ARGV[1]
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + n))
redis.call('EXPIRE', KEYS[1], ttl)
-- The start counts as the run's first history sample time (see _SAMPLE).
local clock = redis.call('TIME')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('HSET', KEYS[2], 'created', ARGV[2], 'sampled', tostring(ms))
local at = 4 + n
redis.call('HSET', KEYS[3], ARGV[at], ARGV[at + 1])
redis.call('EXPIRE', KEYS[3], ttl)
at = at + 2
for i = 4, #KEYS do
  local k = tonumber(ARGV[at])
  local fresh = redis.call('EXISTS', KEYS[i]) == 0
  for j = 0, k - 1 do
    local e = at + 1 + 3 * j
    if fresh then redis.call('XADD', KEYS[i], ARGV[e], ARGV[e + 1], ARGV[e + 2]) end
  end
  at = at + 1 + 3 * k
  redis.call('HSET', KEYS[2], ARGV[at], ARGV[at + 1])
  redis.call('EXPIRE', KEYS[i], ttl)
  at = at + 2
end
redis.call('EXPIRE', KEYS[2], ttl)
return 1
""")


def start_run_command(
    run_id: str,
    *,
    ttl: str,
    now: str,
    record: list[str],
    kept: list[Any],
    streams: Mapping[str, tuple[list[tuple[str, str, bytes]], int]],
) -> list[Any]:
    """The EVALSHA that records a starting run and writes its inputs (see ``_START``).

    ``record`` holds the run hash's fields and values, ``kept`` the rerun
    hash's field and value, ``streams`` maps each input IO to its entries
    ``(id, field, payload)`` and the number of values they carry.
    """
    script_keys = [keys.run(run_id), keys.stats(run_id), keys.rerun(run_id)]
    args: list[Any] = [ttl, now, str(len(record)), *record, *kept]
    for io, (entries, written) in streams.items():
        script_keys.append(keys.stream(run_id, io))
        args.append(str(len(entries)))
        for entry in entries:
            args += entry
        args += [f"written:{io}", str(written)]
    return _START.command(script_keys, args)


def lost_run_error(run_id: str) -> RunLostError:
    return RunLostError(
        f"Valkey no longer has run {run_id}: its record expired, or the store lost its data "
        "(restarted without persistence, or evicted keys under maxmemory)"
    )


# A processor finished cleanly: mark it done (idempotently: a retried pipeline
# may run this twice) and, when every processor of the run is done, finish the
# run.  KEYS[1] stats, KEYS[2] run hash, KEYS[3..] the run's other keys.
# ARGV[1] processor, ARGV[2] now, ARGV[3] retention, ARGV[4..] all processors.
_PROCESSOR_DONE = Script("""
redis.call('HSET', KEYS[1], 'state:' .. ARGV[1], 'done', 'ended:' .. ARGV[1], ARGV[2])
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return -1 end
local done = 0
for i = 4, #ARGV do
  if ARGV[i] == ARGV[1] or redis.call('HGET', KEYS[1], 'state:' .. ARGV[i]) == 'done' then done = done + 1 end
end
if done < #ARGV - 3 or state ~= 'running' then
  redis.call('HSET', KEYS[2], 'done', done)
  return 0
end
redis.call('HSET', KEYS[2], 'done', done, 'state', 'succeeded', 'ended', ARGV[2])
-- The positions hash must exist now, so that readers arriving later keep its expiry.
redis.call('HSETNX', KEYS[3], 'ended', ARGV[2])
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
""")


def processor_done_command(runtime: RuntimeLike, plan: Plan, processor: str) -> list[str]:
    """The EVALSHA that marks ``processor`` done (and the run succeeded when it is the last)."""
    names = [p["name"] for p in plan.processors]
    args = [processor, repr(time.time()), str(int(runtime.settings.retention)), *names]
    return _PROCESSOR_DONE.command(plan.done_keys, args)


#: Seconds of 1-second history kept per run; older samples survive at 1 minute.
HISTORY_FINE_SECONDS = 900
#: Seconds between the samples kept for a run's whole life.
HISTORY_COARSE_SECONDS = 60
#: Prefix of a reader position (``<reader>/<io>`` in ``pos``) in a history sample.
HISTORY_READ = "r:"

# Sample the run's cumulative counters into its history streams, at most once per
# second (and once per minute into the coarse stream), whoever calls it: several
# processes writing one run give one series.  The store's clock times samples.
# A sample copies the stats fields written:, busy:, idle:, bp: and state:, and
# each reader position ``<reader>/<io>`` as ``r:<reader>/<io>``.  An entry holds
# only the values, comma-separated in field ``v``, in the order of the names
# list (KEYS[5]), which only grows (hash fields are never removed during a run);
# "" where a name has no value yet.  So a sample of a 30-edge flow costs a few
# hundred bytes, and every entry has the same single field, which streams store
# once per node.
# The run's start counts as sampled (``_START`` sets ``sampled``): a run's first
# sample is due in the second after it starts, so a run shorter than that has one
# sample, at its end.  The end is sampled whatever the time: a processor's closing
# flush sends mode "end", which samples even within the current second once the
# run is over (the scripts before it in the flush ended it), so whichever
# processor ends the run puts the end in its history, and the others' closing
# flushes cost no more than any status.
# KEYS[1] stats, KEYS[2] pos, KEYS[3] fine history, KEYS[4] coarse history,
# KEYS[5] names, KEYS[6] run hash.  ARGV[1] "0" at most once a second, "1" now
# whatever the time, "end" now if the run is over (else as "0"); ARGV[2] ms of
# fine history kept, ARGV[3] ms between coarse samples.
# Each redis.call costs about a microsecond and a half and this runs on the path of
# every closing flush: new names go in one RPUSH, the sample's marks in one HSET.
_SAMPLE = Script("""
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local mode = ARGV[1]
if mode ~= '1' and now - (now % 1000) <= tonumber(redis.call('HGET', KEYS[1], 'sampled') or '0') then
  if mode ~= 'end' or redis.call('HGET', KEYS[6], 'state') == 'running' then return 0 end
end
local known = redis.call('LRANGE', KEYS[5], 0, -1)
local n = #known
local index = {}
for i = 1, n do index[known[i]] = i end
local values = {}
local new = {}
local copied = {written = true, busy = true, idle = true, bp = true, state = true}
local stats = redis.call('HGETALL', KEYS[1])
for i = 1, #stats, 2 do
  local f = stats[i]
  local at = index[f]
  if at then
    values[at] = stats[i + 1]
  elseif copied[string.match(f, '^(%a+):') or ''] then
    n = n + 1
    new[#new + 1] = f
    values[n] = stats[i + 1]
  end
end
local pos = redis.call('HGETALL', KEYS[2])
for i = 1, #pos, 2 do
  local f = pos[i]
  if string.find(f, '/', 1, true) and not string.find(f, '#', 1, true) then
    local name = 'r:' .. f
    local at = index[name]
    if not at then
      n = n + 1
      new[#new + 1] = name
      at = n
    end
    values[at] = pos[i + 1]
  end
end
if n == 0 then return 0 end
if #new > 0 then redis.call('RPUSH', KEYS[5], unpack(new)) end
for i = 1, n do values[i] = values[i] or '' end
local packed = table.concat(values, ',')
redis.call('XADD', KEYS[3], 'MINID', tostring(now - tonumber(ARGV[2])), '*', 'v', packed)
local step = tonumber(ARGV[3])
if now - (now % step) > tonumber(redis.call('HGET', KEYS[1], 'sampled:coarse') or '-1') then
  redis.call('XADD', KEYS[4], '*', 'v', packed)
  redis.call('HSET', KEYS[1], 'sampled', tostring(now), 'sampled:coarse', tostring(now))
else
  redis.call('HSET', KEYS[1], 'sampled', tostring(now))
end
for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
""")


#: The scripts a processor's flush sends, which datagraph.store.fold runs inside its own.
FOLDABLE = (_START, _PROCESSOR_DONE, _SAMPLE)


def sample_history_command(run_id: str, *, force: bool = False, at_end: bool = False) -> list[str]:
    """The EVALSHA that records one history sample of the run (see ``datagraph.history``).

    Cheap to send often: it returns at once when the run was sampled within the
    current second, unless ``force``, or ``at_end`` (a processor's last flush)
    and the run is over by then, so the run's end is in its history.  History
    keys take the expiry of the run's ``stats``.
    """
    script_keys = [
        keys.stats(run_id),
        keys.pos(run_id),
        keys.history(run_id),
        keys.history_coarse(run_id),
        keys.history_names(run_id),
        keys.run(run_id),
    ]
    mode = "1" if force else "end" if at_end else "0"
    args = [mode, str(HISTORY_FINE_SECONDS * 1000), str(HISTORY_COARSE_SECONDS * 1000)]
    return _SAMPLE.command(script_keys, args)
