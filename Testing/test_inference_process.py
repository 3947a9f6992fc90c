"""The module's out-of-process runner (LesionDetectMRML.process) with real child processes:
progress lines while it runs, the exit code and error text at the end, and a cancel that ends
the child and the processes it started; and the method list it reads from the library's source."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LesionDetect"))

from LesionDetectMRML import process  # noqa: E402

CHILD = textwrap.dedent("""
    import subprocess, sys, time
    mode = sys.argv[1]
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"GRANDCHILD {grandchild.pid}", flush=True)
    for i in range(1, 4):
        print(f"PROGRESS {i / 4:.2f} step {i} of 4", flush=True)
        time.sleep(0.02)
    print("an ordinary log line", flush=True)
    if mode == "hang":
        time.sleep(120)
    grandchild.kill()
    if mode == "fail":
        print("lesiondetect: error: input.nrrd: does not exist", file=sys.stderr, flush=True)
        sys.exit(2)
""")


@pytest.fixture
def child_script(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _grandchild_pid(child: process.ChildProcess, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.poll()
        for line in child.output_tail().splitlines():
            if line.startswith("GRANDCHILD "):
                return int(line.split()[1])
        time.sleep(0.02)
    raise AssertionError("the child never reported its grandchild")


def test_parse_progress():
    assert process.parse_progress("PROGRESS 0.25 reading image") == process.Progress(0.25, "reading image")
    assert process.parse_progress("PROGRESS 1.5") == process.Progress(1.0, "")
    assert process.parse_progress("PROGRESS soon") is None
    assert process.parse_progress("progress 0.5 x") is None


def test_blocking_run_reports_progress_in_order_and_succeeds(child_script):
    seen = []
    code, tail = process.run([sys.executable, child_script, "ok"], on_progress=seen.append, timeout=60)
    assert code == 0
    assert [p.fraction for p in seen] == [0.25, 0.5, 0.75]
    assert seen[0].text == "step 1 of 4"
    assert "an ordinary log line" in tail and "PROGRESS" not in tail


def test_failure_keeps_the_exit_code_and_error_line(child_script):
    code, tail = process.run([sys.executable, child_script, "fail"], timeout=60)
    assert code == 2
    assert tail.splitlines()[-1] == "lesiondetect: error: input.nrrd: does not exist"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks processes through /proc")
def test_cancel_kills_the_child_and_its_grandchild(child_script):
    child = process.ChildProcess([sys.executable, child_script, "hang"])
    grandchild = _grandchild_pid(child)
    assert _alive(child.pid) and _alive(grandchild)
    deadline = time.monotonic() + 20
    while child.last_progress is None or child.last_progress.fraction < 0.75:  # polling sees progress live
        assert time.monotonic() < deadline
        child.poll()
        time.sleep(0.02)
    started = time.monotonic()
    child.cancel()
    assert time.monotonic() - started < 10
    assert child.cancelled
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child.pid)
    assert not _alive(grandchild)
    _, code = child.poll()
    while code is None:
        _, code = child.poll()
    assert code != 0


def test_wait_timeout_cancels(child_script):
    child = process.ChildProcess([sys.executable, child_script, "hang"])
    with pytest.raises(TimeoutError):
        child.wait(timeout=0.5)
    assert child.cancelled and child._proc.poll() is not None


def test_infer_command_and_environment():
    args = process.infer_command("/opt/Slicer/bin/PythonSlicer", method="liver-frcnn", input_path="in.nrrd",
                                 out_dir="out", threshold=0.35, device="cpu")
    assert args == ["/opt/Slicer/bin/PythonSlicer", "-m", "LesionDetectLib", "--progress", "lines", "infer",
                    "--method", "liver-frcnn", "--input", "in.nrrd", "--out", "out", "--device", "cpu",
                    "--threshold", "0.35"]
    with pytest.raises(ValueError):
        process.infer_command("python", input_path="a", out_dir="b")
    env = process.library_env("/lib/parent", env={"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == ["/lib/parent", "/x"]



def test_available_methods_reads_both_registration_forms(tmp_path):
    methods = tmp_path / "methods"
    (methods / "alpha").mkdir(parents=True)
    (methods / "alpha" / "method.py").write_text('class Alpha:\n    name = "alpha-ct"\n')
    (methods / "alpha" / "__init__.py").write_text("from .. import register\nfrom .method import Alpha\n\n"
                                                   "register(Alpha)\n")
    (methods / "beta.py").write_text('from . import register\n\n\n@register\nclass Beta:\n    name = "beta-mr"\n')
    (methods / "base.py").write_text('class Unregistered:\n    name = "not-a-method"\n\n\n'
                                     'class Net:\n    def f(self):\n        self.register_buffer("x", 1)\n')
    assert process.available_methods(tmp_path) == ["alpha-ct", "beta-mr"]
