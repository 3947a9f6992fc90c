"""What keeps `lesiondetect review` safe by default (standard library only, unit-tested alone).

- `resolve_inside`: every path the page sends (and every image path a dataset.json names) is
  resolved inside the dataset root: no absolute paths, no `..`, no symlink that leads out.
- `check_bind`: loopback unless `--host` names another address; then a warning is printed
  and a random token is required (`new_token`, `token_matches`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path, PurePosixPath, PureWindowsPath

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_BYTES = 24


class UnsafePath(ValueError):
    """A path from the page (or a dataset.json) that would lead outside the dataset root."""


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """`root / relative` resolved (symlinks followed), refused unless it stays inside `root`.

    Refused: an empty path, an absolute path (POSIX or Windows, drive or UNC), any `..`
    component, a NUL byte, and a path whose resolved target (after following every symlink on
    the way) is not `root` itself or below it.  The path need not exist.
    """
    if not isinstance(relative, (str, os.PathLike)):
        raise UnsafePath(f"a path must be text, not {type(relative).__name__}")
    text = os.fspath(relative)
    if not isinstance(text, str) or not text.strip():
        raise UnsafePath("an empty path")
    if "\x00" in text:
        raise UnsafePath("a path with a NUL byte")
    if (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive
            or text.startswith(("/", "\\", "~"))):
        raise UnsafePath(f"{text!r}: absolute paths are refused; give a path inside the dataset")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafePath(f"{text!r}: '..' is refused; give a path inside the dataset")
    base = Path(root).resolve(strict=True)
    target = (base / Path(*parts)).resolve(strict=False)
    if target != base and base not in target.parents:
        raise UnsafePath(f"{text!r} leads outside the dataset (through a symbolic link)")
    return target


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback name or address (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random URL-safe token (24 bytes of os.urandom)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_matches(expected: str | None, given) -> bool:
    """The page's token against the server's, in constant time; always True without a token."""
    if expected is None:
        return True
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def check_bind(host: str | None, token: str | None = None) -> tuple[str, str | None, str | None]:
    """(host to bind, token required or None, warning to print or None) for `--host`.

    No --host: 127.0.0.1, no token.  A loopback --host: as given, no token.  Any other address
    (0.0.0.0 included): as given, a token (the one passed, else a new random one) and a warning.
    A token passed explicitly is required on loopback too (a shared machine).
    """
    if host is None or host == "":
        return "127.0.0.1", token, None
    if is_loopback(host):
        return host, token, None
    token = token or new_token()
    warning = (f"WARNING: serving on {host}, not on loopback: anyone who can reach this address can see the "
               "images and change the dataset once they have the token.  Prefer an SSH tunnel to 127.0.0.1.")
    return host, token, warning
