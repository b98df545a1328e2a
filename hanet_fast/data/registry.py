"""Data sets by name: what ``--dataset NAME`` builds, and the classes and validation transform
each one brings.

The training engine calls :func:`build_dataset` for its training and validation splits,
:func:`official_eval_transform` for the validation transform the official trainer used (where it
differs from a plain full-image evaluation), and stores ``dataset.labels.to_dict()`` in its
checkpoints so that ``evaluate`` / ``infer`` / ``analyze`` can name and colour the classes
(:func:`hanet_fast.data.labels.labels_for`); :func:`dataset_labels` gives them without building
the data set.
"""

from __future__ import annotations

from collections.abc import Callable

from hanet_fast.data.datasets import BDD100K, Cityscapes, SegmentationDataset, SyntheticUrbanScenes
from hanet_fast.data.labels import CITYSCAPES_LABELS, LabelSet
from hanet_fast.data.mapillary import MAPILLARY_EVAL_HEIGHT, Mapillary, read_mapillary_labels
from hanet_fast.data.transforms import ResizeHeightCrop

__all__ = ["DATASETS", "build_dataset", "dataset_labels", "official_eval_transform"]

#: ``--dataset`` name -> class. Every class but the synthetic one reads ``root``.
DATASETS: dict[str, type[SegmentationDataset]] = {
    "synthetic": SyntheticUrbanScenes, "cityscapes": Cityscapes, "bdd100k": BDD100K, "mapillary": Mapillary,
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"hanet_fast.data: dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def build_dataset(name: str, split: str, transform: Callable | None = None, *, root: str | None = None,
                  **options) -> SegmentationDataset:
    """The ``split`` of data set ``name`` with ``transform``.

    Args:
        name: a key of :data:`DATASETS`.
        split: the data set's split (``train``, ``val``; Cityscapes also ``trainval``, ``test``,
            ``train_extra`` with ``mode="coarse"``).
        root: the data set's folder (not used by ``synthetic``).
        options: passed to the class (synthetic: ``length``, ``size``, ``seed``; Cityscapes: ``mode``).

    Raises:
        ValueError: an unknown name, or no ``root`` for a data set on disk.
        DatasetError: from the data set (missing folders, files, label tables).
    """
    _check_name(name)
    if name == "synthetic":
        return SyntheticUrbanScenes(split, transform=transform, **options)
    if not root:
        raise ValueError(f"hanet_fast.data: root (--data-root) is required for dataset {name!r}")
    return DATASETS[name](root, split, transform=transform, **options)


def dataset_labels(name: str, root: str | None = None) -> LabelSet:
    """The classes of data set ``name`` (Mapillary's read from ``root/config.json``)."""
    _check_name(name)
    if name == "mapillary":
        if not root:
            raise ValueError("hanet_fast.data: root (--data-root) is required for the Mapillary classes")
        return read_mapillary_labels(root)
    return CITYSCAPES_LABELS


def official_eval_transform(name: str, tensor: bool = True) -> Callable | None:
    """The validation transform the official trainer applies to data set ``name`` where it is not
    the full image: Mapillary's resize to 1536 rows and centre 1536 x 1536 crop (the view behind
    the paper's Mapillary numbers). None for the others (evaluate full images with
    ``EvalTransform``). ``tensor=False`` keeps the sample as uint8 arrays."""
    _check_name(name)
    return ResizeHeightCrop(MAPILLARY_EVAL_HEIGHT, tensor=tensor) if name == "mapillary" else None
