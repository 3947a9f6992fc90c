"""JSON Schemas of the files LesionDetect reads and writes (Resources/schemas/), and the code's
checks agreeing with them.

- dataset.schema.json: dataset.json; every dataset `synth` writes validates.
- lesion-points.schema.json / lesion-boxes.schema.json: the markups files we write and read,
  each Slicer's own markups-schema-v1.0.3.json (copied beside them) plus our profile; every
  file the writers, `synth` and `infer` produce validates.
- model-card.schema.json: model.json, with each method's config (generated from the methods'
  defaults by `card_schema()`; run this file as a script to write it again); every shipped
  card validates.

The schemas are documentation and test oracles: jsonschema is a test dependency only, the
library checks the same things in code (dataset._structure_problems, markups' reader,
models.read_card + card_problems).  Both must refuse the same bad documents of the fuzz
corpus, except the documents whose only fault is one a JSON Schema cannot express (NaN, an
orientation that is not a rotation, a window with low >= high): VALUE_ONLY lists them.

Run: `python Testing/test_schemas.py` rewrites model-card.schema.json from the methods.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")

from LesionDetectLib.errors import LesionDetectError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "Resources" / "schemas"
MAX_FLOAT = sys.float_info.max
SYNTH_KINDS = ("bone-ct", "ms-flair", "liver-ct", "bone-scan", "spine-ct")

# corpus entries whose JSON document is valid by its schema but refused by a value check
VALUE_ONLY = {
    "dataset-cp-position-nan",  # NaN is a JSON Schema "number"
    "dataset-roi-singular",  # orthonormal axes
    "dataset-roi-center-nan",
    "card-config-spacing_mm-nan",
    "card-thresholds-{'pixel': nan}",
}


# --- the schemas -----------------------------------------------------------------------------------

def _load(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def validator(name: str):
    """A Draft 7 validator for Resources/schemas/`name`, Slicer's markups schema resolvable by its $id."""
    from referencing import Registry
    from referencing.jsonschema import DRAFT7

    slicer = _load("markups-schema-v1.0.3.json")
    registry = Registry().with_resource(slicer["$id"].rstrip("#"), DRAFT7.create_resource(slicer))
    schema = _load(name)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, registry=registry)


def schema_errors(name: str, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(doc)]


MARKUPS_SCHEMA = {"points": "lesion-points.schema.json", "boxes": "lesion-boxes.schema.json"}


# --- the model card schema, generated from the methods -----------------------------------------------

def _finite(minimum: float = -MAX_FLOAT) -> dict:
    return {"type": "number", "minimum": minimum, "maximum": MAX_FLOAT}


def _config_property(key: str, default):
    """What models._config_problems accepts for one config key, as a schema."""
    from LesionDetectLib.models import _POSITIVE

    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, (int, float)):
        prop = _finite(0 if default >= 0 else -MAX_FLOAT)
        if default > 0 and _POSITIVE.search(key):
            prop["exclusiveMinimum"] = 0
        return prop
    if isinstance(default, str):
        return {"type": ["string", "null"]}
    if isinstance(default, list) and default and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in default):
        prop = {"type": "array", "minItems": 1, "items": _finite()}
        if "window" in key:
            prop["description"] = "[low, high] with low < high (checked by the code)"
        return prop
    if isinstance(default, dict):
        return {"type": "object", "properties": {k: _config_property(k, v) for k, v in default.items()}}
    return {}


