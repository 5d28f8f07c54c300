"""One run's commands of a pipeline, folded into a single script call.

A processor's flush is a dozen commands on one run's keys (its entries, their
expiry, the stats and positions hashes, the run's state, the scripts that
mark it done and sample its history).  The store client converts every
command and every argument of a pipeline on the event loop's thread, about
8 us per command and 1 us per argument, which made it the largest share of a
small run's CPU.  Folded, those commands travel as one ``EVALSHA`` whose only
argument is the whole list in MessagePack: the script unpacks it
(``cmsgpack``, built into Valkey's Lua) and runs each command in order, as the
pipeline would have, with the scripts a flush sends (:data:`FOLDABLE`) run as
functions of the same script.

The replies come back one per command, in order, an error in its own slot
(``redis.pcall``), so callers see what the pipeline would have given them.
Folded commands run at once, as a transaction would (a reader blocked on a
stream wakes after all of them).  On a cluster only commands on the keys of
one run go in (its hash tag puts them in one slot); others (the global run
index) are sent beside the fold.  A standalone store has one keyspace, so
everything foldable goes in, and a pipeline becomes one command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from glide import GlideError as GlideBaseError
from glide import RequestError

from .evalsha import Script
from .scripts import FOLDABLE

__all__ = ["fold", "folded"]


def _fold_script(scripts: tuple[Script, ...]) -> Script:
    functions = "".join(
        f"scripts['{script.sha}'] = function(KEYS, ARGV)\n{script.text}\nend\n" for script in scripts
    )
    return Script(
        # A script with flags (none here) is refused whole by a store out of memory, before
        # it runs, as a transaction is; one without may run its first commands and then
        # go on writing past the limit.
        "#!lua\n"
        "local scripts = {}\n"
        + functions
        + """
local commands = cmsgpack.unpack(ARGV[1])
local replies, errors = {}, {}
for i = 1, #commands do
  local command = commands[i]
  local ok, reply
  local script = command[1] == 'EVALSHA' and scripts[command[2]]
  if script then
    local n = tonumber(command[3])
    ok, reply = pcall(script, {unpack(command, 4, 3 + n)}, {unpack(command, 4 + n)})
  else
    reply = redis.pcall(unpack(command))
    ok = not (type(reply) == 'table' and reply.err)
  end
  if not ok then
    errors[#errors + 1] = i
    errors[#errors + 1] = type(reply) == 'table' and reply.err or tostring(reply)
    reply = false
  elseif reply == nil then
    reply = false
  end
  replies[i] = reply
end
return {replies, errors}
"""
    )


_FOLD = _fold_script(FOLDABLE)
_EMBEDDED = frozenset(script.sha for script in FOLDABLE)


#: Commands whose reply is the same through a script as sent alone (no RESP3 map,
#: no float): what a processor's pipelines send, and the run index's ``ZADD``
#: (without ``INCR``, which replies a score).
_SAME_REPLY = frozenset(
    {"XADD", "XTRIM", "EXPIRE", "HSET", "HSETNX", "HMGET", "HDEL", "DEL", "EVALSHA", "ZADD"}
)


Unfold = Callable[[list[Any]], list[Any]]


def _incr(command: list[Any]) -> bool:
    """A ``ZADD ... INCR`` (which replies a score)."""
    return any(isinstance(arg, str) and arg.upper() == "INCR" for arg in command[2:])


def fold(
    commands: list[list[Any]], run_id: str, *, cluster: bool = True
) -> tuple[list[list[Any]], Unfold] | None:
    """``commands`` to send instead (the fold last), and how to turn their replies into
    one per command of ``commands``; None when a command of the run cannot be folded
    (a script that is not in :data:`FOLDABLE`, a reply that a script would give in
    another shape), or there is nothing to fold.

    With ``cluster`` False (a standalone store) commands on other keys go in too
    if they can; else they are sent beside the fold.
    """
    tag = f"{{{run_id}}}"
    folded: list[list[Any]] = []
    at: list[int] = []  # index in commands of each folded command
    beside: list[int] = []
    # Every command of every flush comes through here: the key and the test are inline.
    for index, command in enumerate(commands):
        name = command[0]
        if name == "EVALSHA":
            own = tag in command[3]  # the script's first key
            foldable = command[1] in _EMBEDDED
        else:
            own = tag in command[1]
            foldable = name in _SAME_REPLY and not (name == "ZADD" and _incr(command))
        if not foldable:
            if own:
                return None
            beside.append(index)
        elif own or not cluster:
            at.append(index)
            folded.append(command)
        else:
            beside.append(index)
    if len(folded) < 2:
        return None
    sent = [commands[i] for i in beside]
    first = folded[0]
    key = first[3] if first[0] == "EVALSHA" else first[1]
    # Valkey's cmsgpack reads the "raw" strings of MessagePack's first form, not "bin".
    sent.append(_FOLD.command([key], [msgpack.packb(folded, use_bin_type=False)]))

    def unfold(result: list[Any]) -> list[Any]:
        replies: list[Any] = [None] * len(commands)
        for index, reply in zip(beside, result, strict=False):
            replies[index] = reply
        reply = result[-1]
        if isinstance(reply, GlideBaseError):
            for index in at:
                replies[index] = reply  # the fold did not run (or not to its end)
            return replies
        values, errors = reply
        for index, value in zip(at, values, strict=True):
            replies[index] = value
        for i in range(0, len(errors), 2):
            message = errors[i + 1]
            replies[at[errors[i] - 1]] = RequestError(
                message.decode(errors="replace") if isinstance(message, bytes) else str(message)
            )
        return replies

    return sent, unfold


def folded(command: list[Any]) -> list[list[Any]] | None:
    """The commands a fold carries (as :func:`fold` made it), or None if ``command`` is none.

    Every argument comes back as a ``str`` (bytes that are not UTF-8 as surrogate escapes).
    """
    if command[0] != "EVALSHA" or command[1] != _FOLD.sha:
        return None
    commands: list[list[Any]] = msgpack.unpackb(command[4], raw=False, unicode_errors="surrogateescape")
    return commands
