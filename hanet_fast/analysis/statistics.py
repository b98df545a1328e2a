"""Height- and width-wise class statistics of a label set (paper §1, Table 1, Fig. 1 and 10).

:class:`ClassDistribution` accumulates, one label map at a time, the pixel count of every class
in every row and every column (so a whole data set is never held in memory) and derives from
them:

- per region (the entire image and its upper, middle and lower thirds) the probability
  ``p_i`` that a labelled pixel belongs to class ``i`` (pixel counts pooled over the data set,
  ignore pixels excluded) and the entropy of Eq. (1), ``H = -sum_i p_i ln p_i``;
- the height-wise and width-wise class distributions on a grid of relative positions.

How the paper's numbers are defined (and reproduced here):

- Each entropy in Table 1 is Eq. (1) applied to that region's pooled class distribution, not an
  average of per-pixel-position entropies: with the table's own image probabilities (36.9,
  22.8, 15.9, 7.0, 6.1 % for the top five, 11.3 % left for 14 classes) Eq. (1) lies between
  1.60 and 1.90 nats, and the table says 1.84.
- Units are nats (natural log): in bits the top five classes alone already give 1.95 > 1.84.
- The "avg" 1.26 is the plain mean of the three region entropies, (1.24 + 2.04 + 0.51) / 3.
  With equal thirds of same-sized images it equals ``H(X | region)`` weighted by pixels up to
  the regions' differing ignore fractions; :attr:`Table1.region_conditional_entropy` gives that
  pixel-weighted value too.
- A row belongs to third ``min(2, 3 * row // H)`` of an ``H``-row image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hanet_fast.data.labels import CLASS_NAMES, NUM_CLASSES

__all__ = ["REGIONS", "PAPER_CLASSES", "PAPER_TABLE1", "PAPER_MEAN_REGION_ENTROPY", "ClassDistribution", "Table1",
           "entropy", "region_of_rows", "format_table1"]

#: Table 1's rows: the entire image and its three horizontal thirds.
REGIONS = ("image", "upper", "middle", "lower")

#: The classes of Table 1's columns (the Cityscapes top five), by trainId.
PAPER_CLASSES = (0, 2, 8, 13, 1)  # road, building, vegetation, car, sidewalk

#: Table 1 of the paper (Cityscapes train, %; entropies in nats), for side-by-side printing.
PAPER_TABLE1 = {
    "image": ((36.9, 22.8, 15.9, 7.0, 6.1), 1.84),
    "upper": ((0.006, 47.8, 35.4, 0.6, 0.009), 1.24),
    "middle": ((31.4, 16.6, 9.4, 17.4, 10.7), 2.04),
    "lower": ((87.9, 0.1, 0.3, 2.2, 7.9), 0.51),
}
PAPER_MEAN_REGION_ENTROPY = 1.26


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Eq. (1) in nats, ``-sum p ln p`` along ``axis`` (``0 ln 0 = 0``)."""
    p = np.asarray(p, dtype=np.float64)
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=axis)