def card_schema() -> dict:
    from LesionDetectLib.methods import get_method, method_names
    from LesionDetectLib.training import config_defaults

    names = method_names()
    definitions = {"finiteNumber": _finite()}
    per_method = []
    for name in names:
        method = get_method(name)
        definitions[f"config-{name}"] = {
            "type": "object",
            "description": f"{name}: keys left out take the method's defaults; other keys are ignored",
            "properties": {k: _config_property(k, v) for k, v in config_defaults(method).items()}}
        per_method.append({"if": {"properties": {"method": {"const": name}}, "required": ["method"]},
                           "then": {"properties": {"modality": {"const": method.modality},
                                                   "config": {"$ref": f"#/definitions/config-{name}"}}}})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://lesiondetect.invalid/schemas/model-card.schema.json",
        "title": "LesionDetect model card (model.json)",
        "description": "The card beside a model's weights (LesionDetectLib/models.py ModelCard). Generated from the "
                       "methods' default configs by Testing/test_schemas.py (run it as a script); a test keeps it up "
                       "to date. Beyond the schema, loading a model checks what JSON Schema cannot: numbers are not "
                       "NaN, windows have low < high, the weights' sha256 matches, and the weights fit the network "
                       "the config describes.",
        "type": "object",
        "required": ["method", "modality", "config"],
        "additionalProperties": False,
        "properties": {
            "method": {"enum": names},
            "modality": {"enum": ["CT", "MR", "NM"]},
            "config": {"type": "object"},
            "version": {"type": "string"},
            "model_id": {"type": "string"},
            "class_names": {"type": "array", "items": {"type": "string"}},
            "thresholds": {"type": "object", "description": "decision thresholds chosen on training data",
                           "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
            "training": {"type": "object", "description": "dataset, cases, history, seconds, device, data, licence"},
            "metrics": {"type": "object"},
            "weights_file": {"type": "string", "description": "a file name beside the card",
                             "pattern": "^(?!\\.\\.?$)[^/\\\\]+$"},
            "weights_sha256": {"type": "string", "pattern": "^([0-9a-f]{64})?$"},
            "created": {"type": "string"},
            "lesiondetect_version": {"type": "string"},
        },
        "allOf": per_method,
        "definitions": definitions,
    }


def test_model_card_schema_is_up_to_date():
    """Every rule the committed schema states is the one the code applies today.  Config keys
    or methods added since it was generated are not constrained by it yet (the schema lets
    unknown config keys through, as the code does): a warning lists them, and
    `python Testing/test_schemas.py` adds them."""
    import warnings

    committed, generated = _load("model-card.schema.json"), json.loads(json.dumps(card_schema()))
    methods = committed["properties"]["method"]["enum"]
    missing = sorted(set(generated["properties"]["method"]["enum"]) - set(methods))
    generated["properties"]["method"]["enum"] = [m for m in generated["properties"]["method"]["enum"] if m in methods]
    generated["allOf"] = [rule for rule in generated["allOf"] if rule["if"]["properties"]["method"]["const"] in methods]
    for name in list(generated["definitions"]):
        if name not in committed["definitions"]:
            del generated["definitions"][name]
            continue
        props, known = generated["definitions"][name].get("properties", {}), committed["definitions"][name].get(
            "properties", {})
        missing += [f"{name}.{key}" for key in props if key not in known]
        generated["definitions"][name]["properties"] = {k: v for k, v in props.items() if k in known} \
            if "properties" in generated["definitions"][name] else None
        if generated["definitions"][name]["properties"] is None:
            del generated["definitions"][name]["properties"]
    assert committed == generated, \
        "Resources/schemas/model-card.schema.json states rules the code no longer applies: run " \
        "`python Testing/test_schemas.py` to write it again"
    if missing:
        warnings.warn(f"model-card.schema.json does not yet describe {', '.join(missing)}: run "
                      "`python Testing/test_schemas.py`")


# --- the code's own checks ----------------------------------------------------------------------------

