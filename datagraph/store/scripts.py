"""Server-side scripts: state changes that must be atomic."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from glide import GlideError as GlideBaseError

from ..exceptions import StoreError
from . import keys

if TYPE_CHECKING:
    from ..plan import Plan
    from ..runtime import Runtime

__all__ = ["finish_run"]

TERMINAL = ("succeeded", "failed", "cancelled")

# KEYS[1] run hash, KEYS[2..] the run's other keys.
# ARGV[1] new state, ARGV[2] end time, ARGV[3] retention seconds, ARGV[4] error JSON or "".
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'ended', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""


async def finish_run(
    runtime: Runtime, plan: Plan, state: str, *, error: dict[str, Any] | None = None
) -> bool:
    """Move the run to a terminal state (once) and start its retention clock."""
    run_keys = keys.run_keys(plan.run_id, plan.ios)
    args = [
        state,
        repr(time.time()),
        str(int(runtime.settings.retention)),
        json.dumps(error) if error else "",
    ]
    try:
        changed = await runtime.client.custom_command(["EVAL", _FINISH, str(len(run_keys)), *run_keys, *args])
    except GlideBaseError as exc:
        raise StoreError(f"could not record the end of run {plan.run_id}: {exc}") from exc
    return bool(changed)
