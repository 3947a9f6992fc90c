"""Safe file writing: atomic replacement and never clobbering what the user already has.

Files are written to a temporary sibling and renamed onto their name (`atomic_path`); a
result folder is written whole into a temporary sibling folder and swapped in with one
atomic exchange (`atomic_dir`), so a process killed at any moment leaves either the complete
previous folder or the complete new one.  `read_json` is the one JSON reader: it refuses
files above `MAX_JSON_BYTES` or nested deeper than `MAX_JSON_DEPTH` before parsing them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import LesionDetectError, input_error


def refuse_existing(path: str | os.PathLike) -> Path:
    """Return `path` as a Path, or raise if something is already there (we never overwrite)."""
    path = Path(path)
    if path.exists():
        raise input_error(path, "already exists; refusing to overwrite it (choose another name or remove it first)")
    return path


def as_new(path: Path, mode: int = 0o666) -> None:
    """Give a temporary file or folder the permissions a new one gets (mode less the umask):
    results are shared with other annotators, not private to the writer."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


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
        try:
            yield tmp_path
        except OSError as exc:  # e.g. a full disk: one error naming the file, the partial one removed
            reason = full_disk_reason(dest.parent) or exc.strerror or exc
            raise input_error(dest, f"cannot be written ({reason}); nothing was written there") from None
        as_new(tmp_path, 0o666)  # mkstemp made it private (0600)
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


MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_depth(text: str) -> int:
    """How deeply brackets nest in JSON `text` (strings ignored), without parsing it."""
    import numpy as np

    brackets = re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    delta = np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)
    return int(np.cumsum(delta).max())


