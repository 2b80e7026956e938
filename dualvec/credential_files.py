"""The files that say who may call, read the same way by the server and the client: token files (one bearer token
a line; blank lines and ``#`` comments ignored) and PEM files (TLS certificates and keys). Errors name the file
and, for a token file, the line by its number: never a token."""
from __future__ import annotations

import os
from pathlib import Path

from dualvec.kernel.errors import DualvecError


def check_token(token: str) -> str:
    """The token as it goes into metadata. Raises DualvecError (without the token) when it cannot be sent."""
    token = token.strip()
    if not token or not _sendable(token):
        raise DualvecError("token: must be printable ASCII without spaces, and not empty")
    return token


def _sendable(token: str) -> bool:
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


def _read(path: Path, what: str, *, text: bool):
    try:
        return path.read_text(encoding="utf-8") if text else path.read_bytes()
    except FileNotFoundError:
        raise DualvecError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DualvecError(f"{what} {path} is a directory") from None
    except UnicodeDecodeError:
        raise DualvecError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise DualvecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_tokens(path: str | os.PathLike) -> list[str]:
    """The tokens of a token file, in order. Raises DualvecError naming the file (and a line by its number, never
    its content) when it cannot be read, holds no token, or holds a line that cannot be sent as gRPC metadata."""
    path = Path(path)
    tokens: list[str] = []
    for lineno, line in enumerate(_read(path, "token file", text=True).splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not _sendable(token):
            raise DualvecError(f"token file {path}, line {lineno}: a token must be printable ASCII without spaces")
        tokens.append(token)
    if not tokens:
        raise DualvecError(f"token file {path} holds no token (one a line; blank lines and # comments are ignored)")
    return tokens


def read_pem(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of a PEM file. Raises DualvecError naming the option (``what``) and the file when it cannot be
    read or holds no PEM block."""
    path = Path(path)
    data = _read(path, what, text=False)
    if b"-----BEGIN " not in data:
        raise DualvecError(f"{what} {path} is not a PEM file (no -----BEGIN line)")
    return data
