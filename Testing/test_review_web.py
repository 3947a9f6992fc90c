"""`lesiondetect review` (LesionDetect/LesionDetectWeb): the web page's safety rules, its session on
real MRML, and the whole loop in a real headless Chromium.

- Always (standard library only): paths from the page stay inside the dataset root (`..`,
  absolute paths, symlink escapes refused), loopback by default, token for other hosts, the
  command imports no slicer/vtk/trame and fails with one line when they are missing.
- With slicer-core: the session behind the page (open a case, detect through the real child-process
  runner with a stand-in detector, threshold, reject, add a box, export) on a headless scene.
- With trame-slicer (which needs slicer-core 5.11 + slicer-layer-dm, see LesionDetectWeb), Debian's
  chromium and chromium-driver, and selenium: pytest starts the server on a free loopback port
  and drives the page: open a case, detect, move the threshold, reject a finding, paint a stroke,
  add a box, export; then checks the exported files and saves screenshots.
"""

from __future__ import annotations

import json
import os
import tempfile
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "LesionDetect") not in sys.path:
    sys.path.insert(0, str(ROOT / "LesionDetect"))

from LesionDetectWeb import cases as web_cases  # noqa: E402
from LesionDetectWeb.security import (UnsafePath, check_bind, is_loopback, new_token, resolve_inside,  # noqa: E402
                                      token_matches)

# the README's screenshots: refreshed with LESIONDETECT_SCREENSHOTS=1, else written to a temporary
# folder (a plain test run leaves the repository as it was)
SCREENSHOTS = (ROOT / "Resources" / "Screenshots" if os.environ.get("LESIONDETECT_SCREENSHOTS") == "1"
               else Path(tempfile.gettempdir()) / "lesiondetect-review-web-screenshots")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,900")


# --- paths from the page stay inside the dataset ---------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.nrrd").write_text("x")
    (tmp_path / "secret.txt").write_text("outside")
    return root


@pytest.mark.parametrize("good", ["images/a.nrrd", "images/./a.nrrd", "images", "new/file.nrrd", "images\\a.nrrd"])
def test_paths_inside_the_root_resolve(tree, good):
    path = resolve_inside(tree, good)
    assert path == (tree.resolve() / good.replace("\\", "/")).resolve()


@pytest.mark.parametrize("bad", ["../secret.txt", "images/../../secret.txt", "..", "/etc/passwd", "\\\\host\\share\\x",
                                 "C:\\Windows\\win.ini", "C:relative", "~/secret.txt", "", "   ", "images/a\x00.nrrd",
                                 "images/..", "./../secret.txt"])
def test_paths_leaving_the_root_are_refused(tree, bad):
    with pytest.raises(UnsafePath):
        resolve_inside(tree, bad)


@pytest.mark.parametrize("bad", [None, 3, ["images/a.nrrd"], {"path": "x"}])
def test_non_text_paths_are_refused(tree, bad):
    with pytest.raises(UnsafePath):
        resolve_inside(tree, bad)


def test_symlinks_out_of_the_root_are_refused(tree, tmp_path):
    (tree / "escape").symlink_to(tmp_path)  # a folder link leading out
    (tree / "images" / "leak.nrrd").symlink_to(tmp_path / "secret.txt")
    (tree / "images" / "alias.nrrd").symlink_to(tree / "images" / "a.nrrd")  # stays inside: fine
    for bad in ("escape/secret.txt", "images/leak.nrrd", "escape"):
        with pytest.raises(UnsafePath, match="outside"):
            resolve_inside(tree, bad)
    assert resolve_inside(tree, "images/alias.nrrd") == (tree / "images" / "a.nrrd").resolve()


def test_a_root_reached_through_a_symlink_still_works(tree, tmp_path):
    link = tmp_path / "link-to-data"
    link.symlink_to(tree)
    assert resolve_inside(link, "images/a.nrrd") == (tree / "images" / "a.nrrd").resolve()


# --- host and token ------------------------------------------------------------------------------

def test_loopback_by_default_without_token():
    assert check_bind(None) == ("127.0.0.1", None, None)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"):
        assert is_loopback(host)
        assert check_bind(host)[1:] == (None, None)
    assert check_bind(None, "chosen") == ("127.0.0.1", "chosen", None)  # an explicit token is required anyway


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org", "10.0.0.1"])
def test_other_hosts_need_a_token_and_warn(host):
    bind, token, warning = check_bind(host)
    assert bind == host and token and len(token) >= 30 and "WARNING" in warning
    assert check_bind(host)[1] != token  # a new random token each start
    assert check_bind(host, "given")[1] == "given"


