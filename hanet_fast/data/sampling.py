"""Class-uniform sampling (paper §4.1) and the resumable training sampler, as the official
``datasets/uniform.py`` and ``build_epoch`` of github.com/shachoi/HANet.

Class centroids: each label map is cut into the full square tiles that fit in it
(``H // tile`` x ``W // tile``; a partial tile at the border is not used); for every class present
in a tile, the centroid of its pixels in that tile, each coordinate truncated to an integer, is
one entry ``[image index, row, col]`` in the class's list. They are computed once and cached as
JSON under ``cache_dir`` (default ``$HANET_FAST_CACHE`` or ``~/.cache/hanet_fast``), keyed by the
data set's identity (every label file's path, size and modification time) and the settings.

Epochs (official ``build_epoch``): of ``N`` images and ``C`` classes, each epoch holds
``k = int(N * pct / C)`` class-uniform samples of every class that has centroids (``k`` of its
centroids in a random order, cycling through them when it has fewer) and ``N - k * C`` other
samples: a random subset of the images without replacement; the epoch is then shuffled (the
official loader's ``shuffle=True``). :class:`TrainSampler` is a batch sampler over the whole run:
global sample ``g`` (counted over iterations, processes and batch slots) is entry ``g % L`` of
epoch ``g // L`` (``L`` the epoch length; with a ``max_cu_epoch`` cut, the epochs after it have
their own length). Each item also carries the augmentation seed
``(seed, 3, g)``. Everything is a function of ``(seed, g)``, so a run resumed at iteration ``k``
draws exactly what the uninterrupted run draws, with any number of workers.

Coarse boosting (official ``--coarse_boost_classes``, ``datasets/cityscapes.py``): the centroids
of the boosted classes in the coarsely annotated images (``leftImg8bit/train_extra`` with
``gtCoarse/train_extra``, same tile) are appended to those classes' fine centroids
(:func:`boost_centroids`); nothing else changes: the epoch still has ``N`` = the number of fine
images, ``k`` class-uniform samples per class (a boosted class's ``k`` now drawn from the fine and
coarse centroids together) and ``N - k * C`` random *fine* images. After epoch ``max_cu_epoch``
(official ``--max_cu_epoch``: epochs ``e > max_cu_epoch``) the epochs use the fine centroids only.

A class-uniform run whose centroid computation finds no centroid at all (a tile larger than the
images, e.g. 1024 on BDD100K's 720-row images) stops with :class:`NoCentroidsError`.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from tqdm import tqdm

from hanet_fast._io import write_json
from hanet_fast.data.datasets import DatasetError
from hanet_fast.data.labels import NUM_CLASSES

__all__ = ["compute_centroids", "class_centroids", "build_epoch", "TrainSampler", "default_cache_dir", "CENTROID_RULE",
           "NoCentroidsError", "boost_centroids", "parse_class_list"]


class NoCentroidsError(DatasetError, ValueError):
    """Class-uniform sampling found no centroid of any class (the message names
    ``--class-uniform-tile`` and the label maps' height)."""


def default_cache_dir() -> str:
    return os.environ.get("HANET_FAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hanet_fast"))


