"""Library error messages in the user's words: Python argument names -> the flags they typed.

The library names its arguments (``X['audio']``, ``labels['audio']``, ``pad_short=True``,
``max_iter``); a command knows which flag gave each one and rewrites the message of any
:class:`~commonspace.exceptions.CommonspaceError` that passes through :func:`speak_flags`.
"""

from __future__ import annotations

import contextlib
import re

from commonspace.exceptions import CommonspaceError


def rewrite(message: str, names: dict[str, str]) -> str:
    """Replace every key of ``names`` found in ``message`` (longest first) by its flag."""
    for key in sorted(names, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-]){re.escape(key)}(?![\w=-])", lambda _m, k=key: names[k],
                         message)
    return message


@contextlib.contextmanager
def speak_flags(names: dict[str, str]):
    """Re-raise a CommonspaceError of the block with its message in flags (same class)."""
    try:
        yield
    except CommonspaceError as exc:
        text = rewrite(str(exc), names)
        if text == str(exc):
            raise
        raise type(exc)(text) from None
