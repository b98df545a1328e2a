"""Class-uniform sampling (paper §4.1) and the resumable training sampler.

Class centroids (official ``datasets/uniform.py``): each label map is cut into square tiles; for
every class present in a tile, the centroid of its pixels in that tile is one entry
``(image index, row, col)`` in the class's list. They are computed once and cached as JSON under
``cache_dir`` (default ``$HANET_FAST_CACHE`` or ``~/.cache/hanet_fast``) keyed by the data set.

:class:`TrainSampler` is a batch sampler over the whole run: global sample ``g`` (counted over
iterations, processes and batch slots) is drawn from the epoch permutation ``g // N`` at
position ``g % N``, or, with probability ``class_uniform_pct``, as a class-uniform sample: a
class chosen uniformly among those with centroids, one of its centroids uniformly, and a crop
containing it. Each item also carries the augmentation seed ``(seed, g)``. Everything is a
function of ``(seed, g)``, so a run resumed at iteration ``k`` draws exactly what the
uninterrupted run draws, with any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from tqdm import tqdm

from hanet_fast.data.labels import NUM_CLASSES

__all__ = ["compute_centroids", "class_centroids", "TrainSampler", "default_cache_dir"]


def default_cache_dir() -> str:
    return os.environ.get("HANET_FAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hanet_fast"))


def _mask_centroids(mask: np.ndarray, tile: int, num_classes: int) -> list[tuple[int, float, float]]:
    out = []
    h, w = mask.shape
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            t = mask[y0:y0 + tile, x0:x0 + tile]
            for c in np.unique(t):
                if c >= num_classes:
                    continue
                ys, xs = np.nonzero(t == c)
                out.append((int(c), float(y0 + ys.mean()), float(x0 + xs.mean())))
    return out


def compute_centroids(dataset, tile: int | None = None, num_classes: int = NUM_CLASSES,
                      progress: bool = False) -> dict[int, list]:
    """``{class: [[index, row, col], ...]}`` over the data set's label maps (tile: H // 2 by default);
    ``progress``: a tqdm bar on stderr (a first run spends seconds to minutes here)."""
    cents: dict[int, list] = {c: [] for c in range(num_classes)}
    for i in tqdm(range(len(dataset)), desc="class statistics", unit="img", disable=not progress,
                  dynamic_ncols=True, mininterval=0.5):
        mask = dataset.load_mask(i)
        t = tile or max(1, mask.shape[0] // 2)
        for c, y, x in _mask_centroids(mask, t, num_classes):
            cents[c].append([i, y, x])
    return cents


def class_centroids(dataset, cache_dir: str | None = None, tile: int | None = None,
                    num_classes: int = NUM_CLASSES, progress: bool = False) -> dict[int, list]:
    """:func:`compute_centroids` (with its ``progress`` bar), cached in
    ``cache_dir/centroids/<hash of the data set key>.json``."""
    key = f"{dataset.cache_key()}:tile={tile}:classes={num_classes}"
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, "centroids", hashlib.sha1(key.encode()).hexdigest()[:20] + ".json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("key") == key:
                return {int(c): v for c, v in data["centroids"].items()}
        except (OSError, ValueError):
            pass
    cents = compute_centroids(dataset, tile, num_classes, progress)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"key": key, "centroids": {str(c): v for c, v in cents.items()}}, f)
    os.replace(tmp, path)
    return cents


class TrainSampler:
    """Batch sampler yielding, for iterations ``start_iter .. total_iters - 1``, this process's
    batch of ``(index, (seed, g), centroid | None)`` items (see the module docstring).

    Args:
        length: data set size N.
        batch_size: per-process batch size.
        total_iters: iterations of the whole run.
        seed: sampling/augmentation seed.
        start_iter: first iteration to yield (resume).
        rank, world_size: this process among ``world_size``; the global batch is
            ``batch_size * world_size`` and rank r takes slots ``r*batch_size .. (r+1)*batch_size - 1``.
        centroids: ``{class: [[index, row, col], ...]}`` or None (no class-uniform sampling).
        class_uniform_pct: probability that a sample is class-uniform (paper / official: 0.5).
    """

    def __init__(self, length: int, batch_size: int, total_iters: int, seed: int = 0, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1, centroids: dict[int, list] | None = None,
                 class_uniform_pct: float = 0.0) -> None:
        if length < 1:
            raise ValueError("hanet_fast.data: TrainSampler needs a non-empty data set")
        self.length, self.batch_size, self.total_iters = length, batch_size, total_iters
        self.seed, self.start_iter, self.rank, self.world_size = seed, start_iter, rank, world_size
        self.class_uniform_pct = class_uniform_pct if centroids else 0.0
        self.centroids = {int(c): v for c, v in (centroids or {}).items() if len(v) > 0}
        self.classes = sorted(self.centroids)
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return max(self.total_iters - self.start_iter, 0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 1, epoch]).permutation(self.length)
            self._perm_epoch = epoch
        return self._perm

    def item(self, g: int):
        """The item of global sample ``g``."""
        if self.class_uniform_pct > 0:
            rng = np.random.default_rng([self.seed, 2, g])
            if rng.random() < self.class_uniform_pct:
                c = self.classes[int(rng.integers(len(self.classes)))]
                idx, y, x = self.centroids[c][int(rng.integers(len(self.centroids[c])))]
                return int(idx), (self.seed, 3, g), (float(y), float(x))
        return int(self._permutation(g // self.length)[g % self.length]), (self.seed, 3, g), None

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        for it in range(self.start_iter, self.total_iters):
            base = it * global_batch + self.rank * self.batch_size
            yield [self.item(base + j) for j in range(self.batch_size)]
