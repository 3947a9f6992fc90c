"""A deterministic corpus of bad inputs for `lesiondetect` (see test_fuzz.py).

`corpus()` lists entries; `entry.build(folder)` writes the entry's files under `folder` and
returns the command lines to run.  `expect` says what a correct CLI does with every one of
them: "refuse" (exit status != 0, one `lesiondetect: error:` or `problem:` message) or "any"
(e.g. a bit flip that may leave a valid image: any exit status, but never a traceback).
Everything is made from fixed seeds: the same corpus on every run and machine.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from fuzz_planar import planar_entries
from fuzz_spine import spine_entries

FLAIR_METHOD = "ms-flair-fcn"  # the method with a shipped model: infer runs it without training


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # image, dicom, dataset, card, path, planar, spine
    expect: str  # "refuse" or "any"
    build: Callable[[Path], list[list[str]]]


# --- base images ---------------------------------------------------------------------------------

def flair_array(seed: int = 0, shape=(8, 24, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.float32)
    vol[1:-1, 3:-3, 3:-3] = 100 + rng.normal(0, 3, (shape[0] - 2, shape[1] - 6, shape[2] - 6))
    vol[3:5, 8:12, 8:12] += 80
    return vol


def ct_array(seed: int = 0, shape=(8, 24, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000, np.int16)
    vol[1:-1, 3:-3, 3:-3] = (40 + rng.normal(0, 10, (shape[0] - 2, shape[1] - 6, shape[2] - 6))).astype(np.int16)
    vol[3:5, 8:12, 8:12] = 700
    return vol


def write(arr: np.ndarray, path: Path, compress: bool = False, spacing=(0.9, 0.8, 1.5), **kwargs) -> Path:
    img = sitk.GetImageFromArray(arr, **kwargs)
    img.SetSpacing(spacing[:img.GetDimension()] + (1.0,) * max(0, img.GetDimension() - 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def image_commands(path: Path, folder: Path, check: bool = True) -> list[list[str]]:
    """info --check (the reader's gate) and infer (the method's gate) on one image."""
    cmds = [["info", "--check", str(path)]] if check else []
    return cmds + [["infer", "--method", FLAIR_METHOD, "--input", str(path), "--out", str(folder / "out"),
                    "--device", "cpu"]]


# --- files with damaged bytes ----------------------------------------------------------------------

BASES = {  # name -> (file name, writer)
    "nii": ("v.nii", lambda p: write(flair_array(), p)),
    "niigz": ("v.nii.gz", lambda p: write(flair_array(), p, compress=True)),
    "nrrd": ("v.nrrd", lambda p: write(flair_array(), p)),
    "nrrdgz": ("v.nrrd", lambda p: write(flair_array(), p, compress=True)),
    "mha": ("v.mha", lambda p: write(flair_array(), p)),
    "mhagz": ("v.mha", lambda p: write(flair_array(), p, compress=True)),
}


def _truncated(base: str, fraction: float):
    def build(folder: Path):
        name, writer = BASES[base]
        data = writer(folder / "full" / name).read_bytes()
        path = folder / name
        path.write_bytes(data[:max(1, int(len(data) * fraction))])
        shutil.rmtree(folder / "full")
        return image_commands(path, folder)
    return build


def _bitflip(base: str, k: int):
    def build(folder: Path):
        name, writer = BASES[base]
        path = writer(folder / name)
        data = bytearray(path.read_bytes())
        rng = np.random.default_rng(1000 + k)
        for offset in rng.integers(0, len(data), 1 + k % 3):
            data[int(offset)] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
        return [["info", str(path)]]
    return build


def _nifti_patch(offset: int, fmt: str, value, gz: bool):
    def build(folder: Path):
        path = write(flair_array(), folder / "h.nii")
        data = bytearray(path.read_bytes())
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *value) if isinstance(value, tuple) \
            else struct.pack(fmt, value)
        if offset in range(280, 328):  # sform rows: switch the sform on
            data[254:256] = struct.pack("<h", 1)
        if offset in range(256, 280):
            data[252:254] = struct.pack("<h", 1)
        path.unlink()
        target = folder / ("h.nii.gz" if gz else "h.nii")
        target.write_bytes(gzip.compress(bytes(data), mtime=0) if gz else bytes(data))
        return image_commands(target, folder)
    return build


def _text_header(suffix: str, edit: Callable[[str], str], compress: bool = False):
    def build(folder: Path):
        path = write(flair_array(), folder / f"t{suffix}", compress=compress)
        raw = path.read_bytes()
        sep = raw.index(b"\n\n") + 2 if suffix == ".nrrd" else raw.index(b"ElementDataFile = LOCAL\n") + 24
        header = raw[:sep].decode("latin-1")
        path.write_bytes(edit(header).encode("latin-1") + raw[sep:])
        return image_commands(path, folder)
    return build


def _sub(old: str, new: str) -> Callable[[str], str]:
    import re

    return lambda text: re.sub(old, new, text, count=1, flags=re.M)


def _values(arr_fn: Callable[[], np.ndarray], suffix: str, compress: bool = False, check: bool = True, **kwargs):
    def build(folder: Path):
        return image_commands(write(arr_fn(), folder / f"x{suffix}", compress=compress, **kwargs), folder, check)
    return build


def _with(value, index, seed=0):
    def make():
        arr = flair_array(seed)
        arr[index] = value
        return arr
    return make


# --- DICOM series ------------------------------------------------------------------------------------

def _dicom(damage: str, k: int):
    def build(folder: Path):
        from io_helpers import write_dicom_series

        series = folder / "series"
        write_dicom_series(series, 6, slope=1.0, intercept=0.0, rows=6, cols=8, modality="MR")
        files = sorted(series.iterdir(), key=lambda p: p.name)
        import pydicom

        target = files[k]
        if damage == "missing":
            target.unlink()
        elif damage == "duplicate":
            ds = pydicom.dcmread(target)
            uid = str(ds.SOPInstanceUID)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid[:-1] + ("2" if uid[-1] == "1" else "1")
            ds.save_as(series / "copy.dcm", enforce_file_format=True)
        elif damage == "foreign":
            ds = pydicom.dcmread(target)
            ds.PixelSpacing = [0.35, 0.35]
            ds.save_as(target, enforce_file_format=True)
        elif damage == "noposition":
            ds = pydicom.dcmread(target)
            del ds.ImagePositionPatient
            ds.save_as(target, enforce_file_format=True)
        elif damage == "corrupt":
            data = bytearray(target.read_bytes())
            target.write_bytes(bytes(data[:200]))
        elif damage == "shifted":
            ds = pydicom.dcmread(target)
            ds.ImagePositionPatient = [-10.0, 20.0, float(ds.ImagePositionPatient[2]) + 0.9]
            ds.save_as(target, enforce_file_format=True)
        elif damage == "ct-tag":  # a CT-tagged series given to the FLAIR method
            for f in files:
                ds = pydicom.dcmread(f)
                ds.Modality = "CT"
                ds.save_as(f, enforce_file_format=True)
            return image_commands(series, folder, check=False)
        return [["info", str(series)], *image_commands(series, folder, check=False)]
    return build


# --- datasets, markups ---------------------------------------------------------------------------

def _points_doc(points) -> dict:
    return {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                       "Schema/markups-schema-v1.0.3.json#",
            "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": points}]}


def _roi_doc(**item) -> dict:
    doc = _points_doc([])
    doc["markups"] = [{"type": "ROI", "coordinateSystem": "LPS", "center": [5.0, 5.0, 5.0], "size": [2.0, 2.0, 2.0],
                       "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1], "controlPoints": [], **item}]
    return doc


def _dataset(mutate: Callable[[Path, dict], None]):
    """A valid two-case FLAIR dataset, then `mutate(root, doc)`; validate and train on it."""
    def build(folder: Path):
        root = folder / "ds"
        cases = []
        for n in range(2):
            write(flair_array(n), root / "images" / f"c{n}.nii.gz", compress=True)
            write((flair_array(n) > 150).astype(np.uint8), root / "labels" / f"c{n}.nii.gz", compress=True)
            (root / "points").mkdir(parents=True, exist_ok=True)
            (root / "points" / f"c{n}.mrk.json").write_text(json.dumps(_points_doc(
                [{"position": [5.0, 5.0, 4.0], "positionStatus": "defined"}])))
            cases.append({"id": f"c{n}", "patient": f"p{n}", "image": f"images/c{n}.nii.gz",
                          "mask": f"labels/c{n}.nii.gz", "points": f"points/c{n}.mrk.json"})
        doc = {"name": "fuzz", "modality": "MR", "labels": {"0": "background", "1": "lesion"}, "cases": cases}
        mutate(root, doc)
        if doc is not None and not (root / "dataset.json").exists():
            (root / "dataset.json").write_text(json.dumps(doc))
        return [["validate", str(root)],
                ["train", "--method", FLAIR_METHOD, "--data", str(root), "--out", str(folder / "model"),
                 "--epochs", "1", "--device", "cpu"]]
    return build


def _set_case(key, value, n=0):
    def mutate(root, doc):
        doc["cases"][n][key] = value
    return mutate


def _set_top(key, value):
    def mutate(root, doc):
        doc[key] = value
    return mutate


def _raw_json(text: str):
    def mutate(root, doc):
        (root / "dataset.json").write_text(text)
    return mutate


def _markup_file(doc_or_text, key="points"):
    def mutate(root, doc):
        path = root / key / "bad.mrk.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text))
        doc["cases"][0][key] = f"{key}/bad.mrk.json"
    return mutate


def _image_file(arr_fn, key="image", **kwargs):
    def mutate(root, doc):
        write(arr_fn(), root / "images" / "bad.nrrd", **kwargs)
        doc["cases"][0][key] = "images/bad.nrrd"
    return mutate


# --- model cards --------------------------------------------------------------------------------------

def _card(mutate: Callable[[dict], None], raw: str | None = None):
    def build(folder: Path):
        from LesionDetectLib.models import shipped_model_dir

        model = folder / "model"
        shutil.copytree(shipped_model_dir(FLAIR_METHOD), model)
        card = json.loads((model / "model.json").read_text())
        mutate(card)
        (model / "model.json").write_text(raw if raw is not None else json.dumps(card))
        image = write(flair_array(), folder / "in.nii.gz", compress=True)
        return [["infer", "--model", str(model), "--input", str(image), "--out", str(folder / "out"),
                 "--device", "cpu"]]
    return build


def _config(key, value):
    def mutate(card):
        card["config"][key] = value
    return mutate


def _top(key, value):
    def mutate(card):
        card[key] = value
    return mutate


# --- output paths ----------------------------------------------------------------------------------

def _path(case: str):
    def build(folder: Path):
        image = write(flair_array(), folder / "in.nii.gz", compress=True)
        base = ["infer", "--method", FLAIR_METHOD, "--input", str(image), "--device", "cpu", "--out"]
        if case == "out-is-file":
            (folder / "f").write_text("x")
            return [base + [str(folder / "f")]]
        if case == "out-under-file":
            (folder / "f").write_text("x")
            return [base + [str(folder / "f" / "sub" / "out")]]
        if case == "out-in-input":
            series = folder / "series"
            from io_helpers import write_dicom_series

            write_dicom_series(series, 4, slope=1.0, intercept=0.0, modality="MR")
            return [["infer", "--method", FLAIR_METHOD, "--input", str(series), "--device", "cpu", "--out",
                     str(series / "out")]]
        if case == "missing-input":
            return [["infer", "--method", FLAIR_METHOD, "--input", str(folder / "nope.nii"), "--out",
                     str(folder / "o"), "--device", "cpu"]]
        if case.startswith("threshold"):
            return [base + [str(folder / "o"), "--threshold", case.split("=")[1]]]
        raise ValueError(case)
    return build


# --- the corpus ----------------------------------------------------------------------------------------

def corpus() -> list[Entry]:
    e: list[Entry] = []
    for base in BASES:
        for fraction in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99):
            e.append(Entry(f"truncated-{base}-{fraction}", "image", "refuse", _truncated(base, fraction)))
        for k in range(30):
            e.append(Entry(f"bitflip-{base}-{k}", "image", "any", _bitflip(base, k)))
    for gz in (False, True):
        z = "gz" if gz else "raw"
        for axis in (1, 2, 3):
            for v in (0.0, float("nan"), float("inf"), -float("inf"), 1e-9, 1e9):
                e.append(Entry(f"nifti-{z}-pixdim{axis}-{v}", "image", "refuse", _nifti_patch(76 + 4 * axis, "<f", v, gz)))
        for k in range(12):
            for v in (float("nan"), float("inf")):
                e.append(Entry(f"nifti-{z}-srow{k}-{v}", "image", "refuse", _nifti_patch(280 + 4 * k, "<f", v, gz)))
        for k in range(6):
            e.append(Entry(f"nifti-{z}-quatern{k}-nan", "image", "refuse", _nifti_patch(256 + 4 * k, "<f", float("nan"), gz)))
        for off, v in ((112, float("inf")), (112, float("nan")), (116, float("nan")), (116, -float("inf"))):
            e.append(Entry(f"nifti-{z}-scl{off}-{v}", "image", "refuse", _nifti_patch(off, "<f", v, gz)))
        for v in (0, 1, 347, 349, 540 * 7, -348):
            e.append(Entry(f"nifti-{z}-sizeof_hdr-{v}", "image", "refuse", _nifti_patch(0, "<i", v, gz)))
        for v in (b"n+3\0", b"xyz\0", b"\0\0\0\0", b"n+1x"):
            e.append(Entry(f"nifti-{z}-magic-{v!r}", "image", "refuse", _nifti_patch(344, "4s", v, gz)))
        for dims in ((0, 24, 24, 8, 1, 1, 1, 1), (8, 24, 24, 8, 1, 1, 1, 1), (3, 0, 24, 8, 1, 1, 1, 1),
                     (3, 24, -5, 8, 1, 1, 1, 1), (3, 30000, 30000, 30000, 1, 1, 1, 1), (3, 24, 24, 9000, 1, 1, 1, 1)):
            e.append(Entry(f"nifti-{z}-dim-{dims[:4]}", "image", "refuse", _nifti_patch(40, "<8h", dims, gz)))
        e.append(Entry(f"nifti-{z}-datatype-complex", "image", "refuse", _nifti_patch(70, "<2h", (32, 64), gz)))
    e.append(Entry("nrrd-gz-encoding-lie", "image", "refuse", _text_header(".nrrd", _sub(r"^encoding: .*$",
                                                                                        "encoding: raw"), True)))
    e.append(Entry("nrrd-raw-encoding-lie", "image", "any", _text_header(".nrrd", _sub(r"^encoding: .*$",
                                                                                      "encoding: gzip"), False)))
    for comp in (False, True):
        c = "gz" if comp else "raw"
        for edit_name, edit in (
                ("origin-nan", _sub(r"^space origin: .*$", "space origin: (nan,0,0)")),
                ("origin-inf", _sub(r"^space origin: .*$", "space origin: (0,inf,0)")),
                ("origin-huge", _sub(r"^space origin: .*$", "space origin: (0,0,1e12)")),
                ("dir-zero", _sub(r"^space directions: .*$", "space directions: (0,0,0) (0,0.8,0) (0,0,1.5)")),
                ("dir-nan", _sub(r"^space directions: .*$", "space directions: (nan,0,0) (0,0.8,0) (0,0,1.5)")),
                ("dir-skew", _sub(r"^space directions: .*$", "space directions: (0.9,0.9,0) (0,0.8,0) (0,0,1.5)")),
                ("dir-tiny", _sub(r"^space directions: .*$", "space directions: (1e-9,0,0) (0,0.8,0) (0,0,1.5)")),
                ("sizes-zero", _sub(r"^sizes: .*$", "sizes: 24 0 8")),
                ("sizes-huge", _sub(r"^sizes: .*$", "sizes: 100000 100000 1000")),
                ("sizes-big", _sub(r"^sizes: .*$", "sizes: 2400 2400 800")),
                ("type-bogus", _sub(r"^type: .*$", "type: quaternion")),
                ("dimension-lie", _sub(r"^dimension: .*$", "dimension: 2"))):
            e.append(Entry(f"nrrd-{c}-{edit_name}", "image", "refuse", _text_header(".nrrd", edit, comp)))
        # valid-but-odd: a left-handed grid; Teem reads raw data declared as gzip correctly
        e.append(Entry(f"nrrd-{c}-dir-neg", "image", "any", _text_header(".nrrd", _sub(
            r"^space directions: .*$", "space directions: (-0.9,0,0) (0,0.8,0) (0,0,1.5)"), comp)))
        for edit_name, edit in (
                ("spacing-zero", _sub(r"^ElementSpacing = .*$", "ElementSpacing = 0 0.8 1.5")),
                ("spacing-nan", _sub(r"^ElementSpacing = .*$", "ElementSpacing = nan 0.8 1.5")),
                ("spacing-neg", _sub(r"^ElementSpacing = .*$", "ElementSpacing = 0.9 -0.8 1.5")),
                ("offset-nan", _sub(r"^Offset = .*$", "Offset = 0 nan 0")),
                ("offset-inf", _sub(r"^Offset = .*$", "Offset = inf 0 0")),
                ("matrix-singular", _sub(r"^TransformMatrix = .*$", "TransformMatrix = 1 0 0 1 0 0 0 0 1")),
                ("matrix-nan", _sub(r"^TransformMatrix = .*$", "TransformMatrix = nan 0 0 0 1 0 0 0 1")),
                ("dimsize-zero", _sub(r"^DimSize = .*$", "DimSize = 24 24 0")),
                ("dimsize-huge", _sub(r"^DimSize = .*$", "DimSize = 100000 100000 1000")),
                ("dimsize-big", _sub(r"^DimSize = .*$", "DimSize = 2400 2400 800")),
                ("type-bogus", _sub(r"^ElementType = .*$", "ElementType = MET_NOPE"))):
            e.append(Entry(f"mha-{c}-{edit_name}", "image", "refuse", _text_header(".mha", edit, comp)))
    for suffix in (".nrrd", ".mha", ".nii.gz"):
        for value in (np.nan, np.inf, -np.inf):
            for index in ((0, 0, 0), (4, 12, 12), (7, 23, 23)):
                e.append(Entry(f"voxel-{suffix}-{value}-{index}", "image", "refuse",
                               _values(_with(value, index), suffix)))
            e.append(Entry(f"all-{suffix}-{value}", "image", "refuse",
                           _values(lambda v=value: np.full((8, 24, 24), v, np.float32), suffix)))
        e.append(Entry(f"nan-patch-{suffix}", "image", "refuse",
                       _values(_with(np.nan, (slice(2, 6), slice(5, 15), slice(5, 15))), suffix)))
        for comps in (2, 3, 5):
            e.append(Entry(f"vector{comps}-{suffix}", "image", "refuse",
                           _values(lambda c=comps: np.repeat(flair_array()[..., None], c, -1), suffix, isVector=True)))
        e.append(Entry(f"2d-{suffix}", "image", "refuse", _values(lambda: flair_array()[4], suffix, check=False)))
        e.append(Entry(f"blank-{suffix}", "image", "refuse", _values(lambda: np.full((8, 24, 24), 7, np.float32),
                                                                     suffix, check=False)))
        for seed in range(3):
            e.append(Entry(f"ct-to-flair-{suffix}-{seed}", "image", "refuse",
                           _values(lambda s=seed: ct_array(s), suffix, check=False)))
    for suffix in (".nrrd", ".mha"):
        e.append(Entry(f"complex-{suffix}", "image", "refuse",
                       _values(lambda: flair_array().astype(np.complex64), suffix)))
        e.append(Entry(f"4d-{suffix}", "image", "refuse", _values(lambda: np.stack([flair_array()] * 2), suffix)))
    for damage, ks in (("missing", (1, 2, 4)), ("duplicate", (0, 3)), ("foreign", (2, 5)),
                       ("noposition", (1, 3)), ("corrupt", (2,)), ("shifted", (2, 4)), ("ct-tag", (0,))):
        for k in ks:
            e.append(Entry(f"dicom-{damage}-{k}", "dicom", "refuse", _dicom(damage, k)))
    # datasets and markups: validate and train
    for name, mutate in (
            ("deep-10000", _raw_json('{"a":' + "[" * 10000 + "]" * 10000 + "}")),
            ("deep-100", _raw_json("[" * 100 + "]" * 100)),
            ("not-object", _raw_json("[1, 2]")), ("not-json", _raw_json("{name: fuzz")),
            ("bad-utf8", _raw_json("\udcff".encode("utf-8", "surrogateescape").decode("latin-1"))),
            ("huge-number", _raw_json('{"name": "x", "cases": [], "n": ' + "9" * 5000 + "}")),
            ("modality-CT", _set_top("modality", "CT")), ("modality-bogus", _set_top("modality", "PET")),
            ("cases-dict", _set_top("cases", {"c0": {}})), ("labels-list", _set_top("labels", ["a"])),
            ("image-int", _set_case("image", 5)), ("image-missing", _set_case("image", "images/none.nii.gz")),
            ("mask-list", _set_case("mask", ["x"])), ("split-int", _set_case("split", 3)),
            ("id-duplicate", _set_case("id", "c1")),
            ("mask-other-grid", _image_file(lambda: np.zeros((8, 20, 24), np.uint8), "mask")),
            ("image-nan", _image_file(_with(np.nan, (4, 12, 12)))),
            ("image-all-inf", _image_file(lambda: np.full((8, 24, 24), np.inf, np.float32))),
            ("image-ct", _image_file(lambda: ct_array(1))),
            ("image-2d", _image_file(lambda: flair_array()[4])),
            ("image-rgb", _image_file(lambda: np.repeat(flair_array()[..., None], 3, -1).astype(np.uint8), isVector=True)),
            ("cp-string", _markup_file(_points_doc("abc"))), ("cp-ints", _markup_file(_points_doc([1, 2]))),
            ("cp-dict", _markup_file(_points_doc({"position": [1, 2, 3]}))),
            ("cp-position-text", _markup_file(_points_doc([{"position": ["a", "b", "c"]}]))),
            ("cp-position-2", _markup_file(_points_doc([{"position": [1.0, 2.0]}]))),
            ("cp-position-nan", _markup_file(_points_doc([{"position": [float("nan"), 2.0, 3.0]}]))),
            ("cp-position-null", _markup_file(_points_doc([{"position": None}]))),
            ("markups-not-list", _markup_file({"@schema": _points_doc([])["@schema"], "markups": "x"})),
            ("markups-no-schema", _markup_file({"markups": []})),
            ("markups-deep", _markup_file("[" * 5000 + "]" * 5000)),
            ("roi-negative-size", _markup_file(_roi_doc(size=[2.0, -1.0, 2.0]), "boxes")),
            ("roi-singular", _markup_file(_roi_doc(orientation=[1, 0, 0, 1, 0, 0, 0, 0, 1]), "boxes")),
            ("roi-orientation-text", _markup_file(_roi_doc(orientation="identity"), "boxes")),
            ("roi-center-nan", _markup_file(_roi_doc(center=[float("nan"), 0, 0]), "boxes")),
            ("roi-cp-string", _markup_file(_roi_doc(controlPoints="x"), "boxes")),
            ("roi-in-points", _markup_file(_roi_doc())),
            ("units-cm", _markup_file({**_points_doc([]), "markups": [{"type": "Fiducial", "coordinateUnits": "cm",
                                                                       "controlPoints": []}]}))):
        e.append(Entry(f"dataset-{name}", "dataset", "refuse", _dataset(mutate)))
    # model cards
    for key, values in (("spacing_mm", (0, -1.0, float("nan"), "one", None, True)),
                        ("tile_size", (0, -64, "big", 1e400)), ("inference_batch", (0, -2, "x")),
                        ("unet_base", (0, "16")), ("unet_depth", (-1,)), ("context_slices", (-1, "two")),
                        ("architecture", (7,))):
        for v in values:
            e.append(Entry(f"card-config-{key}-{v}", "card", "refuse", _card(_config(key, v))))
    for key, v in (("method", "bone-ct-patch"), ("method", "no-such-method"), ("method", 5), ("modality", "CT"),
                   ("config", []), ("thresholds", {"pixel": float("nan")}), ("thresholds", {"pixel": "high"}),
                   ("thresholds", {"pixel": 2.0}), ("thresholds", [0.5]), ("class_names", "lesion"),
                   ("weights_file", "../model.safetensors"), ("weights_file", 3), ("weights_sha256", "0" * 64),
                   ("unknown_field", 1)):
        e.append(Entry(f"card-{key}-{v}", "card", "refuse", _card(_top(key, v))))
    e.append(Entry("card-deep", "card", "refuse", _card(lambda c: None, raw="[" * 10000 + "]" * 10000)))
    e.append(Entry("card-not-json", "card", "refuse", _card(lambda c: None, raw="{")))
    e.append(Entry("card-list", "card", "refuse", _card(lambda c: None, raw="[]")))
    for case in ("out-is-file", "out-under-file", "out-in-input", "missing-input", "threshold=nan",
                 "threshold=2", "threshold=-0.1"):
        e.append(Entry(f"path-{case}", "path", "refuse", _path(case)))
    e += planar_entries(Entry)  # bone scans: colour, blank, truncated, volumes, NaN, damaged DICOM NM
    e += spine_entries(Entry)  # spine CT: 2-D, not axial, no bone, vertebra segmentations that do not fit
    return e
