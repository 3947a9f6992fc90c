"""Method 000 `bone-ct-patch`: bone lesions in CT with a 15 mm patch classifier.

    method.py      the plug-in: training samples, calibration, prediction, evaluation
    network.py     VGG-16 + three FC layers (PatchNet), HU encodings, ImageNet loading, dense form
    data.py        bone mask from HU, lesion centres, training positions, patch extraction
    parsing.py     dense volume parsing over the bone mask, per-patch reference, candidates
    evaluation.py  patch metrics (the paper's Table 2), runs over seeds
"""

from ..registry import register
from .method import BoneCTPatch

register(BoneCTPatch)

__all__ = ["BoneCTPatch"]
