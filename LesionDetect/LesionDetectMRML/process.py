"""Run `lesiondetect infer` (or any command) as a child process: progress, cancel, wait.

The child prints `PROGRESS <fraction> <text>` lines on stdout (LesionDetectLib.progress with
`lesiondetect --progress lines`); a reader thread collects them so the GUI only polls and
never blocks.  The child gets its own process group (a new session on POSIX, a new process
group on Windows), so `cancel()` ends it together with every process it started (e.g. data
loader workers) and nothing keeps running or writing after a cancel.

`ChildRuns` is the one lifecycle around such a child that a detection (logic.DetectionLogic)
and a fine-tune or ranking (learn.LearningLogic) share: one run at a time, progress passed on,
Cancel, and an end step that reads the result, or puts back what the run changed.

Qt-free: the module's widget polls `poll()` from a QTimer; tests and batch use `run()`.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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


@dataclass
class Task:
    """One run of ChildRuns and what happens at its end."""

    kind: str  # "detection", "fine-tune", "rank": for the log and the caller's "what is running"
    child: object
    work_dir: Path  # removed when the run ends, whatever happened
    finish: Callable[[object], object]  # the child succeeded: read (and show) its result
    failed: Callable[[str, int], str]  # (its output tail, exit code) -> the error text
    broken: Callable[[Exception], str]  # reading the result raised -> the error text
    undo: Callable[[], str | None]  # cancelled or failed: put back what it changed; a note for the error
    on_progress: Callable[[float, str], None] | None
    on_finished: Callable[[object, str | None], None] | None
    blocking: bool


class ChildRuns:
    """One child process at a time, started by `runner` (ChildProcess in Slicer, a stand-in in
    the tests).  A blocking run returns its result or raises RuntimeError; otherwise
    `poll_scheduler(poll)` (a QTimer in Slicer) or the caller polls, and on_finished(result,
    error) reports the end.  A cancel or a failure calls the task's `undo` and leaves no work
    folder; `lastRunCancelled` says how the last run ended."""

    def __init__(self, runner, library_parent, poll_scheduler=None) -> None:
        self.runner = runner
        self.library_parent = library_parent
        self.poll_scheduler = poll_scheduler
        self.task: Task | None = None
        self.lastRunCancelled = False
        self._stop_polling = None

    def isRunning(self) -> bool:
        return self.task is not None

    def start(self, args: list[str], work_dir: Path, *, kind: str, finish, blocking: bool = False,
              on_progress=None, on_finished=None, failed=None, broken=None, undo=None):
        try:
            child = self.runner(args, env=library_env(self.library_parent))
        except Exception:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        self.lastRunCancelled = False
        task = self.task = Task(
            kind=kind, child=child, work_dir=Path(work_dir), finish=finish,
            failed=failed or (lambda tail, code: tail or f"The child process stopped with exit code {code}."),
            broken=broken or (lambda exc: str(exc) or type(exc).__name__), undo=undo or (lambda: None),
            on_progress=on_progress, on_finished=on_finished, blocking=blocking)
        if not blocking:
            if self.poll_scheduler is not None:
                self._stop_polling = self.poll_scheduler(self.poll)
            return None
        try:
            code = child.wait(on_progress=lambda p: task.on_progress and task.on_progress(p.fraction, p.text))
        except BaseException:  # e.g. a progress callback raised: nothing may keep running
            child.cancel()
            self._finish(child.wait())
            raise
        result, error = self._finish(code)
        if error is not None:
            raise RuntimeError(error)
        return result

    def poll(self) -> bool:
        """Pass new progress on; finish once the child has ended.  True while it runs."""
        task = self.task
        if task is None:
            return False
        reports, code = task.child.poll()
        for report in reports:
            if task.on_progress and self.task is task:
                task.on_progress(report.fraction, report.text)
        if self.task is not task:  # a progress callback cancelled it
            return False
        if code is None:
            return True
        self._finish(code)
        return False

    def cancel(self) -> None:
        """Stop the running child and every process it started."""
        task = self.task
        if task is None:
            return
        task.child.cancel()
        if not task.blocking:  # a blocking run finishes in start()'s wait()
            self._finish(task.child.wait())

    def _finish(self, code: int):
        task, self.task = self.task, None
        if self._stop_polling is not None:
            self._stop_polling()
            self._stop_polling = None
        child = task.child
        result, error = None, None
        try:
            if child.cancelled:
                self.lastRunCancelled = True
                error = "Cancelled."
            elif code != 0:
                error = task.failed(child.output_tail(), code)
            else:
                result = task.finish(child)
        except Exception as exc:  # a result that cannot be read or shown is reported like a failed run
            logging.exception("LesionDetect: reading the %s result failed", task.kind)
            error = task.broken(exc)
        try:
            if error is not None:
                note = task.undo()
                if note:
                    error = f"{error} {note}"
        finally:
            shutil.rmtree(task.work_dir, ignore_errors=True)
        if task.on_finished:
            task.on_finished(result, error)
        return result, error


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