def read_json(path: str | os.PathLike, missing: str = "not found", invalid: str = "is not valid JSON"):
    """Parse a JSON file.  A missing, unreadable or malformed file is one LesionDetectError
    naming it: `missing` or `invalid (<parser's reason>)` say what that means to the caller."""
    path = Path(path)
    try:
        if path.is_dir():
            raise input_error(path, "is a folder, not a JSON file")
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise input_error(path, f"{invalid}: it is {size / 2**20:.0f} MiB, more than the {MAX_JSON_BYTES // 2**20} "
                                    "MiB a LesionDetect JSON file may have")
        text = path.read_text(encoding="utf-8")
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise input_error(path, f"{invalid}: it is nested {depth} levels deep (at most {MAX_JSON_DEPTH} are allowed)")
        return json.loads(text)
    except FileNotFoundError:
        raise input_error(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
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


# --- output folders --------------------------------------------------------------------------

def check_out_dir(path: str | os.PathLike, inputs=(), what: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file, cannot
    be created (no write permission) or lies inside (or is) one of the `inputs`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise input_error(path, f"is a file; {what} must be a folder (a new one, or one holding an earlier result)")
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise input_error(path, f"cannot be created: {ancestor} is a file, not a folder; choose another {what}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise input_error(path, f"cannot be created or written: no write permission in {ancestor}")
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if resolved == source or (source.is_dir() and source in resolved.parents):
            raise input_error(path, f"lies inside the input {item}; write results elsewhere, so that the input "
                                    "stays as it was")
    return path


FREE_SPACE_MARGIN = 8 * 2**20  # bytes left free beyond a result's expected size (file-system slack)


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def check_free_space(folder: str | os.PathLike, needed: int, what: str = "the result") -> None:
    """Refuse, before anything is written, to write `needed` bytes (plus 10 % and
    FREE_SPACE_MARGIN) into `folder` on a file system with less room: one error naming the
    folder, the space needed and the space free.  A file system that cannot say is not refused."""
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return  # the write itself reports a full disk
    wanted = int(needed * 1.1) + FREE_SPACE_MARGIN
    if free < wanted:
        raise input_error(folder, f"not enough free space for {what}: it needs about {_mib(wanted)}, the file "
                                  f"system has {_mib(free)} free; nothing was written")


DISK_FULL_BYTES = 2**20  # a write that fails with less than this free failed for want of space


def full_disk_reason(folder: str | os.PathLike) -> str | None:
    """Called after a write failed: "no space left on the device (N KiB free)" when the file
    system of `folder` has less than DISK_FULL_BYTES free for this user, else None.  Writers
    whose libraries report a full disk in their own words (ITK, safetensors) use it to say so."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return None
    return f"no space left on the device ({free / 1024:.0f} KiB free)" if free < DISK_FULL_BYTES else None


def fault_point(name: str) -> None:
    """Test hook: LESIONDETECT_TEST_KILL_AT=<name> kills this process with SIGKILL here (the
    fault tests use it to stop a writer at every step)."""
    if os.environ.get("LESIONDETECT_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, replaced=()) -> Iterator[Path]:
    """Yield a new temporary folder beside `dest`; on success it becomes `dest` in one atomic
    step.  Files of an existing `dest` whose names are not in `replaced` (the user's own,
    e.g. a scene bundle) are carried over as hard links; the old `replaced` files are not, so
    no stale file of an earlier result survives.  A `dest` holding sub-folders is refused.
    A crash at any moment leaves the old `dest` or the new one, whole; leftovers of a killed
    run are removed by the next one."""
    dest = Path(dest)
    if dest.is_symlink():  # replace the folder it points to, not the link
        dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dest.name}.tmp-"
    for stale in dest.parent.glob(glob.escape(prefix) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    if dest.is_dir():
        folders = sorted(e.name for e in dest.iterdir() if e.is_dir())
        if folders:
            raise input_error(dest, f"holds folders that are not part of a result ({', '.join(folders[:3])}); write "
                                    "the result into a new or empty folder")
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    as_new(tmp, 0o777)  # mkdtemp made it private (0700)
    try:
        try:
            yield tmp
        except OSError as exc:  # e.g. a full disk: the earlier folder is untouched, the partial one removed
            reason = full_disk_reason(tmp) or exc.strerror or exc
            raise input_error(dest, f"cannot be written ({reason}); nothing was changed") from None
        except Exception as exc:  # noqa: BLE001 - a library's own error type for a full disk (safetensors, ITK)
            reason = full_disk_reason(tmp)  # measured while the partial files still take their room
            text = str(exc)
            if reason is None and isinstance(exc, LesionDetectError) and text.startswith(str(tmp)) \
                    and ": cannot be written (" in text:  # atomic_path's error for a file of the temporary folder
                reason = text.split(": cannot be written (", 1)[1].rsplit("); nothing was written there", 1)[0]
            if reason is None:
                raise
            raise input_error(dest, f"cannot be written ({reason}); nothing was changed") from None
        if dest.is_dir():
            for entry in dest.iterdir():
                if entry.name not in replaced and not (tmp / entry.name).exists():
                    try:
                        os.link(entry, tmp / entry.name)
                    except OSError:
                        shutil.copy2(entry, tmp / entry.name)
        fault_point("before-swap")
        if not dest.exists():
            os.rename(tmp, dest)
        elif not _exchange(tmp, dest):  # no atomic exchange here: two renames, a short window
            old = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
            os.rename(dest, old / "old")
            os.rename(tmp, dest)
            tmp = old
        fault_point("after-swap")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- locks between processes --------------------------------------------------------------------

STALE_EMPTY_LOCK_S = 10.0  # a lock file naming no process this old was left by a killed writer


def lock_owner() -> dict:
    """What a lock file says about the process holding it."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def read_lock(lock: Path) -> dict | None:
    try:
        content = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def lock_holder_gone(content: dict | None, lock: Path) -> bool:
    """Whether the process holding `lock` can no longer be running: its process is gone (same
    host), or the lock names no process and is older than STALE_EMPTY_LOCK_S (killed between
    creating and writing it).  A lock of another host is never taken over."""
    if content is None or not isinstance(content.get("pid"), int):
        try:
            return time.time() - lock.stat().st_mtime > STALE_EMPTY_LOCK_S
        except FileNotFoundError:
            return False
    if content.get("host") != socket.gethostname():
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return _windows_process_gone(content["pid"])
    try:
        os.kill(content["pid"], 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # someone else's live process (or a platform that cannot tell)
    return False


def _windows_process_gone(pid: int) -> bool:
    """Whether no process `pid` runs (Windows: OpenProcess fails with ERROR_INVALID_PARAMETER, or
    the process has an exit code); False whenever that cannot be told."""
    try:
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.GetLastError() == 87  # type: ignore[attr-defined]  # ERROR_INVALID_PARAMETER
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value != 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    except Exception:  # noqa: BLE001 - no ctypes, no kernel32: do not guess
        return False


@contextlib.contextmanager
def process_lock(lock: str | os.PathLike, what: str, timeout_s: float = 30.0, take_over=None) -> Iterator[Path]:
    """Hold the lock file `lock` (O_EXCL works on every platform) while the block runs; a lock
    whose holder is gone (killed) is taken over, a live one is waited for up to `timeout_s`.
    `take_over(lock)` replaces the plain take-over (removing a stale lock) for holders that must
    undo what a killed holder left (the dataset export)."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if take_over is not None:
                take_over(lock)
            elif lock_holder_gone(read_lock(lock), lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
            if not lock.exists():
                continue
            if time.monotonic() > deadline:
                raise input_error(lock, f"another process is {what}; remove this file if none is") from None
            time.sleep(0.1)
    try:
        try:
            os.write(fd, json.dumps(lock_owner()).encode())
        except OSError as exc:
            raise input_error(lock, f"cannot be written ({full_disk_reason(lock.parent) or exc.strerror}); "
                                    "nothing was changed") from None
        finally:
            os.close(fd)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
