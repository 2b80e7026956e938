"""Domain exceptions. Each names the problem in its message; the servicer maps them to gRPC codes in one table
(dualvec.server.status_codes) and the CLI prints the message as one line.

What a message repeats of a request is bounded here, for every error at once. A status message travels in the
``grpc-message`` trailer, percent-encoded (each byte outside printable ASCII, and ``%``, takes three), and a client
refuses trailers over its metadata limit (8 KiB by default; the call then fails as RESOURCE_EXHAUSTED "Stream
removed" instead of with its own status): an unknown word of 10 KB used to break its NOT_FOUND that way. So a
client's word or name is echoed as at most ``ECHO_CHARS`` characters (then "…" and its length), a list names at
most ``ECHO_ITEMS`` of them, and a whole message is cut to ``MAX_MESSAGE_WIRE_BYTES`` once encoded: a quarter of
the limit, whatever the message holds.
"""
from __future__ import annotations

from typing import Sequence

ECHO_CHARS = 64              # characters of one client-supplied word or name an error message repeats
ECHO_ITEMS = 10              # words an error message lists, then "and N more"
MAX_MESSAGE_WIRE_BYTES = 2048  # a message's length as the grpc-message trailer carries it (percent-encoded)
_CUT = " … (message shortened)"


def echo(text: str, limit: int = ECHO_CHARS) -> str:
    """``repr`` of a client-supplied string, shortened to ``limit`` characters ("'abc…' (10,240 characters)")."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit] + '…'!r} ({len(text):,} characters)"


def echo_list(items: Sequence[str], most: int = ECHO_ITEMS) -> str:
    """Client-supplied strings as "'a', 'b' and 3 more": at most ``most`` named, each shortened by ``echo``."""
    shown = ", ".join(echo(w) for w in items[:most])
    return shown + (f" and {len(items) - most:,} more" if len(items) > most else "")


def _wire_bytes(ch: str) -> int:
    """Bytes one character takes in a percent-encoded grpc-message."""
    code = ord(ch)
    if 0x20 <= code <= 0x7E:
        return 3 if ch == "%" else 1
    return 3 * len(ch.encode("utf-8", "backslashreplace"))


def bounded_message(message: str, limit: int = MAX_MESSAGE_WIRE_BYTES) -> str:
    """``message`` as it may travel as a status message: cut (with a note saying so) to at most ``limit`` bytes
    once percent-encoded, and with any unpaired surrogate escaped (gRPC could not encode it)."""
    if len(message) <= limit:  # else it cannot fit: every character takes a byte at least
        try:
            size = len(message.encode("utf-8"))
        except UnicodeEncodeError:
            message = _escape_surrogates(message)
            size = len(message.encode("utf-8"))
        if size * 3 <= limit:
            return message
    budget = limit - sum(map(_wire_bytes, _CUT))
    used = 0
    for i, ch in enumerate(message):
        used += _wire_bytes(ch)
        if used > budget:
            return _escape_surrogates(message[:i]) + _CUT
    return _escape_surrogates(message)


def _escape_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class DualvecError(Exception):
    """Base class: a problem the user can act on, described in one sentence (bounded by ``bounded_message``)."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (bounded_message(args[0]),)
        super().__init__(*args)


class ModelError(DualvecError):
    """A model or vector file cannot be turned into a two-space bundle (wrong kind, malformed, inconsistent)."""


class BundleError(DualvecError):
    """A bundle directory is missing, of an unknown format version, or fails its checksums."""


class InvalidArgument(DualvecError):
    """A request field is out of range or malformed. ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownWords(DualvecError):
    """Words that are not in the vocabulary: ``words`` holds every one, the message names the first
    ``ECHO_ITEMS`` (each shortened to ``ECHO_CHARS`` characters) and counts the others."""

    def __init__(self, words: list[str], space: str | None = None):
        self.words = list(words)
        where = f" (space {space.upper()})" if space else ""
        noun = "word" if len(self.words) == 1 else "words"
        super().__init__(f"not in the vocabulary{where}: {noun} {echo_list(self.words)}")


class SpaceUnavailable(DualvecError):
    """A space the bundle does not have (OUT of an --in-only bundle)."""


class UnknownModel(DualvecError):
    """A model name this server does not serve."""


class Overloaded(DualvecError):
    """The server's queue of work is full."""


class DeadlineExpired(DualvecError):
    """The caller's deadline passed before the work started."""
