"""Method 001 `bone-scan-cls`: metastasis in planar bone scintigraphy (image classifier).

    method.py   the plug-in: stratified patient splits, class-balanced loss, threshold on the
                validation split, prediction with the class-activation map, evaluation
    network.py  the paper's ResNet50 / VGG19 / DenseNet121 and the compact default; Grad-CAM
    data.py     min-max normalised inputs, augmentations, the in-memory image sets
"""

from ..registry import register
from .method import BoneScanClassifier, cam_peaks
from .network import build

register(BoneScanClassifier)

__all__ = ["BoneScanClassifier", "build", "cam_peaks"]
