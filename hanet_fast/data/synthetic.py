"""Built-in procedurally generated urban street scenes in the 19 Cityscapes classes.

Every scene is a pure function of ``(seed, split, index)`` (``numpy.random.default_rng``), so
the data set needs no download and no disk: images are generated on the fly, a few ms each at
the default 128 x 256.

The class layout depends on height the way street scenes do (paper §1, Fig. 1): sky and
buildings (with trees, walls and fences at their foot) above a random horizon; road, sidewalk
and terrain below it, the road a trapezoid widening towards the bottom; cars, trucks, buses,
the odd train, people, riders, bicycles and motorcycles standing on the ground, small near the
horizon and larger the lower they stand; poles with traffic signs and lights spanning the middle.

Appearance is made ambiguous where only position can tell classes apart: road and sky share one
grey tone and texture per image, vegetation and terrain one green, walls share the buildings'
tone, persons and riders one clothing distribution, and cars/trucks/buses/trains one paint
distribution (size and height separate them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

__all__ = ["generate_scene", "SPLIT_IDS"]

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# trainIds
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)


class _Canvas:
    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.full((h, w), SKY, dtype=np.uint8)
        self.color = np.zeros((h, w, 3), dtype=np.float32)

    def rect(self, y0: float, y1: float, x0: float, x1: float, cls: int, color) -> None:
        y0, y1 = max(int(round(y0)), 0), min(int(round(y1)), self.h)
        x0, x1 = max(int(round(x0)), 0), min(int(round(x1)), self.w)
        if y1 <= y0 or x1 <= x0:
            return
        self.label[y0:y1, x0:x1] = cls
        self.color[y0:y1, x0:x1] = color

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, cls: int, color) -> None:
        ry, rx = max(ry, 0.5), max(rx, 0.5)
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, self.h)
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, self.w)
        if y1 <= y0 or x1 <= x0:
            return
        yy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / ry
        xx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / rx
        inside = yy * yy + xx * xx <= 1.0
        self.label[y0:y1, x0:x1][inside] = cls
        self.color[y0:y1, x0:x1][inside] = color


def _jitter(rng: np.random.Generator, base, amount: float) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def generate_scene(seed: int, index: int, height: int = 128, width: int = 256, split: str = "train"):
    """One scene: ``(image [H, W, 3] uint8 RGB, mask [H, W] uint8 trainIds)``."""
    if split not in SPLIT_IDS:
        raise ValueError(f"hanet_fast.data: split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
    h, w = int(height), int(width)
    c = _Canvas(h, w)
    # The parts draw from ``rng`` in this order; every scene is a pure function of its seed.
    tones = _Tones(rng, h, w)
    c.color[:] = tones.grey  # sky
    _skyline(c, rng, tones)
    _walls_and_fences(c, rng, tones)
    ground = _Ground(c, rng, tones)
    objects: list[tuple[float, Callable[[], None]]] = []  # (base row, painter): paint far (high) first
    _poles(c, rng, ground, objects)
    _vehicles(c, rng, ground, objects)
    _people(c, rng, ground, objects)
    for _, painter in sorted(objects, key=lambda o: o[0]):
        painter()
    return _texture(c, rng), c.label


class _Tones:
    """Per-image tones shared across classes that only position tells apart, the horizon row and
    the vanishing point column."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.grey = np.full(3, rng.uniform(95, 165), np.float32) + rng.uniform(-8, 8, 3)  # road & sky
        self.green = _jitter(rng, (95, 135, 60), 25)  # vegetation & terrain
        self.stone = _jitter(rng, (150, 140, 130), 40)  # buildings & walls
        self.hz = rng.uniform(0.36, 0.52) * h  # horizon row
        self.vx = rng.uniform(0.3, 0.7) * w  # vanishing point column


def _skyline(c: _Canvas, rng: np.random.Generator, tones: _Tones) -> None:
    """Above the horizon: buildings (with windows) and trees, side by side."""
    w, hz, stone, green = tones.w, tones.hz, tones.stone, tones.green
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = rng.uniform(0.08, 0.3) * w
        kind = rng.random()
        if kind < 0.62:
            top = hz - rng.uniform(0.12, 0.9) * hz
            c.rect(top, hz + 1, x, x + bw, BUILDING, _jitter(rng, stone, 25))
            # windows: darker rectangles, still "building"
            if bw > 8 and hz - top > 8:
                ws = max(2.0, bw / 6)
                for wy in np.arange(top + ws, hz - ws, 2 * ws):
                    for wx in np.arange(x + ws / 2, x + bw - ws, 1.6 * ws):
                        c.rect(wy, wy + ws, wx, wx + 0.8 * ws, BUILDING, _jitter(rng, stone * 0.55, 10))
        elif kind < 0.85:
            ry = rng.uniform(0.1, 0.3) * tones.h
            c.rect(hz - ry * 0.8, hz + 1, x + bw / 2 - 1, x + bw / 2 + 1, VEGETATION, green * 0.6)
            c.ellipse(hz - ry, x + bw / 2, ry, bw / 2 + 2, VEGETATION, _jitter(rng, green, 10))
        x += bw


