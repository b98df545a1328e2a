"""Coarse boosting (official ``--coarse_boost_classes``): class-uniform crops of chosen classes
also drawn from Cityscapes' coarsely annotated ``train_extra`` images.

As the official ``CityScapesUniformWithPos`` (``datasets/cityscapes.py``): the centroids of the
coarse images (``leftImg8bit/train_extra/<city>/*_leftImg8bit.png`` with
``gtCoarse/train_extra/<city>/*_gtCoarse_labelIds.png``, every city, the same tile as the fine
data) are computed for every class, and those of the boosted classes are appended to the fine
centroids of the same classes. The epoch keeps its fine composition (see
:mod:`hanet_fast.data.sampling`): ``N`` = the fine images, ``k = int(N * pct / C)`` crops per
class, ``N - k * C`` random fine images; coarse images appear only as centroid crops of the
boosted classes. After ``max_cu_epoch`` the fine centroids alone are used.

Use::

    boost = coarse_boost(fine_train_set, "14,15,16,3,12,17,4", tile=1024)
    sampler = TrainSampler(boost.dataset.main_length, batch, iters, seed, start, rank, world,
                           boost.centroids, 0.5, max_cu_epoch=10000, fine_centroids=boost.fine_centroids)
    loader = DataLoader(boost.dataset, batch_sampler=sampler)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hanet_fast.data.datasets import BoostedDataset, Cityscapes, DatasetError
from hanet_fast.data.sampling import boost_centroids, class_centroids, parse_class_list

__all__ = ["COARSE_SPLIT", "CoarseBoost", "coarse_boost"]

#: The split of Cityscapes' 20k coarsely annotated images (official ``make_dataset('coarse', 'train')``).
COARSE_SPLIT = "train_extra"


@dataclass
class CoarseBoost:
    """What a coarse-boosted run trains on.

    Attributes:
        dataset: the fine images followed by the coarse ones (``dataset.main_length`` fine).
        centroids: the fine centroids, the boosted classes' extended with the coarse ones
            (coarse image ``j`` is index ``main_length + j``).
        fine_centroids: the fine centroids alone (the epochs after ``max_cu_epoch``).
        classes: the boosted class ids.
    """

    dataset: BoostedDataset
    centroids: dict[int, list]
    fine_centroids: dict[int, list]
    classes: tuple[int, ...]


def coarse_boost(fine: Cityscapes, classes: str | Sequence[int], *, tile: int | None = None,
                 cache_dir: str | None = None, progress: bool = False) -> CoarseBoost:
    """Add the coarse ``train_extra`` images of ``fine.root`` to class-uniform sampling of ``classes``.

    Args:
        fine: the fine Cityscapes training set (its transform is used for the coarse images too).
        classes: train ids, as ``"14,15,16"`` or a sequence.
        tile, cache_dir, progress: as :func:`hanet_fast.data.sampling.class_centroids`.

    Raises:
        ValueError: ``fine`` is not a fine Cityscapes set, or ``classes`` holds no valid ids.
        DatasetError: the coarse data is absent (names the missing folder) or unreadable.
    """
    if not isinstance(fine, Cityscapes) or fine.mode != "fine":
        raise ValueError(f"hanet_fast.data: fine must be a fine-annotated Cityscapes set, got {type(fine).__name__}")
    num_classes = fine.labels.num_classes
    text = classes if isinstance(classes, str) else ",".join(str(c) for c in classes)
    ids = parse_class_list(text, num_classes)
    try:
        coarse = Cityscapes(fine.root, COARSE_SPLIT, mode="coarse", transform=fine.transform)
    except DatasetError as e:
        raise DatasetError(f"{e} (coarse boosting of classes {text} needs Cityscapes' coarse data: "
                           f"leftImg8bit/{COARSE_SPLIT} and gtCoarse/{COARSE_SPLIT})") from None
    fine_centroids = class_centroids(fine, cache_dir, tile, num_classes, progress)
    coarse_centroids = class_centroids(coarse, cache_dir, tile, num_classes, progress)
    boosted = boost_centroids(fine_centroids, coarse_centroids, ids, len(fine))
    return CoarseBoost(BoostedDataset(fine, coarse), boosted, fine_centroids, ids)
