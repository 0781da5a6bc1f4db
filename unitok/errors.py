"""The one error family for user mistakes: a bad file, field, flag, input or option.

Every error a user can cause and fix (a wrong path, a malformed spec or config, a corrupt checkpoint,
a bad image or prompt, an unknown decoding option) is a ``UniTokError`` whose message names the
file, field, flag or request at fault. Surfaces print it as one line (``unitok`` exits with status 2;
``--debug`` shows the traceback); anything else is a bug and keeps its traceback.

Each subclass also keeps the built-in base it always had (``ValueError``, ``KeyError``, ``TypeError``),
so ``except ValueError`` in older code still catches it. This module imports nothing: every layer,
``unitok.data`` included, may import it.
"""
from __future__ import annotations


class UniTokError(Exception):
    """A mistake in what the user gave: the message says what and where, in one line."""


class InputError(UniTokError, ValueError):
    """A request's input (image, prompt, region, video) cannot be used; the message names it."""


class DecodingError(UniTokError, TypeError, ValueError):
    """A decoding option is unknown, of the wrong type or out of bounds; the message names the key.
    (A ``TypeError`` as well, as an unknown keyword argument is, and a ``ValueError`` as a bad value is.)"""


class RequestError(UniTokError, ValueError):
    """Request ``index`` of a ``Pipeline.batch`` failed; ``error`` is why (also the ``__cause__``)."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(f"request {index}: {message(error)}")
        self.index, self.error = index, error
        self.__cause__ = error


def message(error: BaseException) -> str:
    """An error's message as a user should read it (a ``KeyError``'s without the quotes it adds)."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)
