"""Method 003 `liver-frcnn`: liver lesion boxes in CT (Faster R-CNN on 3-slice input).

    method.py      the plug-in: configuration, training data, calibration, prediction
    network.py     Faster R-CNN and the paper's two baseline regressors; running the detector
    data.py        key-slice training samples from a dataset
    slices.py      the input: a key slice and its neighbours, HU-windowed to uint8
    volume.py      per-slice boxes linked into 3-D lesion boxes
    evaluation.py  FROC (DeepLesion rule) and the baselines' accuracy
"""

from ..registry import register
from .data import KeySliceSamples, case_stacks, key_slices, key_slices_from_boxes
from .evaluation import froc_of
from .method import DEFAULTS, LiverFasterRCNN
from .network import detect

register(LiverFasterRCNN)

__all__ = ["DEFAULTS", "KeySliceSamples", "LiverFasterRCNN", "case_stacks", "detect", "froc_of", "key_slices",
           "key_slices_from_boxes"]