def _walls_and_fences(c: _Canvas, rng: np.random.Generator, tones: _Tones) -> None:
    """Walls and fences in front of the buildings, at the horizon."""
    h, w, hz, stone = tones.h, tones.w, tones.hz, tones.stone
    for _ in range(rng.integers(0, 3)):
        x0 = rng.uniform(-0.1, 0.9) * w
        x1 = x0 + rng.uniform(0.1, 0.35) * w
        top = hz - rng.uniform(0.03, 0.1) * h
        if rng.random() < 0.5:
            c.rect(top, hz + 1, x0, x1, WALL, _jitter(rng, stone, 15))
        else:
            c.rect(top, hz + 1, x0, x1, FENCE, _jitter(rng, stone * 0.8, 15))
            for fx in np.arange(x0, x1, 4):  # darker posts, still fence
                c.rect(top, hz + 1, fx, fx + 1, FENCE, stone * 0.5)


class _Ground:
    """Below the horizon: terrain, sidewalk and road (a trapezoid widening downwards, with lane
    markings), painted on construction; then where objects stand on it."""

    def __init__(self, c: _Canvas, rng: np.random.Generator, tones: _Tones) -> None:
        h, w, hz, grey = tones.h, tones.w, tones.hz, tones.grey
        self.rng, self.h, self.w, self.hz = rng, h, w, hz
        rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
        cols = np.arange(w, dtype=np.float32)[None, :] + 0.5
        t = np.clip((rows - hz) / max(h - hz, 1.0), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom
        below = rows >= hz
        self.half_road = 0.02 * w + t * rng.uniform(0.35, 0.7) * w
        half_walk = self.half_road + 0.01 * w + t * rng.uniform(0.12, 0.35) * w
        self.centre = tones.vx + t * rng.uniform(-0.3, 0.3) * w
        dist = np.abs(cols - self.centre)
        ground = np.broadcast_to(below, (h, w))
        terrain = ground & (dist >= half_walk)
        walk = ground & (dist < half_walk) & (dist >= self.half_road)
        road = ground & (dist < self.half_road)
        c.label[terrain] = TERRAIN
        c.color[terrain] = tones.green
        c.label[walk] = SIDEWALK
        c.color[walk] = _jitter(rng, (190, 170, 175), 20)
        c.label[road] = ROAD
        c.color[road] = grey
        # lane markings are road
        lane = road & (np.abs(cols - self.centre) < 0.004 * w + t * 0.01 * w) & ((rows.astype(np.int64) // 4) % 2 == 0)
        c.color[lane] = np.minimum(grey + 60, 255)

    def row(self, scale_lo: float = 0.05) -> tuple[float, float]:
        """A random row on the ground and its perspective scale t in (0, 1]."""
        tt = self.rng.uniform(scale_lo, 1.0) ** 1.3
        return self.hz + tt * (self.h - self.hz), max(tt, 0.03)

    def road_span(self, y: float) -> tuple[float, float, float]:
        """The road's centre column, half width and perspective scale at row ``y``."""
        tt = np.clip((y - self.hz) / max(self.h - self.hz, 1.0), 0, 1)
        hr = 0.02 * self.w + tt * (self.half_road[-1, 0] - 0.02 * self.w)
        ce = float(self.centre[min(int(y), self.h - 1), 0])
        return ce, float(hr), float(tt)


def _poles(c: _Canvas, rng: np.random.Generator, ground: _Ground, objects: list) -> None:
    """Poles with signs and lights, standing on the sidewalk."""
    h, w = c.h, c.w
    for _ in range(rng.integers(1, 5)):
        yb, tt = ground.row(0.15)
        ce, hr, _ = ground.road_span(yb)
        side = rng.choice([-1.0, 1.0])
        xb = ce + side * (hr + 0.02 * w + tt * 0.05 * w)
        ph = (0.25 + 0.55 * tt) * h
        pw = max(1.0, 0.012 * w * (0.4 + tt))
        attach = rng.random()

        def pole(yb=yb, xb=xb, ph=ph, pw=pw, tt=tt, attach=attach):
            c.rect(yb - ph, yb, xb - pw / 2, xb + pw / 2, POLE, (70, 70, 75))
            s = max(2.0, (0.03 + 0.06 * tt) * h)
            if attach < 0.5:
                c.rect(yb - ph - s * 0.2, yb - ph + s, xb - s / 2, xb + s / 2, SIGN, _jitter(rng, (220, 200, 40), 30))
            elif attach < 0.85:
                c.rect(yb - ph, yb - ph + 2.2 * s, xb - s / 2, xb + s / 2, LIGHT, (40, 40, 30))
                c.rect(yb - ph + s * 0.3, yb - ph + s * 0.8, xb - s / 4, xb + s / 4, LIGHT,
                       [(230, 40, 30), (240, 170, 20), (40, 220, 60)][rng.integers(3)])

        objects.append((yb, pole))


def _vehicles(c: _Canvas, rng: np.random.Generator, ground: _Ground, objects: list) -> None:
    """Cars, trucks, buses and the odd train on the road."""
    h = c.h
    n_vehicles = rng.integers(1, 7)
    for _ in range(n_vehicles):
        yb, tt = ground.row()
        ce, hr, _ = ground.road_span(yb)
        r = rng.random()
        cls, hs, ws = (CAR, 0.22, 1.9) if r < 0.7 else (TRUCK, 0.34, 2.2) if r < 0.85 else (BUS, 0.4, 3.0) if r < 0.96 else (TRAIN, 0.45, 6.0)
        vh = hs * h * (0.15 + 0.85 * tt)
        vw = ws * vh
        xc = ce + rng.uniform(-0.9, 0.9) * hr
        paint = _jitter(rng, rng.choice([(30, 30, 40), (200, 200, 205), (150, 30, 30), (30, 60, 140), (120, 120, 125)]), 25)

        def vehicle(yb=yb, xc=xc, vh=vh, vw=vw, cls=cls, paint=paint):
            c.rect(yb - vh, yb - 0.15 * vh, xc - vw / 2, xc + vw / 2, cls, paint)
            c.rect(yb - 0.9 * vh, yb - 0.55 * vh, xc - vw / 2 + 0.1 * vw, xc + vw / 2 - 0.1 * vw, cls, paint * 0.5 + 60)
            r_ = 0.15 * vh
            for wx in (xc - vw / 2 + 2 * r_, xc + vw / 2 - 2 * r_):
                c.ellipse(yb - r_, wx, r_, r_, cls, (20, 20, 20))

        objects.append((yb, vehicle))


def _people(c: _Canvas, rng: np.random.Generator, ground: _Ground, objects: list) -> None:
    """People on the sidewalk; riders on bicycles and motorcycles at the road's edge."""
    h, w = c.h, c.w
    for _ in range(rng.integers(0, 6)):
        yb, tt = ground.row(0.1)
        ce, hr, _ = ground.road_span(yb)
        rider = rng.random() < 0.35
        ph = 0.32 * h * (0.15 + 0.85 * tt)
        if rider:
            xc = ce + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * hr
        else:
            xc = ce + rng.choice([-1.0, 1.0]) * (hr + rng.uniform(0.0, 0.1) * w * (0.3 + tt))
        clothes = _jitter(rng, (110, 80, 90), 70)
        moto = rng.random() < 0.4
        objects.append((yb, functools.partial(_paint_person, c, yb, xc, ph, rider, clothes, moto)))


def _paint_person(c: _Canvas, yb: float, xc: float, ph: float, rider: bool, clothes, moto: bool) -> None:
    pw = 0.3 * ph
    if rider:
        bike_h = 0.45 * ph
        bcls = MOTORCYCLE if moto else BICYCLE
        bcol = (35, 35, 45) if moto else (60, 40, 40)
        r_ = bike_h * 0.4
        c.ellipse(yb - r_, xc - 1.1 * r_, r_, r_, bcls, bcol)
        c.ellipse(yb - r_, xc + 1.1 * r_, r_, r_, bcls, bcol)
        if moto:
            c.rect(yb - 1.6 * r_, yb - 0.6 * r_, xc - 1.2 * r_, xc + 1.2 * r_, bcls, bcol)
        top = yb - bike_h - 0.8 * ph
        c.rect(top + 0.2 * ph, yb - bike_h + 0.1 * ph, xc - pw / 2, xc + pw / 2, RIDER, clothes)
        c.ellipse(top + 0.1 * ph, xc, 0.1 * ph, 0.1 * ph, RIDER, (200, 160, 130))
    else:
        c.rect(yb - 0.8 * ph, yb, xc - pw / 2, xc + pw / 2, PERSON, clothes)
        c.rect(yb - 0.4 * ph, yb, xc - pw / 2, xc - pw / 8, PERSON, clothes * 0.6)
        c.ellipse(yb - 0.9 * ph, xc, 0.1 * ph, 0.1 * ph, PERSON, (200, 160, 130))


def _texture(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Texture, shading and noise (the same statistics for every class) over the painted colours."""
    h, w = c.h, c.w
    img = c.color
    tex = rng.normal(0.0, 1.0, (h // 4 + 1, w // 4 + 1)).astype(np.float32)
    tex = np.repeat(np.repeat(tex, 4, 0), 4, 1)[:h, :w]
    img = img + 6.0 * tex[..., None] + rng.normal(0.0, 5.0, (h, w, 3)).astype(np.float32)
    img = img * rng.uniform(0.75, 1.2)
    return np.clip(img, 0, 255).astype(np.uint8)
