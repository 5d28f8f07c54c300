"""Lua scripts sent by their SHA1 (``EVALSHA``), with their text only when the store lacks it.

The store layer's lowest part: :mod:`datagraph.store.batch` resends refused
commands through it, and :mod:`datagraph.store.scripts` defines its scripts
with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from glide import GlideError as GlideBaseError

__all__ = ["Script", "is_own_script", "is_script", "is_unknown_script", "with_script_text"]


class Script:
    """A Lua script sent by its SHA1 (``EVALSHA``), not by its text, after the first time.

    The store caches a script's text once it has run it; a server that does
    not have it (restarted, failed over, ``SCRIPT FLUSH``) refuses ``EVALSHA``
    with ``NOSCRIPT`` without running it, and :func:`datagraph.store.batch`
    sends such commands again with the text (:func:`with_script_text`), and
    every script after the first refused one in the same batch too, in order.
    So a script must be safe to run twice.
    """

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        _TEXTS[self.sha] = text

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """The ``EVALSHA`` running this script on ``keys`` with ``args``."""
        return ["EVALSHA", self.sha, str(len(keys)), *keys, *args]


#: The text of every :class:`Script`, by SHA1.
_TEXTS: dict[str, str] = {}


def is_own_script(command: list[Any]) -> bool:
    """Whether ``command`` is the ``EVALSHA`` of a :class:`Script`."""
    return command[0] == "EVALSHA" and command[1] in _TEXTS


def is_unknown_script(reply: Any, command: list[Any]) -> bool:
    """Whether ``reply`` is the store refusing ``command`` (an ``EVALSHA``) for want of the script."""
    return (
        isinstance(reply, GlideBaseError)
        and command[0] == "EVALSHA"
        and "NOSCRIPT" in str(reply).upper()
        and command[1] in _TEXTS
    )


def with_script_text(command: list[Any]) -> list[Any]:
    """The ``EVAL`` form of an ``EVALSHA`` of a :class:`Script`: the same, carrying the text."""
    return ["EVAL", _TEXTS[command[1]], *command[2:]]


def is_script(command: list[Any]) -> bool:
    """Whether ``command`` runs a script (``EVAL`` or ``EVALSHA``)."""
    return command[0] in ("EVALSHA", "EVAL")