def test_token_comparison():
    token = new_token()
    assert token_matches(token, token)
    assert not token_matches(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    for wrong in (None, "", 42, [token], token + " "):
        assert not token_matches(token, wrong)
    assert token_matches(None, None)  # no token required on loopback


# --- the dataset as the page lists it -------------------------------------------------------------

def _dataset(root: Path, cases: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"name": "t", "modality": "CT", "labels": {"0": "bg", "1": "lesion"},
                                                   "cases": cases}))
    return root


def test_case_images_stay_inside_the_dataset(tree, tmp_path):
    _dataset(tree, [{"id": "a", "patient": "p", "image": "images/a.nrrd"},
                    {"id": "out", "patient": "p", "image": str(tmp_path / "secret.txt")},
                    {"id": "up", "patient": "p", "image": "../secret.txt"},
                    {"id": "gone", "patient": "p", "image": "images/missing.nrrd"}])
    assert web_cases.case_image(tree, "a") == (tree / "images" / "a.nrrd").resolve()
    for case_id in ("out", "up"):
        with pytest.raises(UnsafePath):
            web_cases.case_image(tree, case_id)
    with pytest.raises(FileNotFoundError):
        web_cases.case_image(tree, "gone")
    with pytest.raises(KeyError):
        web_cases.case_image(tree, "../a")
    for bad in (None, "", 3, ["a"]):
        with pytest.raises(ValueError):
            web_cases.case_image(tree, bad)


def test_case_rows_and_next_unreviewed(tmp_path):
    root = _dataset(tmp_path / "d", [{"id": "a", "patient": "p", "image": "a.nrrd", "review": {"findings": []}},
                                     {"id": "b", "patient": "p", "image": "b.nrrd"},
                                     {"id": "c", "patient": "p", "image": "c.nrrd"},
                                     {"id": "c_v2", "patient": "p", "image": "c_v2.nrrd", "review": {}},
                                     {"id": "d", "patient": "p", "image": "d.nrrd"}])
    rows = web_cases.read_cases(root)
    assert [(r.id, r.reviewed) for r in rows] == [("a", True), ("b", False), ("c", False), ("c_v2", True), ("d", False)]
    assert web_cases.next_unreviewed(root)[0] == "b"
    assert web_cases.next_unreviewed(root, current="b")[0] == "d"  # c is reviewed as c_v2
    assert web_cases.next_unreviewed(root, current="d")[0] == "b"
    assert web_cases.next_unreviewed(root, shown={"b", "d"})[0] is None
    (root / "ranking.json").write_text(json.dumps({"cases": [{"id": "d", "rank": 1}, {"id": "b", "rank": 2}]}))
    case_id, how = web_cases.next_unreviewed(root)
    assert case_id == "d" and "ranking.json" in how


# --- the command -----------------------------------------------------------------------------------

@pytest.fixture
def cli_importable():
    pytest.importorskip("torch", reason="the lesiondetect command line needs torch (its methods register options)")


