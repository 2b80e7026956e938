"""Domain exceptions. Each names the problem in its message; the servicer maps them to gRPC codes in one table
(dualvec.server.status_codes) and the CLI prints the message as one line."""
from __future__ import annotations


class DualvecError(Exception):
    """Base class: a problem the user can act on, described in one sentence."""


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
    """Words that are not in the vocabulary (every one of them is named)."""

    def __init__(self, words: list[str], space: str | None = None):
        self.words = list(words)
        shown = ", ".join(repr(w) for w in self.words[:20])
        more = f" and {len(self.words) - 20} more" if len(self.words) > 20 else ""
        where = f" (space {space.upper()})" if space else ""
        noun = "word" if len(self.words) == 1 else "words"
        super().__init__(f"not in the vocabulary{where}: {noun} {shown}{more}")


class SpaceUnavailable(DualvecError):
    """A space the bundle does not have (OUT of an --in-only bundle)."""


class UnknownModel(DualvecError):
    """A model name this server does not serve."""


class Overloaded(DualvecError):
    """The server's queue of work is full."""


class DeadlineExpired(DualvecError):
    """The caller's deadline passed before the work started."""