def code_problems(kind: str, path: Path) -> list[str]:
    """What the library says about one JSON file of `kind` (dataset, points, boxes, card), its
    structure and values only (not the files it names, not the weights)."""
    from LesionDetectLib import dataset, markups
    from LesionDetectLib.files import read_json

    try:
        if kind == "dataset":
            return dataset._structure_problems(read_json(path))
        if kind in ("points", "boxes"):
            (markups.read_points if kind == "points" else markups.read_boxes)(path)
            return []
        from LesionDetectLib.methods import get_method, method_names
        from LesionDetectLib.models import card_problems, read_card
        from LesionDetectLib.training import config_defaults

        _, card = read_card(path)
        if card.method not in method_names():
            return [f"unknown method {card.method!r}"]
        method = get_method(card.method)
        if card.modality != method.modality:
            return [f"modality {card.modality} is not the method's {method.modality}"]
        return card_problems(card, config_defaults(method))
    except LesionDetectError as exc:
        return [str(exc)]


SCHEMA_OF = {"dataset": "dataset.schema.json", "card": "model-card.schema.json", **MARKUPS_SCHEMA}


def _parsed(path: Path):
    """The document, or None when read_json refuses it before parsing (size, depth, not JSON)."""
    from LesionDetectLib.files import read_json

    try:
        return read_json(path)
    except LesionDetectError:
        return None


# --- what we write validates ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SYNTH_KINDS)
def test_every_synthetic_dataset_validates(kind, tmp_path):
    from LesionDetectLib.synth import generate

    root = generate(kind, tmp_path / kind, cases=2, seed=3, size="small")
    doc = json.loads((root / "dataset.json").read_text())
    assert schema_errors("dataset.schema.json", doc) == []
    assert code_problems("dataset", root / "dataset.json") == []
    for case in doc["cases"]:
        for key in ("points", "boxes"):
            if case.get(key):
                path = root / case[key]
                assert schema_errors(MARKUPS_SCHEMA[key], json.loads(path.read_text())) == [], path
                assert code_problems(key, path) == []


def _boxes_and_points():
    from LesionDetectLib.findings import LesionBox, LesionPoint

    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    boxes = [LesionBox(center=np.array([1.5, -20.0, 300.25]), size=np.array([4.0, 5.0, 0.0]), axes=np.eye(3),
                       label="lesion", score=0.93),
             LesionBox(center=np.array([0.0, 0.0, 0.0]), size=np.array([1.0, 2.0, 3.0]), axes=q * np.sign(np.linalg.det(q)),
                       label="metastasis", score=0.0, extra={"slice": 4})]
    points = [LesionPoint(position=np.array([-1e4, 2.5, 1e-3]), score=1.0, label="L1"),
              LesionPoint(position=np.array([3.0, 4.0, 5.0]), score=0.25, label="")]
    return boxes, points


def test_every_markups_file_we_write_validates(tmp_path):
    from LesionDetectLib import markups

    boxes, points = _boxes_and_points()
    written = {"points": [markups.write_points(tmp_path / "p.mrk.json", points),
                          markups.write_points(tmp_path / "p0.mrk.json", [])],
               "boxes": [markups.write_boxes(tmp_path / "b.mrk.json", boxes),
                         markups.write_boxes(tmp_path / "b0.mrk.json", [])]}
    for key, paths in written.items():
        for path in paths:
            doc = json.loads(path.read_text())
            assert schema_errors(MARKUPS_SCHEMA[key], doc) == [], path
            assert schema_errors("markups-schema-v1.0.3.json", doc) == [], path  # Slicer's alone too
            assert code_problems(key, path) == []
    # a points file is not a boxes file and the other way round: the schemas say so as the reader does
    assert schema_errors("lesion-points.schema.json", json.loads(written["boxes"][0].read_text()))
    assert schema_errors("lesion-boxes.schema.json", json.loads(written["points"][0].read_text()))


def test_prediction_markups_validate(tmp_path):
    import SimpleITK as sitk

    from LesionDetectLib.geometry import Geometry
    from LesionDetectLib.prediction import Prediction, Provenance, write_prediction

    boxes, points = _boxes_and_points()
    pred = Prediction(geometry=Geometry.of(sitk.Image(8, 8, 4, sitk.sitkFloat32)),
                      provenance=Provenance(method="test"), boxes=boxes, points=points)
    written = write_prediction(pred, tmp_path / "out")
    for key in ("points", "boxes"):
        path = next(Path(p) for k, p in written.items() if key in str(k) or str(p).endswith(f"{key}.mrk.json"))
        assert schema_errors(MARKUPS_SCHEMA[key], json.loads(path.read_text())) == [], path