def test_the_command_imports_no_slicer_vtk_qt_or_trame(cli_importable):
    code = ("import sys; from LesionDetectLib import cli; cli.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('slicer', 'vtk', 'vtkmodules', 'qt', 'trame', "
            "'trame_slicer', 'LesionDetectWeb')]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_command_refuses_a_folder_without_dataset_json(tmp_path, cli_importable):
    from LesionDetectLib.cli import main

    assert main(["review", "--data", str(tmp_path), "--method", "liver-frcnn"]) == 2


def test_the_web_entry_point_needs_no_torch(tmp_path):
    """`python -m LesionDetectWeb` parses `lesiondetect review`'s options without the method plug-ins."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "LesionDetect")}
    out = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.argv = ['x', '--data', sys.argv[1], "
                          "'--method', 'liver-frcnn']; runpy.run_module('LesionDetectWeb', run_name='__main__'); ",
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "no dataset.json" in out.stderr, out.stderr
    code = ("import sys; sys.argv = ['x', '--help']\ntry:\n    import runpy; runpy.run_module('LesionDetectWeb', "
            "run_name='__main__')\nexcept SystemExit: pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'slicer', 'vtk', 'trame')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip().endswith("[]") and "--data" in out.stdout, out.stdout + out.stderr


def test_a_missing_web_stack_is_one_line_naming_what_to_install(tmp_path, capsys, monkeypatch, cli_importable):
    import LesionDetectWeb
    from LesionDetectLib.cli import main

    line = f"`lesiondetect review` needs trame-slicer, which is not installed: {LesionDetectWeb.INSTALL}"
    monkeypatch.setattr(LesionDetectWeb, "missing_requirement", lambda: line)
    root = _dataset(tmp_path / "d", [])
    assert main(["review", "--data", str(root), "--method", "liver-frcnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0] and "trame-slicer" in err[0]


# --- a tiny dataset and a stand-in detector (a real child process) -------------------------------------

FAKE_DETECTOR = '''#!{python}
"""Stands in for `python -m LesionDetectLib --progress lines infer|rank ...`: infer writes the sample
study's Prediction; rank ranks the unreviewed cases in reverse dataset order."""
import json, sys, time
sys.path.insert(0, {adapter!r})
args = sys.argv
out = args[args.index("--out") + 1]
if "rank" in args:
    doc = json.load(open(args[args.index("--data") + 1] + "/dataset.json"))
    open_ids = [c["id"] for c in doc["cases"] if c.get("review") is None][::-1]
    print("PROGRESS 0.5 ranking", flush=True)
    json.dump({{"model": args[args.index("--model") + 1], "cases": [{{"id": i, "rank": n + 1, "score": 1.0 - n / 10,
              "kind": "entropy"}} for n, i in enumerate(open_ids)]}}, open(out, "w"))
    sys.exit(0)
from LesionDetectMRML.samples import make_study
from LesionDetectLib.prediction import write_prediction
for fraction, text in ((0.2, "reading the image"), (0.6, "model"), (0.9, "writing")):
    print(f"PROGRESS {{fraction}} {{text}}", flush=True)
    time.sleep({delay})
write_prediction(make_study("liver", seed=0).prediction, out)
'''


def make_review_dataset(root: Path, n_cases: int = 2) -> Path:
    """Synthetic liver studies (LesionDetectMRML.samples) as a dataset of unreviewed cases."""
    from LesionDetectLib.io import write_image
    from LesionDetectMRML.samples import make_study

    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n_cases):
        write_image(make_study("liver", seed=0).image, root / "images" / f"case{i}.nrrd")
        entries.append({"id": f"case{i}", "patient": f"p{i}", "image": f"images/case{i}.nrrd"})
    return _dataset(root, entries)


def make_fake_detector(folder: Path, delay: float = 0.2) -> Path:
    script = folder / "fake_detector"
    script.write_text(FAKE_DETECTOR.format(python=sys.executable, adapter=str(ROOT / "LesionDetect"), delay=delay))
    script.chmod(0o755)
    return script


def _exported(root: Path, case_id: str) -> dict:
    doc = json.loads((root / "dataset.json").read_text())
    return next(c for c in doc["cases"] if c["id"] == case_id)


# --- the session behind the page, on a headless scene ------------------------------------------------------

@pytest.fixture
def headless_scene():
    slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed `slicer` package is not slicer-core")
    from LesionDetectMRML import headless

    s = headless.new_scene()
    yield s
    s.close()


def test_session_open_detect_review_box_export(headless_scene, tmp_path):
    from LesionDetectLib.dataset import load_dataset, read_mask
    from LesionDetectLib.files import read_json
    from LesionDetectWeb.session import ReviewSession

    root = make_review_dataset(tmp_path / "data")
    session = ReviewSession(root=root, scene=headless_scene.scene,
                            segmentations_logic=headless_scene.logic("Segmentations"),
                            app_logic=headless_scene.app_logic, method="liver-frcnn",
                            python=str(make_fake_detector(tmp_path, delay=0.0)), reviewer="tester")
    with pytest.raises(KeyError):
        session.open_case("nope")
    with pytest.raises(UnsafePath):
        session.open_path("../data/images/case0.nrrd")
    session.open_case("case0")
    updates = []
    session.start_detect(on_update=lambda d: updates.append((d.fraction, d.text, d.running)), wait=True)
    assert session.detect.error is None and session.detect.done == 1
    assert [u[0] for u in updates][:3] == [0.2, 0.6, 0.9] and updates[-1][2] is False
    result = session.logic.result
    assert result is not None and result.probability is not None

    before = int(np.count_nonzero(_mask(session)))
    session.set_display(threshold=0.2)
    assert int(np.count_nonzero(_mask(session))) > before  # a lower threshold grows the segment (no model run)
    session.set_display(threshold=0.5)

    findings = session.findings()
    assert findings and all(f["state"] == "unreviewed" for f in findings)
    first = session.review("next")
    session.review("reject")
    assert {f["id"]: f["state"] for f in session.findings()}[first.id] == "rejected"
    with pytest.raises(ValueError):
        session.review("explode")

    roi = session.add_box((12.0, 8.0, 6.0), center_ras=first.center_ras)
    assert roi.GetSize() == pytest.approx((12.0, 8.0, 6.0))
    with pytest.raises(ValueError):
        session.add_box((0, 1, 2))
    n_points = result.points.GetNumberOfControlPoints()
    assert session.add_point(center_ras=first.center_ras).GetNumberOfControlPoints() == n_points + 1

    exported = session.export()
    assert exported.case_id == "case0_v2"  # never overwrites: a new version of the case
    entry = _exported(root, "case0_v2")
    assert entry["review"]["reviewer"] == "tester"
    states = {f["id"]: f["state"] for f in entry["review"]["findings"]}
    assert states[first.id] == "rejected"
    boxes = read_json(root / entry["boxes"])
    sizes = [np.round(b.get("size", []), 3).tolist() for b in _box_list(boxes)]
    assert [12.0, 8.0, 6.0] in sizes
    case = next(c for c in load_dataset(root).cases if c.id == "case0_v2")
    assert case.reviewed and read_mask(case.mask).any()
    assert [f["state"] for f in entry["review"]["findings"]].count("added") == 2  # the box and the point


def test_session_next_case_by_the_adapters_ranking(headless_scene, tmp_path):
    """With a method that has a model, Next case ranks through the adapter (a `rank` child process)."""
    from LesionDetectWeb.session import ReviewSession

    root = make_review_dataset(tmp_path / "data", n_cases=3)
    session = ReviewSession(root=root, scene=headless_scene.scene,
                            segmentations_logic=headless_scene.logic("Segmentations"),
                            app_logic=headless_scene.app_logic, method="ms-flair-fcn",
                            python=str(make_fake_detector(tmp_path, delay=0.0)))
    if not session.has_ranking_model():
        pytest.skip("no model is shipped for ms-flair-fcn here")
    assert session.next_case() == ("", "ranking")
    assert session.case_id == "case2" and session.volume is not None  # ranked first (reverse order)
    session.next_case()
    assert session.case_id == "case1"  # the ranking is reused; case2 was shown
    nomodel = ReviewSession(root=root, scene=headless_scene.scene,
                            segmentations_logic=headless_scene.logic("Segmentations"),
                            app_logic=headless_scene.app_logic, method="no-such-method")
    case_id, how = nomodel.next_case()
    assert case_id == "case0" and "order" in how  # no model to rank with: the dataset's order


def test_a_threshold_change_touches_only_the_lesions_block(headless_scene, tmp_path):
    """The re-threshold behind the slider (overlay.set_threshold) reads, stores and labels only the
    block of the map that reaches the threshold: the segment is still exactly probability >= t
    everywhere (also when nothing or everything passes), and the findings read the segment's
    block (convert.segment_mask_block) to the same voxels."""
    from LesionDetectMRML import convert
    from LesionDetectMRML.samples import make_study
    from LesionDetectWeb.session import ReviewSession

    session = ReviewSession(root=make_review_dataset(tmp_path / "data", n_cases=1), scene=headless_scene.scene,
                            segmentations_logic=headless_scene.logic("Segmentations"),
                            app_logic=headless_scene.app_logic, method="liver-frcnn")
    session.open_case("case0")
    prediction = make_study("liver", seed=0).prediction
    session.logic.showPrediction(session.volume, prediction)
    result = session.logic.result
    for threshold in (0.2, 0.9, 0.5, 1.5, 0.0, 0.3):
        session.set_display(threshold=threshold)
        want = prediction.probability >= threshold
        np.testing.assert_array_equal(_mask(session).astype(bool), want)
        block, offset = convert.segment_mask_block(result.segmentation, result.segment_id, result.input_volume,
                                                   session.segmentations_logic)
        got = np.zeros(want.shape, bool)
        got[tuple(slice(o, o + n) for o, n in zip(offset, block.shape))] = block > 0
        np.testing.assert_array_equal(got, want)
        if 0 < want.sum() < want.size:
            assert block.size < want.size  # only the lesions' block
        assert sum(f["kind"] == "component" for f in session.findings()) == ndimage_count(want)

    # the boxes' resize handles: on the box under review and on the user's boxes only
    session._attach_editor()
    def handles():
        return {roi.GetName(): bool(roi.GetDisplayNode().GetHandlesInteractive()) for roi in session.logic.currentBoxes()}

    assert result.boxes and not any(handles().values())
    box = next(f for f in session.findings() if f["kind"] == "box")
    session.select_finding(box["id"])
    assert sum(handles().values()) == 1
    added = session.add_box((5.0, 5.0, 5.0))
    session.review("next")
    assert handles()[added.GetName()]


def ndimage_count(mask) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask)[1])


@pytest.fixture
def editing_session(tmp_path):
    """A session on trame-slicer's SlicerApp (its scene and segment editor, no views), a case open
    and the synthetic liver study's result shown, the editor on its lesion segment."""
    import LesionDetectWeb

    missing = LesionDetectWeb.missing_requirement()
    if missing:
        pytest.skip(missing)
    from trame_slicer.core import SlicerApp

    from LesionDetectMRML.samples import make_study
    from LesionDetectWeb.session import ReviewSession

    app = SlicerApp()
    session = ReviewSession(root=make_review_dataset(tmp_path / "data", n_cases=1), scene=app.scene,
                            segmentations_logic=app.segmentations_logic, app_logic=app.app_logic,
                            segmentation_editor=app.segmentation_editor, method="liver-frcnn")
    session.open_case("case0")
    session.logic.showPrediction(session.volume, make_study("liver", seed=0).prediction)
    session._attach_editor()
    yield session
    app.scene.Clear(0)


def test_session_segment_editor_effects_and_undo(editing_session):
    """trame-slicer's effects on the lesion segment, on real MRML: islands, smoothing, threshold and
    logical operators change the voxels as they should, undo / redo restore them, the review states
    follow (a changed model component reads as edited), a re-threshold clears the undo history."""
    from scipy import ndimage

    from LesionDetectLib.io import read_image
    from LesionDetectWeb.session import EFFECTS

    session = editing_session
    for name in EFFECTS:  # every effect the page offers activates on the lesion segment
        effect = session.set_effect(name, brush_mm=4.0)
        assert type(effect).__name__ == EFFECTS[name]
    with pytest.raises(ValueError):
        session.set_effect("Explode")
    session.set_effect("None")
    assert not session.can_undo()
    with pytest.raises(RuntimeError):
        session.undo()

    original = _mask(session).astype(bool)
    n = ndimage.label(original)[1]  # the findings' components (6-connected)
    islands, n_islands = ndimage.label(original, np.ones((3, 3, 3)))  # Slicer's islands (26-connected)
    assert n_islands >= 2, "the sample needs two lesion islands"
    sizes = ndimage.sum(original, islands, range(1, n_islands + 1))
    largest = islands == 1 + int(np.argmax(sizes))

    session.apply_effect("keep largest island")
    np.testing.assert_array_equal(_mask(session).astype(bool), largest)
    states = [f["state"] for f in session.findings() if f["kind"] == "component"]
    assert states == ["unreviewed"] * ndimage.label(largest)[1], states  # kept as they were; the others gone
    session.undo()
    np.testing.assert_array_equal(_mask(session).astype(bool), original)
    assert len([f for f in session.findings() if f["kind"] == "component"]) == n
    session.redo()
    np.testing.assert_array_equal(_mask(session).astype(bool), largest)
    session.undo()

    session.apply_effect("remove small islands", int(sizes.max()) + 1)  # every island is smaller
    assert not _mask(session).any()
    session.undo()

    session.apply_effect("invert")
    np.testing.assert_array_equal(_mask(session).astype(bool), ~original)
    session.undo()
    session.apply_effect("clear")
    assert not _mask(session).any()
    session.undo()

    session.apply_effect("closing", 6.0)  # closing keeps every voxel and may add some
    closed = _mask(session).astype(bool)
    assert (closed | original).sum() == closed.sum()
    session.undo()
    session.apply_effect("opening", 6.0)  # opening only removes
    opened = _mask(session).astype(bool)
    assert not (opened & ~original).any() and opened.sum() < original.sum()
    states = {f["state"] for f in session.findings() if f["kind"] == "component"}
    assert "edited" in states, states
    kept = next(f["id"] for f in session.findings() if f["kind"] == "component")
    session.select_finding(kept)
    session.review("reject")
    session.undo()  # the voxels as before the opening; the decision made after it stays
    np.testing.assert_array_equal(_mask(session).astype(bool), original)
    assert {f["id"]: f["state"] for f in session.findings()}[kept] == "rejected"

    image = read_image(session.root / "images" / "case0.nrrd")
    import SimpleITK as sitk

    voxels = sitk.GetArrayFromImage(image)
    lo, hi = np.percentile(voxels, [99.0, 100.0])
    session.apply_effect("threshold", lo, hi)  # adds the voxels in [lo, hi]
    np.testing.assert_array_equal(_mask(session).astype(bool), original | ((voxels >= lo) & (voxels <= hi)))
    session.undo()
    np.testing.assert_array_equal(_mask(session).astype(bool), original)
    with pytest.raises(ValueError):
        session.apply_effect("threshold", hi, lo)
    with pytest.raises(ValueError):
        session.apply_effect("explode")

    session.apply_effect("clear")
    assert session.can_undo()
    session.set_display(threshold=0.3)  # the model's mask again: the edits and their history are gone
    assert not session.can_undo() and _mask(session).any()


def _mask(session):
    from LesionDetectMRML import convert

    r = session.logic.result
    return convert.segment_mask(r.segmentation, r.segment_id, r.input_volume, session.segmentations_logic)


def _box_list(doc) -> list[dict]:
    """The boxes of a boxes file, whatever its top-level shape (list or {"boxes": [...]})."""
    if isinstance(doc, dict):
        doc = doc.get("boxes", doc.get("markups", []))
    return [b for b in doc if isinstance(b, dict)]


# --- the whole loop in a real headless browser ---------------------------------------------------------

def _browser_skip_reason() -> str | None:
    import LesionDetectWeb

    missing = LesionDetectWeb.missing_requirement()
    if missing:
        return missing
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium==4.51.0)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def review_server(tmp_path, request):
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(f"browser test: {reason}")
    token = getattr(request, "param", None)
    data = make_review_dataset(tmp_path / "data")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "LesionDetect"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # `lesiondetect review` as `python -m LesionDetectWeb` (the same parser and run(), without torch)
    # ms-flair-fcn: a method with a shipped model, so Next case ranks (the stand-in ranks too)
    command = [sys.executable, "-m", "LesionDetectWeb", "--data", str(data), "--method", "ms-flair-fcn",
               "--port", str(port), "--python", str(make_fake_detector(tmp_path)), "--reviewer", "browser test",
               *(["--token", token] if token else [])]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while time.time() < deadline and "LesionDetect review of" not in (tmp_path / "server.log").read_text():
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(0.2)
    yield url, data, proc, tmp_path / "server.log"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page is still updating
            value = None
        if value:
            return value
        time.sleep(0.2)
    driver.save_screenshot(str(Path(os.environ.get("TMPDIR", "/tmp")) / "review-web-timeout.png"))
    raise AssertionError(f"timed out waiting for {what}; page says: "
                         + driver.execute_script("return document.body.innerText")[:1500])


def _state(driver, name):
    return driver.execute_script(f"return window.trame.state.get({name!r})")


def _shot(driver, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"review-web-{name}.png"))


def _click(driver, element_id):
    """Click a page button the way a user does, after scrolling it into the middle of the panel."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _input(driver, element_id):
    """The <input> of a Vuetify text field (its id lands on the input or on a wrapper)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//*[@id='{element_id}']/descendant-or-self::input")


AXIAL_VIEW = 3  # Quad View, DOM order: coronal, sagittal, 3-D, axial (Red)


def test_review_loop_in_a_real_browser(review_server, browser):
    """Open a case, detect, move the threshold, reject a finding, paint a stroke, add a box, export;
    then the exported files: painted voxels in the mask, the rejected finding absent, the box with its size."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from LesionDetectLib.dataset import load_dataset, read_mask
    from LesionDetectLib.files import read_json
    from LesionDetectMRML.samples import make_study

    url, data, proc, server_log = review_server
    t0 = time.time()
    browser.get(url)
    _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, ".case-row")) == 2, what="the case list")

    # open a case
    browser.find_elements(By.CSS_SELECTOR, ".case-row")[0].click()
    _wait(browser, lambda: _state(browser, "case_id") == "case0", what="case0 to open")

    # detect: progress, then findings
    _click(browser, "detect")
    _wait(browser, lambda: _state(browser, "detecting"), timeout=10, what="the detection to start")
    _wait(browser, lambda: not _state(browser, "detecting") and _state(browser, "findings"), timeout=60,
          what="the detection to finish")
    assert not _state(browser, "error"), _state(browser, "error")
    _shot(browser, "detected")

    # move the threshold: drag the slider's thumb (applied on release), then 10 key steps of 0.01 down
    def lesion_ml():
        return sum(float(f["detail"].split()[0]) for f in _state(browser, "findings")
                   if f["kind"] == "component" and f["detail"].endswith(" ml"))

    ml_before = lesion_ml()
    thumb = browser.find_element(By.XPATH, "//*[@id='threshold']/ancestor-or-self::*[contains(@class, 'v-slider')]"
                                           "//*[@role='slider']")
    ActionChains(browser).click_and_hold(thumb).move_by_offset(-12, 0).pause(0.2).move_by_offset(-12, 0) \
        .release().perform()
    def applied():  # the threshold the server has re-thresholded the segment at, once it equals the slider's
        value = _state(browser, "applied_threshold")
        return value if value is not None and abs(value - _state(browser, "threshold")) < 1e-9 else None

    dragged = _wait(browser, lambda: _state(browser, "threshold") < 0.5 and applied(),
                    what="the dragged threshold applied on release")
    thumb.click()
    for _ in range(10):
        thumb.send_keys(Keys.ARROW_LEFT)
    final = _wait(browser, lambda: _state(browser, "threshold") < dragged - 0.05
                  and abs(_state(browser, "threshold") - _state(browser, "threshold_ui")) < 1e-9 and applied(),
                  what="the threshold after 10 key steps, applied")
    assert not _state(browser, "error"), _state(browser, "error")
    assert lesion_ml() > ml_before, "a lower threshold did not grow the lesion segment"

    # reject one finding: the best-scoring component, chosen in the findings table
    row = _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, ".finding-row[data-id='component-1']"),
                what="component-1 in the table")
    row.click()
    _wait(browser, lambda: next(f for f in _state(browser, "findings") if f["id"] == "component-1")["current"],
          what="component-1 selected")
    _click(browser, "reject")
    _wait(browser, lambda: next(f for f in _state(browser, "findings") if f["id"] == "component-1")["state"]
          == "rejected", what="component-1 rejected")

    # paint a stroke in the axial view with trame-slicer's Paint effect
    brush = _input(browser, "brush-mm")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", brush)
    brush.send_keys(Keys.CONTROL, "a")
    brush.send_keys("4")
    _click(browser, "effect-paint")
    _wait(browser, lambda: _state(browser, "effect") == "Paint", what="the Paint effect")
    view = browser.find_elements(By.CSS_SELECTOR, ".remote-controlled-area")[AXIAL_VIEW]
    w, h = view.size["width"], view.size["height"]
    # a stroke across the upper right of the organ, away from the lesions
    actions = ActionChains(browser)
    actions.move_to_element_with_offset(view, int(w * 0.12), int(-h * 0.22)).click_and_hold()
    for step in range(1, 9):
        actions.move_by_offset(6, 0).pause(0.05)
    actions.release().perform()
    time.sleep(1.0)
    _click(browser, "effect-none")
    _wait(browser, lambda: _state(browser, "effect") == "None", what="no effect")
    _shot(browser, "painted")

    # undo the stroke and redo it (trame-slicer's undo history, on the page)
    def components():
        return sum(1 for f in _state(browser, "findings") if f["kind"] == "component")

    stroked = _wait(browser, lambda: _state(browser, "can_undo") and components(), what="Undo enabled")
    _click(browser, "undo")
    _wait(browser, lambda: _state(browser, "can_redo") and components() < stroked, what="the stroke undone")
    _click(browser, "redo")
    _wait(browser, lambda: components() == stroked and not _state(browser, "can_redo"), what="the stroke redone")

    # add a box of a given physical size at the axial view's centre
    for axis, value in zip("xyz", ("14", "9", "6")):
        field = _input(browser, f"box-{axis}")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value)
    _wait(browser, lambda: [float(_state(browser, f"box_{a}")) for a in "xyz"] == [14.0, 9.0, 6.0], what="box size")
    _click(browser, "add-box")
    _wait(browser, lambda: "Box added: 14 x 9 x 6 mm" in _state(browser, "message"), what="the box")

    # draw a box with two clicks in the axial view (trame-slicer's markups placement)
    _click(browser, "draw-box")
    _wait(browser, lambda: "Click two corners" in _state(browser, "message"), what="place mode")
    ActionChains(browser).move_to_element_with_offset(view, int(-w * 0.25), int(h * 0.25)).click().pause(0.5) \
        .move_by_offset(30, 20).click().perform()
    time.sleep(1.0)
    _click(browser, "next")  # any request refreshes the findings table
    _wait(browser, lambda: sum(1 for f in _state(browser, "findings") if f["kind"] == "box" and f["state"] == "added")
          == 2, what="the drawn box in the findings")

    # export
    _click(browser, "export")
    exported = _wait(browser, lambda: _state(browser, "exported"), timeout=60, what="the export")
    assert not _state(browser, "error"), _state(browser, "error")
    _shot(browser, "exported")
    elapsed = time.time() - t0

    # malformed requests get an error on the page and the server keeps running
    triggers = _state(browser, "triggers")
    for name, args in (("open_case", [{"../../etc": 1}]), ("open_case", ["../../../etc/passwd"]),
                       ("review", ["explode"]), ("select_finding", [None]), ("set_effect", [[1, 2]])):
        before = _state(browser, "requests")
        browser.execute_script("window.trame.trigger(arguments[0], arguments[1])", triggers[name], args)
        _wait(browser, lambda before=before: _state(browser, "requests") > before,
              what=f"the answer to a malformed {name}")
        assert _state(browser, "error"), f"no error shown for a malformed {name}"
        assert proc.poll() is None
    _click(browser, "next")  # and the page still works
    _wait(browser, lambda: _state(browser, "requests") and not _state(browser, "error"), what="a good request")
    assert proc.poll() is None

    # next case: ranked by the adapter in a child process; case0 is reviewed (as case0_v2)
    _click(browser, "next-case")
    _wait(browser, lambda: _state(browser, "case_id") == "case1" and not _state(browser, "detecting"),
          what="the ranked next case")
    assert "rank 1" in _state(browser, "message"), _state(browser, "message")
    assert [c["status"] for c in _state(browser, "cases")] == ["unreviewed", "unreviewed", "reviewed"]

    # --- the exported files ---
    assert exported == "case0_v2"
    case = next(c for c in load_dataset(data).cases if c.id == exported)
    entry = _exported(data, exported)
    assert entry["review"]["reviewer"] == "browser test"
    study = make_study("liver", seed=0)
    threshold = entry["provenance"]["threshold"]
    assert threshold == pytest.approx(final)
    model_mask = study.prediction.thresholded(threshold).astype(bool)
    mask = read_mask(case.mask).astype(bool)
    painted = mask & ~model_mask
    assert painted.sum() > 0, "no painted voxel in the exported mask"
    states = {f["id"]: f for f in entry["review"]["findings"]}
    rejected = states["component-1"]
    assert rejected["state"] == "rejected"
    ijk = np.round(study.prediction.geometry.lps_to_index(np.asarray(rejected["position_lps"]))).astype(int)
    assert model_mask[ijk[2], ijk[1], ijk[0]], "the rejected finding's centre is not in the model's mask"
    assert not mask[ijk[2], ijk[1], ijk[0]], "the rejected component was exported"
    sizes = [np.round(b.get("size", []), 3).tolist() for b in _box_list(read_json(data / entry["boxes"]))]
    assert [14.0, 9.0, 6.0] in sizes, sizes
    assert elapsed < 120, f"the browser loop took {elapsed:.0f} s"



@pytest.mark.parametrize("review_server", ["s3cret-token-for-the-test"], indirect=True)
def test_a_token_guards_every_request(review_server, browser):
    import urllib.error
    import urllib.request

    from selenium.webdriver.common.by import By

    url, _, proc, server_log = review_server
    assert "?token=s3cret-token-for-the-test" in server_log.read_text()  # printed at start
    for bad in (url, url + "index.html", url + "?token=wrong", url + "ws"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=10)
        assert refused.value.code == 403
    with urllib.request.urlopen(url + "?token=s3cret-token-for-the-test", timeout=10) as answer:
        assert answer.status == 200 and "lesiondetect_token" in answer.headers.get("Set-Cookie", "")
    browser.get(url + "?token=s3cret-token-for-the-test")  # the cookie then carries it to the websocket
    _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, ".case-row")) == 2, what="the case list")
    assert proc.poll() is None
