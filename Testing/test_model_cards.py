"""The shipped models (Resources/models/<method>/) and what their cards tell the user.

Parametrised over the model folders present, so a model that lands is tested without a change
here: its card states training data, licence, intended use, metrics and known failure modes;
the sha256 matches its weights; sizes stay within the issue's limits; `infer --method M`
without --model runs it on a small crop of the method's demo study.  Also the one rule for
"trained on synthetic data only", the notice infer prints for such models and `info`'s
card summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from LesionDetectLib.models import (CARD_FILE, ModelCard, card_fact_problems, card_summary, key_metric, read_card,
                                    sha256_of, synthetic_notice, trained_on_synthetic_only)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "Resources" / "models"
SHIPPED = sorted(p.name for p in MODELS.iterdir() if (p / CARD_FILE).is_file()) if MODELS.is_dir() else []
MB = 1024 * 1024
MAX_MODEL_BYTES, MAX_TOTAL_BYTES = 20 * MB, 60 * MB


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_models_are_shipped():
    assert SHIPPED, f"no model folder with {CARD_FILE} under {MODELS}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_states_what_the_user_needs(name):
    model_dir, card = read_card(MODELS / name)
    assert card.method == name, f"{model_dir}: the folder is named {name} but the card is for {card.method}"
    problems = card_fact_problems(card)
    assert not problems, f"{model_dir / CARD_FILE}: " + "; ".join(problems)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_the_card_and_fit_the_size_limit(name):
    model_dir, card = read_card(MODELS / name)
    weights = model_dir / card.weights_file
    assert sha256_of(weights) == card.weights_sha256
    assert _folder_bytes(model_dir) <= MAX_MODEL_BYTES, f"{model_dir} is over 20 MB"


def test_all_shipped_models_together_fit_the_limit():
    assert sum(_folder_bytes(MODELS / name) for name in SHIPPED) <= MAX_TOTAL_BYTES


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_a_registered_method_with_a_demo_study(name):
    from LesionDetectLib.commands.demo import DEMO_STUDIES
    from LesionDetectLib.methods import method_names

    assert name in method_names()
    assert name in DEMO_STUDIES, f"{name} ships a model but `lesiondetect demo --method {name}` has no study"


def _small_input(name: str, folder: Path) -> Path:
    """A small image of the method's kind: its demo study at the small size, 3-D volumes cut to
    their middle 6 slices (inference in seconds)."""
    import SimpleITK as sitk

    from LesionDetectLib import synth
    from LesionDetectLib.commands.demo import DEMO_STUDIES
    from LesionDetectLib.dataset import load_dataset

    kind, params, seed = DEMO_STUDIES[name]
    case = load_dataset(synth.generate(kind, folder / "study", cases=1, seed=seed, size="small",
                                       params=params)).cases[0]
    image = sitk.ReadImage(str(case.image))
    if image.GetDimension() == 3 and image.GetSize()[2] > 6:
        start = image.GetSize()[2] // 2 - 3
        image = image[:, :, start:start + 6]
    out = folder / ("input" + "".join(Path(case.image).suffixes))
    sitk.WriteImage(image, str(out))
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_infer_without_model_runs_the_shipped_model(name, tmp_path, run_cli):
    from LesionDetectLib.prediction import read_prediction

    _, card = read_card(MODELS / name)
    image = _small_input(name, tmp_path)
    code, out, err = run_cli("infer", "--method", name, "--input", image, "--out", tmp_path / "p", "--device", "cpu")
    assert code == 0, err
    pred = read_prediction(tmp_path / "p")
    assert pred.provenance.method == name and pred.provenance.model_id == card.model_id
    assert ("trained on synthetic data only" in err) == trained_on_synthetic_only(card)


# --- the synthetic-only rule and the notice ---------------------------------------------------

def _card(training=None, metrics=None) -> ModelCard:
    return ModelCard(method="bone-ct-patch", modality="CT", config={}, model_id="bone-ct-patch-1-abcdef12",
                     training=training or {}, metrics=metrics or {})


@pytest.mark.parametrize("training, expected", [
    ({"dataset": "synthetic bone-ct (seed 0, full)"}, True),  # what `lesiondetect train` writes for a synth study
    ({"data": "400 synthetic liver-ct studies (LesionDetectLib.synth, seeds 0-3)"}, True),
    ({"data": "generated phantoms"}, True),
    ({"data": "20 synthetic liver-ct studies; no real data (no labelled real liver CT exists in ../shared/data)"},
     True),  # "no real data" names no real data
    ({"dataset": "open_ms_data patients 07+19 (CC-BY) + synthetic ms-flair full seed 0"}, False),
    ({"data": "all 2,194 real BS-80K right-chest anterior crops"}, False),
    ({"data": "synthetic bone-ct studies and the 5 BLDS volumes"}, False),
    ({"data": "real CT", "synthetic_only": True}, True),  # the explicit flag wins
    ({"data": "synthetic studies", "synthetic_only": False}, False),
    ({}, False),  # a card that says nothing is not called synthetic-only
])
def test_trained_on_synthetic_only(training, expected):
    card = _card(training)
    assert trained_on_synthetic_only(card) is expected
    assert (synthetic_notice(card) is not None) is expected


def test_key_metric_prefers_lesion_f1_and_real_data_sets():
    metrics = {"synthetic_held_out": {"what": "100 synthetic studies", "lesion_f1": 0.91, "auc": 0.99},
               "real_blds": {"what": "5 real BLDS volumes", "froc_mean": 0.42}}
    assert key_metric(_card(metrics=metrics)) == ("mean FROC sensitivity", "real_blds", 0.42)
    assert key_metric(_card(metrics={**metrics, "key_metric": "synthetic_held_out.auc"})) == \
        ("AUC", "synthetic_held_out", 0.99)
    assert key_metric(_card(metrics={"auc": 0.8, "accuracy": 0.7})) == ("AUC", "", 0.8)  # flat metrics
    assert key_metric(_card()) is None
    counted = {"demo_study": {"lesions": 5, "found": 5, "f1": 1.0},
               "synthetic_heldout": {"lesions": 40, "found": 30, "f1": 0.71},
               "synthetic_heldout_key_slices": {"what": "DeepLesion rule", "froc_mean": 0.6},
               "real_unlabelled_ct": {"what": "real CT without labels", "boxes": 3}}
    # a set that counted lesions has a lesion-level F1; the demo study comes last; real sets without a number
    # are passed over
    assert key_metric(_card(metrics=counted)) == ("lesion F1", "synthetic_heldout", 0.71)
    nested = {"held_out": {"slice": {"quality": {"accuracy": 0.88}}, "vertebra": {"quality": {"accuracy": 0.9}}}}
    assert key_metric(_card(metrics=nested)) == ("accuracy (slice quality)", "held_out", 0.88)
    assert key_metric(_card(metrics={**nested, "key_metric": "held_out.vertebra.quality.accuracy"})) == \
        ("accuracy (vertebra quality)", "held_out", 0.9)


def test_card_summary_and_fact_problems():
    card = _card({"data": "synthetic bone-ct studies", "licence": "MIT (generated here)",
                  "intended_use": "research; trained on synthetic phantoms", "known_failure_modes": "real CT"},
                 {"synthetic_held_out": {"lesion_f1": 0.8123}})
    lines = card_summary(card)
    assert lines[0] == "bone-ct-patch model, version 1 (bone-ct-patch-1-abcdef12)"
    assert lines[1] == "trained on: synthetic bone-ct studies"
    assert lines[2] == "key metric: lesion F1 0.812 (synthetic held out)"
    assert "synthetic data only" in lines[3] and card.summary() == "\n".join(lines)
    assert card_fact_problems(card) == ["weights_sha256 is missing"]
    assert len(card_fact_problems(_card())) == 6


def _synthetic_copy(name: str, folder: Path) -> Path:
    """A copy of a shipped model whose card says it was trained on synthetic data only."""
    model = folder / "model"
    shutil.copytree(MODELS / name, model)
    doc = json.loads((model / CARD_FILE).read_text())
    doc["training"]["data"] = "synthetic studies only (LesionDetectLib.synth)"
    doc["training"].pop("dataset", None)
    (model / CARD_FILE).write_text(json.dumps(doc))
    return model


@pytest.mark.skipif("bone-scan-cls" not in SHIPPED, reason="uses the shipped bone-scan-cls model (fast)")
def test_infer_prints_the_notice_for_a_synthetic_only_model(tmp_path, run_cli):
    image = _small_input("bone-scan-cls", tmp_path)
    code, out, err = run_cli("infer", "--model", _synthetic_copy("bone-scan-cls", tmp_path), "--input", image,
                             "--out", tmp_path / "p", "--device", "cpu")
    assert code == 0, err
    notices = [line for line in err.splitlines() if "trained on synthetic data only" in line]
    assert len(notices) == 1 and notices[0].startswith("lesiondetect: notice: model bone-scan-cls-1-")
    assert "synthetic" not in out  # stdout keeps the written paths
    # a batch prints it once as well
    (tmp_path / "batch").mkdir()
    shutil.copy(image, tmp_path / "batch" / image.name)
    code, _, err = run_cli("infer", "--model", tmp_path / "model", "--input", tmp_path / "batch",
                           "--out", tmp_path / "b", "--device", "cpu")
    assert code == 0, err
    assert err.count("trained on synthetic data only") == 1


def test_info_summarises_a_model_and_lists_the_shipped_ones(tmp_path, run_cli):
    model = tmp_path / "m"
    model.mkdir()
    (model / CARD_FILE).write_text(json.dumps({"method": "liver-frcnn", "modality": "CT", "config": {},
                                               "model_id": "liver-frcnn-1-x", "training": {"data": "synthetic"},
                                               "metrics": {"synthetic": {"lesion_f1": 0.75}}}))
    code, out, err = run_cli("info", model)
    assert code == 0, err
    assert "liver-frcnn model, version 1 (liver-frcnn-1-x)" in out and "lesion F1 0.750" in out
    code, out, err = run_cli("info", "--json", model / CARD_FILE)
    doc = json.loads(out)
    assert code == 0 and doc["synthetic_only"] is True and doc["key_metric"]["value"] == 0.75
    code, out, err = run_cli("info", "--models", "--json")
    listing = json.loads(out)
    assert code == 0 and {n for n, entry in listing.items() if entry} == set(SHIPPED)
    code, _, err = run_cli("info")
    assert code == 2 and "--models" in err