def test_every_shipped_model_card_validates():
    cards = sorted((ROOT / "Resources" / "models").glob("*/model.json"))
    assert cards, "no shipped model"
    for path in cards:
        assert schema_errors("model-card.schema.json", json.loads(path.read_text())) == [], path
        assert code_problems("card", path) == [], path


def test_a_freshly_saved_card_validates(tmp_path):
    import dataclasses

    from LesionDetectLib.methods import get_method
    from LesionDetectLib.models import ModelCard
    from LesionDetectLib.training import config_defaults

    for name in ("bone-ct-patch", "liver-frcnn", "ms-flair-fcn", "bone-scan-cls"):
        method = get_method(name)
        card = ModelCard(method=name, modality=method.modality, config=config_defaults(method),
                         thresholds={"pixel": 0.5}, weights_sha256="ab" * 32)
        doc = json.loads(json.dumps(dataclasses.asdict(card)))
        assert schema_errors("model-card.schema.json", doc) == [], name


# --- code and schema agree on bad documents ------------------------------------------------------------------

EXTRA_BAD = {  # documents beyond the corpus: (kind, document)
    "dataset-name-number": ("dataset", {"name": 5, "modality": "MR", "labels": {"0": "bg"}, "cases": []}),
    "dataset-label-key-text": ("dataset", {"name": "x", "modality": "MR", "labels": {"one": "lesion"}, "cases": []}),
    "dataset-label-key-underscore": ("dataset", {"name": "x", "modality": "MR", "labels": {"1_0": "a"}, "cases": []}),
    "dataset-label-name-number": ("dataset", {"name": "x", "modality": "MR", "labels": {"1": 1}, "cases": []}),
    "dataset-case-id-empty": ("dataset", {"name": "x", "modality": "MR", "labels": {"1": "a"},
                                          "cases": [{"id": "", "patient": "p", "image": "i.nii"}]}),
    "dataset-case-no-patient": ("dataset", {"name": "x", "modality": "MR", "labels": {"1": "a"},
                                            "cases": [{"id": "c", "image": "i.nii"}]}),
    "dataset-case-list": ("dataset", {"name": "x", "modality": "MR", "labels": {}, "cases": [[1]]}),
    "dataset-no-cases": ("dataset", {"name": "x", "modality": "MR", "labels": {}}),
    "points-units-um": ("points", {"@schema": "markups-schema-v1.0.3.json#",
                                   "markups": [{"type": "Fiducial", "coordinateUnits": "um", "controlPoints": []}]}),
    "points-system-ijk": ("points", {"@schema": "markups-schema-v1.0.3.json#",
                                     "markups": [{"type": "Fiducial", "coordinateSystem": "IJK"}]}),
    "points-bad-schema-url": ("points", {"@schema": "markups-schema-v2.json", "markups": []}),
    "points-cp-null": ("points", {"@schema": "markups-schema-v1.0.3.json#",
                                  "markups": [{"type": "Fiducial", "controlPoints": None}]}),
    "points-cp-empty-string": ("points", {"@schema": "markups-schema-v1.0.3.json#",
                                          "markups": [{"type": "Fiducial", "controlPoints": ""}]}),
    "boxes-no-size": ("boxes", {"@schema": "markups-schema-v1.0.3.json#",
                                "markups": [{"type": "ROI", "center": [0, 0, 0]}]}),
    "boxes-orientation-6": ("boxes", {"@schema": "markups-schema-v1.0.3.json#",
                                      "markups": [{"type": "ROI", "center": [0, 0, 0], "size": [1, 1, 1],
                                                   "orientation": [1, 0, 0, 0, 1, 0]}]}),
}
GOOD = {  # documents both must accept
    "points-undefined-without-position": ("points", {"@schema": "markups-schema-v1.0.3.json#", "markups": [
        {"type": "Fiducial", "controlPoints": [{"positionStatus": "undefined"}, {"position": [1, 2, 3]}]}]}),
    "points-ras-array-units": ("points", {"@schema": "markups-schema-v1.0.3.json#", "markups": [
        {"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": ["mm", "UCUM", "millimeter"], "controlPoints": []}]}),
    "boxes-no-orientation": ("boxes", {"@schema": "markups-schema-v1.0.3.json#", "markups": [
        {"type": "ROI", "center": [0, 0, 0], "size": [0, 1, 2]}]}),
    "dataset-minimal": ("dataset", {"name": "x", "modality": "NM", "labels": {"0": "background"}, "cases": [
        {"id": "a", "patient": "p", "image": "a.png", "mask": None, "split": None, "label": 1, "key_slices": []}]}),
}


