"""Data: synthetic urban scenes (the default), Cityscapes, BDD100K, image folders; joint
transforms carrying row positions; class-uniform sampling. See DESIGN §5."""

from hanet_fast.data.datasets import (BDD100K, Cityscapes, DatasetError, ImageFolder, SegmentationDataset,
                                      SyntheticUrbanScenes, read_image, read_label)
from hanet_fast.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize, label_to_train_lut
from hanet_fast.data.sampling import TrainSampler, class_centroids, compute_centroids
from hanet_fast.data.synthetic import generate_scene
from hanet_fast.data.transforms import EvalTransform, TrainTransform, full_row_pos

__all__ = [
    "BDD100K", "Cityscapes", "DatasetError", "ImageFolder", "SegmentationDataset", "SyntheticUrbanScenes",
    "read_image", "read_label", "CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "colorize",
    "label_to_train_lut", "TrainSampler", "class_centroids", "compute_centroids", "generate_scene",
    "EvalTransform", "TrainTransform", "full_row_pos",
]
