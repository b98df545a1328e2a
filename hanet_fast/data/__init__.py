"""Data: synthetic urban scenes (the default), Cityscapes (fine, coarse boosting), BDD100K,
Mapillary Vistas, image folders; joint transforms carrying row positions; class-uniform
sampling; data sets by name. See DESIGN §5."""

from hanet_fast.data.coarse import CoarseBoost, coarse_boost
from hanet_fast.data.datasets import (BDD100K, BoostedDataset, Cityscapes, DatasetError, ImageFolder, LabelError,
                                      SegmentationDataset, SyntheticUrbanScenes, read_image, read_label)
from hanet_fast.data.labels import (CITYSCAPES_LABELS, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, LabelSet,
                                    colorize, label_to_train_lut, labels_for)
from hanet_fast.data.mapillary import Mapillary, read_mapillary_labels
from hanet_fast.data.registry import DATASETS, build_dataset, dataset_labels, official_eval_transform
from hanet_fast.data.sampling import NoCentroidsError, TrainSampler, class_centroids, compute_centroids
from hanet_fast.data.synthetic import generate_scene
from hanet_fast.data.transforms import EvalTransform, ResizeHeightCrop, TrainTransform, full_row_pos

__all__ = [
    "BDD100K", "Cityscapes", "DatasetError", "ImageFolder", "SegmentationDataset", "SyntheticUrbanScenes",
    "read_image", "read_label", "CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "colorize",
    "label_to_train_lut", "TrainSampler", "class_centroids", "compute_centroids", "generate_scene",
    "EvalTransform", "TrainTransform", "full_row_pos", "CoarseBoost", "coarse_boost", "BoostedDataset", "LabelError",
    "CITYSCAPES_LABELS", "LabelSet", "labels_for", "Mapillary", "read_mapillary_labels", "DATASETS", "build_dataset",
    "dataset_labels", "official_eval_transform", "NoCentroidsError", "ResizeHeightCrop",
]
