"""Issue 7's promise: what an annotator exports from Slicer is training data.

A synthetic bone-CT, FLAIR and liver prediction go into a real MRML scene, come out through
Export as a dataset, and the matching method makes training samples from it and takes one
optimiser step on them (tiny network configs, as in each method's own tests).
"""

import pytest
import torch

from adapter_support import STUDY_KINDS, mrml  # noqa: F401  (mrml: fixture; skips without slicer-core)
from test_adapter_export import _export, _load

from LesionDetectLib.dataset import load_dataset, validate_dataset
from LesionDetectLib.methods import get_method
from LesionDetectLib.training import merge_config, seed_everything


def tiny_config(method_name: str) -> dict:
    import test_bone_ct_patch
    import test_liver_frcnn

    tiny = {"bone-ct-patch": test_bone_ct_patch.TINY, "liver-frcnn": test_liver_frcnn.TINY,
            "ms-flair-fcn": {"architecture": "paper", "context_slices": 0, "batch_size": 4}}[method_name]
    return merge_config(get_method(method_name).defaults, tiny)


@pytest.mark.parametrize("kind", STUDY_KINDS)
def test_exported_annotations_train_the_method(mrml, tmp_path, kind):
    study, volume, nodes = _load(mrml, kind)
    _export(mrml, tmp_path / "ds", f"{kind}-001", volume, nodes, study)
    assert validate_dataset(tmp_path / "ds") == []
    dataset = load_dataset(tmp_path / "ds")
    method = get_method(study.prediction.provenance.method)
    config = tiny_config(method.name)
    seed_everything(0)
    train_set, _ = method.training_data(dataset, config, seed=0)
    assert len(train_set) > 0
    model = method.build_model(config)
    model.train()
    batch = method.collate([train_set[i] for i in range(min(4, len(train_set)))])
    loss = method.batch_loss(model, batch, torch.device("cpu"))
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
