"""Run `lesiondetect infer` (or any command) as a child process: progress, cancel, wait.

The child prints `PROGRESS <fraction> <text>` lines on stdout (LesionDetectLib.progress with
`lesiondetect --progress lines`); a reader thread collects them so the GUI only polls and
never blocks.  The child gets its own process group (a new session on POSIX, a new process
group on Windows), so `cancel()` ends it together with every process it started (e.g. data
loader workers) and nothing keeps running or writing after a cancel.

Qt-free: the module's widget polls `poll()` from a QTimer; tests and batch use `run()`.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROGRESS_PREFIX = "PROGRESS "
TAIL_LINES = 40


@dataclass
class Progress:
    fraction: float
    text: str


def parse_progress(line: str) -> Progress | None:
    """`PROGRESS 0.42 some text` -> Progress(0.42, "some text"); anything else -> None."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    parts = line[len(PROGRESS_PREFIX):].strip().split(" ", 1)
    try:
        fraction = float(parts[0])
    except ValueError:
        return None
    return Progress(max(0.0, min(1.0, fraction)), parts[1] if len(parts) > 1 else "")


def infer_command(python: str, *, input_path, out_dir, model=None, method=None, threshold=None,
                  device: str = "auto", extra: list[str] | None = None) -> list[str]:
    """The argument list of `lesiondetect --progress lines infer ...` run by `python`."""
    if (model is None) == (method is None):
        raise ValueError("give exactly one of model (a model file or folder) and method (a method name)")
    args = [python, "-m", "LesionDetectLib", "--progress", "lines", "infer",
            *(["--model", str(model)] if model is not None else ["--method", str(method)]),
            "--input", str(input_path), "--out", str(out_dir), "--device", device]
    if threshold is not None:
        args += ["--threshold", repr(float(threshold))]
    return args + list(extra or [])


def library_env(library_parent: str | os.PathLike, extra_paths=(), env: dict | None = None) -> dict:
    """An environment whose PYTHONPATH finds LesionDetectLib (and `extra_paths`) first."""
    env = dict(os.environ if env is None else env)
    paths = [str(library_parent), *map(str, extra_paths)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildProcess:
    """One child process with its own process group, its stdout read on a thread."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | os.PathLike | None = None):
        self.args = [str(a) for a in args]
        self.cancelled = False
        self._lines: queue.Queue[str] = queue.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.last_progress: Progress | None = None
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32"
                 else {"start_new_session": True})
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                      **group)
        self._reader = threading.Thread(target=self._read, name="lesiondetect-child-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._proc.stdout.close()

    def poll(self) -> tuple[list[Progress], int | None]:
        """New progress reports since the last call, and the exit code (None while running)."""
        reports = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            progress = parse_progress(line)
            if progress is None:
                self._tail.append(line)
            else:
                reports.append(progress)
                self.last_progress = progress
        code = self._proc.poll()
        if code is not None and (self._reader.is_alive() or not self._lines.empty()):
            code = None  # output still being read: report the end with the last lines
            self._reader.join(timeout=0.05)
        return reports, code

    def output_tail(self) -> str:
        """The last non-progress lines of output (the error message, when it fails)."""
        return "\n".join(self._tail)

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the child and every process in its group: terminate, then kill after `grace_s`."""
        self.cancelled = True
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.pid)], capture_output=True)
        else:
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_alive(self.pid):
                self._proc.poll()  # reap the child itself so it does not count as alive
                time.sleep(0.05)
            _signal_group(self.pid, signal.SIGKILL)
        self._proc.wait()

    def wait(self, timeout: float | None = None, on_progress=None) -> int:
        """Block until the child ends, passing progress to `on_progress(Progress)`; the exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reports, code = self.poll()
            for p in reports:
                if on_progress is not None:
                    on_progress(p)
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{Path(self.args[0]).name} ran longer than {timeout} s and was stopped")
            time.sleep(0.02)


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run(args: list[str], env: dict | None = None, cwd=None, on_progress=None, timeout: float | None = None
        ) -> tuple[int, str]:
    """Blocking mode (tests, batch): run to the end; (exit code, output tail)."""
    child = ChildProcess(args, env=env, cwd=cwd)
    code = child.wait(timeout=timeout, on_progress=on_progress)
    return code, child.output_tail()


def slicer_python(slicer_home: str | os.PathLike) -> str:
    """Slicer's command-line Python (PythonSlicer, which has Slicer's packages) in the Slicer
    installation at `slicer_home`; else a PythonSlicer on PATH; else this Python."""
    home = Path(slicer_home)
    for name in ("PythonSlicer.exe", "PythonSlicer"):
        for candidate in (home / "bin" / name, home / name):
            if candidate.is_file():
                return str(candidate)
    return shutil.which("PythonSlicer") or sys.executable


def available_methods(library_dir: str | os.PathLike) -> list[str]:
    """Names of the methods registered in LesionDetectLib/methods, read from the source (no
    import: the GUI lists them before torch is installed).  A method is a class that sets
    `name = "..."` and is registered, by `register(TheClass)` or the `@register` decorator."""
    import ast

    method_name: dict[str, str] = {}  # class name -> its `name = "..."`
    registered: set[str] = set()
    for path in sorted(Path(library_dir, "methods").rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                if any(_is_register(d) for d in node.decorator_list):
                    registered.add(node.name)
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "name" for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                        method_name[node.name] = stmt.value.value
            elif isinstance(node, ast.Call) and _is_register(node.func) and node.args:
                if isinstance(node.args[0], ast.Name):
                    registered.add(node.args[0].id)
    return sorted({method_name[c] for c in registered if c in method_name})


def _is_register(node) -> bool:
    """`register` or `<something>.register`."""
    return getattr(node, "id", getattr(node, "attr", None)) == "register"