def _mask_centroids(mask: np.ndarray, tile: int, num_classes: int) -> list[tuple[int, int, int]]:
    out = []
    h, w = mask.shape
    for y0 in range(0, (h // tile) * tile, tile):
        for x0 in range(0, (w // tile) * tile, tile):
            t = mask[y0:y0 + tile, x0:x0 + tile]
            for c in np.unique(t):
                if c >= num_classes:
                    continue
                ys, xs = np.nonzero(t == c)
                # truncated centre of mass inside the tile, then the tile offset (official order)
                out.append((int(c), int(ys.mean()) + y0, int(xs.mean()) + x0))
    return out


def compute_centroids(dataset, tile: int | None = None, num_classes: int = NUM_CLASSES,
                      progress: bool = False) -> dict[int, list]:
    """``{class: [[index, row, col], ...]}`` (integers) over the data set's label maps, from the
    full ``tile`` x ``tile`` tiles of each map (tile: H // 2 by default); ``progress``: a tqdm bar
    on stderr (a first run spends seconds to minutes here)."""
    if tile is not None and tile < 1:
        raise ValueError(f"hanet_fast.data: tile must be >= 1 or None, got {tile}")
    cents: dict[int, list] = {c: [] for c in range(num_classes)}
    heights = set()
    for i in tqdm(range(len(dataset)), desc="class statistics", unit="img", disable=not progress,
                  dynamic_ncols=True, mininterval=0.5):
        mask = dataset.load_mask(i)
        heights.add(mask.shape[0])
        t = tile or max(1, mask.shape[0] // 2)
        for c, y, x in _mask_centroids(mask, t, num_classes):
            cents[c].append([i, y, x])
    if heights and not any(cents.values()):
        _raise_no_centroids(tile, sorted(heights), len(dataset))
    return cents


def _raise_no_centroids(tile: int | None, heights: list[int], images: int) -> None:
    rows = f"{heights[0]}" if len(heights) == 1 else f"{heights[0]}-{heights[-1]}"
    setting = f"--class-uniform-tile {tile}" if tile else "--class-uniform-tile 0 (half the image height)"
    if tile and tile > heights[0]:
        why = f"no full {tile} x {tile} tile fits in label maps {rows} rows high; use a tile of at most {heights[0]}"
    else:
        why = f"no class pixel lies in a full tile of the {images} label maps ({rows} rows high)"
    raise NoCentroidsError(f"hanet_fast.data: class-uniform sampling found no class centroid with {setting}: {why}")


#: Version of the centroid rule; part of the cache key so that caches of an older rule are not read.
CENTROID_RULE = "official-tiles-v2"


def class_centroids(dataset, cache_dir: str | None = None, tile: int | None = None,
                    num_classes: int = NUM_CLASSES, progress: bool = False) -> dict[int, list]:
    """:func:`compute_centroids` (with its ``progress`` bar), cached in
    ``cache_dir/centroids/<hash>.json``.

    The key is the data set's :meth:`cache_key` (for files on disk: every label file's path, size
    and modification time) with the tile, the number of classes and :data:`CENTROID_RULE`, so a
    rewritten label file, another data set or other settings never read stale centroids.
    """
    key = f"{CENTROID_RULE}:tile={tile}:classes={num_classes}:{dataset.cache_key()}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, "centroids", digest[:32] + ".json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("key") == digest:
                return {int(c): v for c, v in data["centroids"].items()}
        except (OSError, ValueError):
            pass
    cents = compute_centroids(dataset, tile, num_classes, progress)
    write_json(path, {"key": digest, "centroids": {str(c): v for c, v in cents.items()}})
    return cents


def parse_class_list(text: str, num_classes: int = NUM_CLASSES, what: str = "coarse_boost_classes") -> tuple[int, ...]:
    """``"14,15,16"`` -> ``(14, 15, 16)`` (official ``--coarse_boost_classes`` syntax); ValueError
    naming ``what`` for a value that is not a class id ``0..num_classes-1`` or a repeated one."""
    try:
        classes = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"hanet_fast.data: {what} must be comma-separated class ids, got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or len(set(classes)) != len(classes):
        raise ValueError(f"hanet_fast.data: {what} must be distinct class ids 0..{num_classes - 1}, got {text!r}")
    return classes


def boost_centroids(fine: dict[int, list], extra: dict[int, list], classes, offset: int) -> dict[int, list]:
    """The fine centroids with, for each class of ``classes``, the ``extra`` (coarse) data set's
    centroids appended, their image indices shifted by ``offset`` (the extra images follow the fine
    ones in a :class:`~hanet_fast.data.datasets.BoostedDataset`), as the official loader extends
    the boosted classes' lists."""
    out = {int(c): list(v) for c, v in fine.items()}
    for c in classes:
        out.setdefault(int(c), []).extend([[int(i) + offset, y, x] for i, y, x in extra.get(int(c), [])])
    return out


def build_epoch(length: int, centroids: dict[int, list], class_uniform_pct: float, rng: np.random.Generator,
                num_classes: int = NUM_CLASSES) -> list[tuple[int, tuple[int, int] | None]]:
    """One epoch as the official ``build_epoch`` composes it, then shuffled: ``[(index, centroid or None)]``.

    ``k = int(length * class_uniform_pct / num_classes)`` items of each class that has centroids
    (its centroids shuffled, taken cyclically), and ``length - k * num_classes`` images drawn
    without replacement with no centroid. The length is ``length`` minus ``k`` per class without
    centroids (as the official epoch).
    """
    per_class = int((length * class_uniform_pct) / num_classes)
    items: list[tuple[int, tuple[int, int] | None]] = [
        (int(i), None) for i in rng.permutation(length)[: length - per_class * num_classes]]
    if per_class > 0:
        for c in sorted(centroids):
            cents = centroids[c]
            if not cents:
                continue
            order = rng.permutation(len(cents))
            for j in range(per_class):
                idx, y, x = cents[order[j % len(cents)]]
                items.append((int(idx), (int(y), int(x))))
    return [items[i] for i in rng.permutation(len(items))]


class TrainSampler:
    """Batch sampler yielding, for iterations ``start_iter .. total_iters - 1``, this process's
    batch of ``(index, (seed, 3, g), centroid | None)`` items (see the module docstring).

    Args:
        length: data set size N.
        batch_size: per-process batch size.
        total_iters: iterations of the whole run.
        seed: sampling/augmentation seed.
        start_iter: first iteration to yield (resume).
        rank, world_size: this process among ``world_size``; the global batch is
            ``batch_size * world_size`` and rank r takes slots ``r*batch_size .. (r+1)*batch_size - 1``.
        centroids: ``{class: [[index, row, col], ...]}`` or None (no class-uniform sampling).
        class_uniform_pct: the fraction of each epoch that is class-uniform (official: 0.5).
        num_classes: the number of classes the epoch is divided by (official: the data set's).
        max_cu_epoch, fine_centroids: epochs ``e > max_cu_epoch`` draw their class-uniform samples
            from ``fine_centroids`` instead of ``centroids`` (official ``--max_cu_epoch`` with coarse
            boosting: the boosted centroids before the cut, the fine ones after). None: no cut.
    """

    def __init__(self, length: int, batch_size: int, total_iters: int, seed: int = 0, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1, centroids: dict[int, list] | None = None,
                 class_uniform_pct: float = 0.0, num_classes: int = NUM_CLASSES, max_cu_epoch: int | None = None,
                 fine_centroids: dict[int, list] | None = None) -> None:
        if length < 1:
            raise ValueError("hanet_fast.data: TrainSampler needs a non-empty data set")
        if not 0 <= class_uniform_pct <= 1:
            raise ValueError(f"hanet_fast.data: class_uniform_pct must be in [0, 1], got {class_uniform_pct}")
        if max_cu_epoch is not None and (max_cu_epoch < 0 or fine_centroids is None):
            raise ValueError(f"hanet_fast.data: max_cu_epoch must be >= 0 and come with fine_centroids, got "
                             f"{max_cu_epoch} with fine_centroids {'None' if fine_centroids is None else 'given'}")
        self.length, self.batch_size, self.total_iters = length, batch_size, total_iters
        self.seed, self.start_iter, self.rank, self.world_size = seed, start_iter, rank, world_size
        self.class_uniform_pct = class_uniform_pct if centroids else 0.0
        self.centroids = _non_empty(centroids)
        self.fine_centroids = _non_empty(fine_centroids)
        self.max_cu_epoch = max_cu_epoch
        self.num_classes = num_classes
        self._epoch_index, self._epoch = -1, None
        self.epoch_length = len(self.epoch(0))
        # the epochs after the cut may differ in length (classes with coarse centroids only)
        self.cut_epoch_length = self.epoch_length if max_cu_epoch is None else len(self.epoch(max_cu_epoch + 1))

    def __len__(self) -> int:
        return max(self.total_iters - self.start_iter, 0)

    def epoch(self, e: int) -> list[tuple[int, tuple[int, int] | None]]:
        """Epoch ``e``'s items ``(index, centroid or None)`` in the order they are drawn."""
        if e != self._epoch_index:
            rng = np.random.default_rng([self.seed, 1, e])
            cut = self.max_cu_epoch is not None and e > self.max_cu_epoch
            centroids = self.fine_centroids if cut else self.centroids
            self._epoch = build_epoch(self.length, centroids, self.class_uniform_pct, rng, self.num_classes)
            self._epoch_index = e
        return self._epoch

    def locate(self, g: int) -> tuple[int, int]:
        """``(epoch, position in it)`` of global sample ``g``."""
        if self.max_cu_epoch is None or g < (self.max_cu_epoch + 1) * self.epoch_length:
            return divmod(g, self.epoch_length)
        e, pos = divmod(g - (self.max_cu_epoch + 1) * self.epoch_length, self.cut_epoch_length)
        return self.max_cu_epoch + 1 + e, pos

    def item(self, g: int):
        """The item of global sample ``g``."""
        e, pos = self.locate(g)
        index, centroid = self.epoch(e)[pos]
        return index, (self.seed, 3, g), centroid

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        for it in range(self.start_iter, self.total_iters):
            base = it * global_batch + self.rank * self.batch_size
            yield [self.item(base + j) for j in range(self.batch_size)]


def _non_empty(centroids: dict[int, list] | None) -> dict[int, list]:
    return {int(c): v for c, v in (centroids or {}).items() if len(v) > 0}
