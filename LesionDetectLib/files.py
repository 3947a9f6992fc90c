"""Safe file writing: atomic replacement and never clobbering what the user already has."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import input_error


def refuse_existing(path: str | os.PathLike) -> Path:
    """Return `path` as a Path, or raise if something is already there (we never overwrite)."""
    path = Path(path)
    if path.exists():
        raise input_error(path, "already exists; refusing to overwrite it (choose another name or remove it first)")
    return path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest` in one step.

    A crash or an exception leaves `dest` untouched and removes the temporary file.  With
    overwrite=False an existing `dest` is an error (checked before and again at the rename).
    """
    dest = Path(dest)
    if not overwrite:
        refuse_existing(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (".seg.nrrd", ".nii.gz") so writers that look at it still work
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + dest.name, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if overwrite:
            os.replace(tmp_path, dest)
        else:
            # os.link fails if dest appeared meanwhile: no race can clobber it
            try:
                os.link(tmp_path, dest)
            except FileExistsError:
                raise input_error(dest, "appeared while writing; refusing to overwrite it") from None
            except OSError:  # file systems without hard links
                refuse_existing(dest)
                os.replace(tmp_path, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def read_json(path: str | os.PathLike, missing: str = "not found", invalid: str = "is not valid JSON"):
    """Parse a JSON file.  A missing, unreadable or malformed file is one LesionDetectError
    naming it: `missing` or `invalid (<parser's reason>)` say what that means to the caller."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise input_error(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error(path, f"{invalid} ({exc})") from None
    except OSError as exc:
        raise input_error(path, f"cannot be read ({exc.strerror})") from None


def write_json(dest: str | os.PathLike, obj, overwrite: bool = False) -> Path:
    """Write `obj` as indented JSON atomically."""
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return Path(dest)


def write_text(dest: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)