def region_of_rows(height: int) -> np.ndarray:
    """``[height]`` int: 0, 1, 2 for the rows of the upper, middle and lower third."""
    return np.minimum(3 * np.arange(height) // height, 2)


def _bin_of(n: int, bins: int) -> np.ndarray:
    """Relative-position bin of each of ``n`` rows (or columns): ``i * bins // n``."""
    return np.arange(n) * bins // n


@dataclass
class Table1:
    """The numbers of paper Table 1 for one data set.

    Attributes:
        probabilities: ``{region: [num_classes]}`` class probabilities (fractions, not %).
        entropies: ``{region: H}`` Eq. (1) in nats.
        mean_region_entropy: the plain mean of the upper, middle and lower entropies (the
            paper's "avg").
        region_conditional_entropy: ``H(X | region)``, the three entropies weighted by their
            labelled pixel counts.
        top5: ``{region: [(trainId, probability), ...]}`` the five most frequent classes.
        labelled_pixels: ``{region: count}`` of pixels with a valid class.
    """

    probabilities: dict[str, np.ndarray]
    entropies: dict[str, float]
    mean_region_entropy: float
    region_conditional_entropy: float
    top5: dict[str, list[tuple[int, float]]]
    labelled_pixels: dict[str, int]


@dataclass
class ClassDistribution:
    """Class pixel counts per row, column and region, accumulated over label maps.

    Label maps may differ in size: rows and columns are pooled into ``bins`` bins of relative
    position (``i * bins // H``), while the thirds of Table 1 are taken at each map's own
    resolution. Values outside ``0 .. num_classes - 1`` (255 and anything else) are ignore
    pixels: counted apart, never in a probability.

    Args:
        num_classes: number of classes (trainIds ``0 .. num_classes - 1``).
        bins: height and width bins of the position-wise distributions (Fig. 1, 10).

    Attributes:
        images: label maps added.
        row_counts, col_counts: ``[bins, num_classes + 1]`` pixel counts per height / width
            bin and class; the last column counts ignore pixels.
        region_counts: ``[3, num_classes + 1]`` the same per upper, middle and lower third.
    """

    num_classes: int = NUM_CLASSES
    bins: int = 64
    images: int = 0
    row_counts: np.ndarray | None = None  # [bins, num_classes + 1]; last column: ignore
    col_counts: np.ndarray | None = None  # [bins, num_classes + 1]
    region_counts: np.ndarray | None = None  # [3, num_classes + 1]

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"ClassDistribution: num_classes must be >= 1, got {self.num_classes}")
        if self.bins < 1:
            raise ValueError(f"ClassDistribution: bins must be >= 1, got {self.bins}")
        k = self.num_classes + 1
        if self.row_counts is None:
            self.row_counts = np.zeros((self.bins, k), dtype=np.int64)
        if self.col_counts is None:
            self.col_counts = np.zeros((self.bins, k), dtype=np.int64)
        if self.region_counts is None:
            self.region_counts = np.zeros((3, k), dtype=np.int64)

    # ------------------------------------------------------------------ accumulation
    def add(self, mask: np.ndarray) -> None:
        """Count one ``[H, W]`` label map of trainIds."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"ClassDistribution.add: expected a non-empty [H, W] label map, got shape {mask.shape}")
        h, w = mask.shape
        k = self.num_classes + 1
        cls = mask.astype(np.int64)
        cls[(cls < 0) | (cls > self.num_classes)] = self.num_classes  # every invalid value -> the ignore column
        # One bincount per axis at native resolution; bins and thirds are sums of these.
        per_row = np.bincount((np.arange(h)[:, None] * k + cls).ravel(), minlength=h * k).reshape(h, k)
        per_col = np.bincount((np.arange(w)[None, :] * k + cls).ravel(), minlength=w * k).reshape(w, k)
        np.add.at(self.row_counts, _bin_of(h, self.bins), per_row)
        np.add.at(self.col_counts, _bin_of(w, self.bins), per_col)
        np.add.at(self.region_counts, region_of_rows(h), per_row)
        self.images += 1

    def update(self, masks: Iterable[np.ndarray]) -> ClassDistribution:
        """:meth:`add` every map of ``masks`` (any iterable, consumed lazily); returns self."""
        for mask in masks:
            self.add(mask)
        return self

    def merge(self, other: ClassDistribution) -> ClassDistribution:
        """Add another accumulator's counts (same classes and bins) into this one; returns self."""
        if (other.num_classes, other.bins) != (self.num_classes, self.bins):
            raise ValueError("ClassDistribution.merge: num_classes and bins must match")
        self.row_counts += other.row_counts
        self.col_counts += other.col_counts
        self.region_counts += other.region_counts
        self.images += other.images
        return self

    # ------------------------------------------------------------------ derived numbers
    def counts(self, region: str = "image") -> np.ndarray:
        """``[num_classes + 1]`` pixel counts of a region of :data:`REGIONS` (last: ignore)."""
        if region == "image":
            return self.region_counts.sum(0)
        if region not in REGIONS:
            raise ValueError(f"ClassDistribution: region must be one of {REGIONS}, got {region!r}")
        return self.region_counts[REGIONS.index(region) - 1]

    def pixels_per_image(self, region: str = "image") -> np.ndarray:
        """``[num_classes]`` average pixel count of each class in one image (paper Fig. 1)."""
        return self.counts(region)[: self.num_classes] / max(self.images, 1)

    def probabilities(self, region: str = "image") -> np.ndarray:
        """``[num_classes]`` probability of each class among the labelled pixels of a region
        (all zeros when the region has no labelled pixel)."""
        c = self.counts(region)[: self.num_classes].astype(np.float64)
        total = c.sum()
        return c / total if total > 0 else c

    @staticmethod
    def _normalise_rows(counts: np.ndarray) -> np.ndarray:
        c = counts.astype(np.float64)
        total = c.sum(1, keepdims=True)
        return np.divide(c, total, out=np.zeros_like(c), where=total > 0)

    def height_distribution(self) -> np.ndarray:
        """``[bins, num_classes]``: ``p(class | height bin)`` (rows top to bottom)."""
        return self._normalise_rows(self.row_counts[:, : self.num_classes])

    def width_distribution(self) -> np.ndarray:
        """``[bins, num_classes]``: ``p(class | width bin)`` (columns left to right)."""
        return self._normalise_rows(self.col_counts[:, : self.num_classes])

    def class_profiles(self, axis: str = "height") -> np.ndarray:
        """``[bins, num_classes]``: ``p(bin | class)``, where along ``axis`` ("height" or
        "width") each class's pixels lie; each column sums to 1 (0 for absent classes)."""
        counts = {"height": self.row_counts, "width": self.col_counts}.get(axis)
        if counts is None:
            raise ValueError(f"ClassDistribution.class_profiles: axis must be 'height' or 'width', got {axis!r}")
        return self._normalise_rows(counts[:, : self.num_classes].T).T

    def positional_information(self, axis: str = "height") -> float:
        """Mutual information ``I(class; bin) = H(class) - H(class | bin)`` in nats along
        ``axis``: how much knowing the height (or width) bin of a pixel tells about its class
        (paper Fig. 10 in one number)."""
        counts = {"height": self.row_counts, "width": self.col_counts}.get(axis)
        if counts is None:
            raise ValueError(f"ClassDistribution.positional_information: axis must be 'height' or 'width', got {axis!r}")
        c = counts[:, : self.num_classes].astype(np.float64)
        total = c.sum()
        if total == 0:
            return 0.0
        weights = c.sum(1) / total
        conditional = float((weights * entropy(self._normalise_rows(c))).sum())
        return float(entropy(c.sum(0) / total)) - conditional

    def table1(self) -> Table1:
        """The numbers of paper Table 1 (see the module docstring for their definitions)."""
        probs = {r: self.probabilities(r) for r in REGIONS}
        ents = {r: float(entropy(p)) for r, p in probs.items()}
        labelled = {r: int(self.counts(r)[: self.num_classes].sum()) for r in REGIONS}
        thirds = REGIONS[1:]
        weights = np.array([labelled[r] for r in thirds], dtype=np.float64)
        conditional = float((weights * [ents[r] for r in thirds]).sum() / weights.sum()) if weights.sum() else 0.0
        # Stable sort: ties keep trainId order, so the ranking is deterministic.
        top5 = {r: [(int(i), float(p[i])) for i in np.argsort(-p, kind="stable")[:5] if p[i] > 0] for r, p in probs.items()}
        return Table1(probs, ents, float(np.mean([ents[r] for r in thirds])), conditional, top5, labelled)

    def to_dict(self, class_names: Sequence[str] = CLASS_NAMES) -> dict:
        """Every number as plain JSON-able Python (Table 1, Fig. 1 counts, Fig. 10 grids, raw counts)."""
        t = self.table1()
        names = list(class_names)[: self.num_classes]
        return {
            "images": self.images,
            "num_classes": self.num_classes,
            "class_names": names,
            "bins": self.bins,
            "table1": {
                "units": "probabilities as fractions; entropies in nats",
                "probabilities": {r: dict(zip(names, map(float, p))) for r, p in t.probabilities.items()},
                "entropy": t.entropies,
                "mean_region_entropy": t.mean_region_entropy,
                "region_conditional_entropy": t.region_conditional_entropy,
                "top5": {r: [{"class": names[i], "train_id": i, "probability": p} for i, p in top] for r, top in t.top5.items()},
                "labelled_pixels": t.labelled_pixels,
            },
            "pixels_per_image": {r: dict(zip(names, map(float, self.pixels_per_image(r)))) for r in REGIONS},
            "ignore_pixels_per_image": {r: float(self.counts(r)[-1] / max(self.images, 1)) for r in REGIONS},
            "positional_information": {a: self.positional_information(a) for a in ("height", "width")},
            "height_distribution": self.height_distribution().tolist(),
            "width_distribution": self.width_distribution().tolist(),
            "row_counts": self.row_counts.tolist(),
            "col_counts": self.col_counts.tolist(),
            "region_counts": self.region_counts.tolist(),
        }


