"""Method 004 `ms-flair-fcn`: MS plaques in FLAIR MRI (fully convolutional filter).

    method.py   the plug-in: training data, calibration, prediction, evaluation
    network.py  the paper's six-layer filter and the default small U-Net, losses
    data.py     axial model grid, intensity normalisation, training tiles
"""

from ..registry import register
from .data import ModelGrid, TileSet, axial_axis, case_tiles, lesion_tile_centres, normalise
from .method import MSFlairFCN, lesion_boxes
from .network import PaperFCN, UNet2D, build_network

register(MSFlairFCN)

__all__ = ["MSFlairFCN", "ModelGrid", "PaperFCN", "TileSet", "UNet2D", "axial_axis", "build_network", "case_tiles",
           "lesion_boxes", "lesion_tile_centres", "normalise"]
