"""User-facing errors.

A `UserError` is a mistake the user can fix (bad column, bad key, missing
file). The CLI prints its message on one line and exits non-zero; it never
shows a traceback. Anything else is a bug in tunelab and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input, config or environment."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean `{match[0]}`?)" if match else ""