def _percent(p: float) -> str:
    """Percent with enough digits to show small probabilities (the paper prints 0.006)."""
    v = 100.0 * p
    if v == 0 or v >= 0.1:
        return f"{v:.1f}"
    return f"{v:.3f}"


def format_table1(dist: ClassDistribution, class_names: Sequence[str] = CLASS_NAMES, *,
                  columns: Sequence[int] = PAPER_CLASSES, paper: bool = False) -> str:
    """Table 1 as text: probabilities (%) of ``columns`` and the entropy (nats) per region, the
    mean of the three region entropies, and the top-5 classes of each region from the data.
    ``paper=True`` adds the paper's Cityscapes numbers under each row for comparison."""
    t = dist.table1()
    names = list(class_names)
    head = ["Given"] + [f"p_{names[c].replace(' ', '_')}" for c in columns] + ["top-5 share", "entropy"]
    rows = []
    for r in REGIONS:
        p = t.probabilities[r]
        top_share = sum(v for _, v in t.top5[r])
        rows.append([r.capitalize()] + [_percent(p[c]) for c in columns] + [_percent(top_share), f"{t.entropies[r]:.2f}"])
        if paper:
            probs, ent = PAPER_TABLE1[r]
            rows.append(["  (paper)"] + [str(v) for v in probs] + ["", f"{ent:.2f}"])
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in rows]
    avg = f"Mean entropy of upper/middle/lower: {t.mean_region_entropy:.2f} nats"
    if paper:
        avg += f" (paper: {PAPER_MEAN_REGION_ENTROPY:.2f})"
    lines += ["", avg + f"; H(X | region), pixel-weighted: {t.region_conditional_entropy:.2f}",
              f"Entropy reduction from knowing the third: {t.entropies['image'] - t.mean_region_entropy:.2f} nats",
              f"I(class; height) = {dist.positional_information('height'):.3f} nats, "
              f"I(class; width) = {dist.positional_information('width'):.3f} nats ({dist.bins} bins)",
              "", "Top-5 classes per region (%):"]
    for r in REGIONS:
        lines.append(f"  {r.capitalize():<7} " + ", ".join(f"{names[i]} {_percent(p)}" for i, p in t.top5[r]))
    lines.append(f"\n{dist.images} label maps; probabilities among labelled pixels (ignore excluded);\n"
                 "top-5 share: of the region's own five most frequent classes; entropy = -sum p ln p (nats).")
    return "\n".join(lines)