def _corpus_documents(tmp_path) -> list[tuple[str, str, Path]]:
    """(entry name, kind, path) of every JSON document the fuzz corpus's dataset and card entries make."""
    from fuzz_corpus import corpus

    docs = []
    for entry in corpus():
        if entry.kind not in ("dataset", "card"):
            continue
        folder = tmp_path / entry.name.replace("/", "_")
        folder.mkdir()
        entry.build(folder)
        if entry.kind == "card":
            docs.append((entry.name, "card", folder / "model" / "model.json"))
            continue
        docs.append((entry.name, "dataset", folder / "ds" / "dataset.json"))
        for key in ("points", "boxes"):
            if (folder / "ds" / key / "bad.mrk.json").exists():
                docs.append((entry.name, key, folder / "ds" / key / "bad.mrk.json"))
    return docs


def _verdicts(name, kind, path):
    doc = _parsed(path)
    if doc is None:  # refused before parsing: deep, huge or not JSON; no schema applies
        assert code_problems(kind, path), f"{name}: read_json refused it but the check did not"
        return None
    return bool(code_problems(kind, path)), bool(schema_errors(SCHEMA_OF[kind], doc))


def test_code_and_schemas_agree_on_the_fuzz_corpus(tmp_path):
    disagree, value_only, refused = [], set(), 0
    for name, kind, path in _corpus_documents(tmp_path):
        verdict = _verdicts(name, kind, path)
        if verdict is None:
            refused += 1
            continue
        code, schema = verdict
        if code and not schema:
            value_only.add(name)
        elif code != schema:
            disagree.append(f"{name} ({kind}): code {'refuses' if code else 'accepts'}, schema "
                            f"{'refuses' if schema else 'accepts'}: {code_problems(kind, path) or schema_errors(SCHEMA_OF[kind], _parsed(path))}")
    assert disagree == []
    assert value_only == VALUE_ONLY
    assert refused >= 5  # the deep / not-JSON documents, refused before parsing


@pytest.mark.parametrize("name", sorted(EXTRA_BAD) + sorted(GOOD))
def test_code_and_schemas_agree_on_more_documents(name, tmp_path):
    kind, doc = EXTRA_BAD.get(name) or GOOD[name]
    path = tmp_path / ("dataset.json" if kind == "dataset" else "model.json" if kind == "card" else "f.mrk.json")
    path.write_text(json.dumps(doc))
    code, schema = _verdicts(name, kind, path)
    expected = name in EXTRA_BAD
    assert (code, schema) == (expected, expected), (code_problems(kind, path), schema_errors(SCHEMA_OF[kind], doc))


if __name__ == "__main__":
    out = SCHEMAS / "model-card.schema.json"
    out.write_text(json.dumps(card_schema(), indent=2) + "\n")
    print(f"wrote {out}")
