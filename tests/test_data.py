"""Data: labels, synthetic scenes, Cityscapes/BDD100K/folder loaders, joint transforms, class-uniform sampling."""

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hanet_fast.data import (BDD100K, CLASS_NAMES, Cityscapes, DatasetError, EvalTransform, ImageFolder,
                             SyntheticUrbanScenes, TrainSampler, TrainTransform, class_centroids, compute_centroids,
                             full_row_pos, generate_scene, label_to_train_lut)
from hanet_fast.data import sampling as sampling_mod
from hanet_fast.data import transforms as transforms_mod
from hanet_fast.data.sampling import build_epoch
from hanet_fast.data.transforms import (PAD_ROW_POS, blur_sigma, color_jitter, crop, crop_origin, crop_pad,
                                        gaussian_blur, hflip, resize)


# ----------------------------------------------------------------------------- labels
def test_label_table_matches_cityscapesscripts():
    builtin = label_to_train_lut("builtin")
    assert builtin[7] == 0 and builtin[26] == 13 and builtin[33] == 18 and builtin[0] == 255 and builtin[9] == 255
    assert sorted(set(builtin.tolist()) - {255}) == list(range(19))
    pytest.importorskip("cityscapesscripts")
    np.testing.assert_array_equal(label_to_train_lut("cityscapesscripts"), builtin)
    from cityscapesscripts.helpers.labels import trainId2label
    assert [trainId2label[i].name for i in range(19)] == list(CLASS_NAMES)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_distinct():
    a_img, a_mask = generate_scene(3, 7, 64, 128)
    b_img, b_mask = generate_scene(3, 7, 64, 128)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = generate_scene(3, 8, 64, 128)
    d_img, _ = generate_scene(3, 7, 64, 128, split="val")
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)
    assert a_img.shape == (64, 128, 3) and a_img.dtype == np.uint8 and a_mask.shape == (64, 128)
    ds = SyntheticUrbanScenes("train", 5, (64, 128), seed=3, transform=EvalTransform())
    s = ds[2]
    assert s["image"].shape == (3, 64, 128) and s["mask"].dtype == torch.int64
    torch.testing.assert_close(s["row_pos"], torch.arange(64) / 64.0)


def test_synthetic_layout_depends_on_height_and_appearance_is_ambiguous():
    imgs, masks = zip(*[generate_scene(0, k, 96, 192) for k in range(40)])
    masks, imgs = np.stack(masks), np.stack(imgs).astype(np.float32)
    top, bottom = masks[:, :24], masks[:, -24:]
    assert (top == 10).mean() > 0.3 and (bottom == 10).mean() == 0  # sky up
    assert (bottom == 0).mean() > 0.25 and (top == 0).mean() == 0  # road down
    assert (masks == 2)[:, :48].mean() > 5 * (masks == 2)[:, 72:].mean()  # buildings in the upper half
    present = np.bincount(masks.ravel(), minlength=256)[:19]
    assert (present > 0).all(), f"classes never drawn: {[CLASS_NAMES[c] for c in np.flatnonzero(present == 0)]}"
    # road and sky share one colour per image; vegetation and terrain too
    for img, m in zip(imgs[:10], masks[:10]):
        if (m == 0).sum() > 50 and (m == 10).sum() > 50:
            assert np.abs(img[m == 0].mean(0) - img[m == 10].mean(0)).max() < 25
        if (m == 8).sum() > 50 and (m == 9).sum() > 50:
            assert np.abs(img[m == 8].mean(0) - img[m == 9].mean(0)).max() < 30


def test_synthetic_objects_larger_when_lower():
    heights = {"near_horizon": [], "low": []}
    for k in range(60):
        _, m = generate_scene(1, k, 128, 256)
        cars = m == 13
        if not cars.any():
            continue
        rows = np.flatnonzero(cars.any(1))
        # car pixels in the upper ground band vs the bottom band: column extents per row
        widths = cars.sum(1)
        band = "low" if rows.max() > 110 else "near_horizon" if rows.max() < 80 else None
        if band:
            heights[band].append(widths.max())
    assert heights["low"] and heights["near_horizon"]
    assert np.median(heights["low"]) > np.median(heights["near_horizon"])


# ----------------------------------------------------------------------------- file data sets
def _write_cityscapes(root, split="train", cities=("aachen", "bochum"), size=(16, 32)):
    rng = np.random.default_rng(0)
    for ci, city in enumerate(cities):
        os.makedirs(os.path.join(root, "leftImg8bit", split, city), exist_ok=True)
        os.makedirs(os.path.join(root, "gtFine", split, city), exist_ok=True)
        name = f"{city}_000000_00001{ci}"
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(
            os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"))
        label = np.zeros(size, np.uint8)
        label[: size[0] // 2] = 23  # sky
        label[size[0] // 2:] = 7  # road
        label[-2:, :4] = 26  # car
        label[0, 0] = 9  # parking -> ignore
        Image.fromarray(label).save(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"))
    return root


def test_cityscapes_loader(tmp_path):
    root = _write_cityscapes(str(tmp_path / "cs"))
    ds = Cityscapes(root, "train")
    assert len(ds) == 2
    s = ds[0]
    assert s["image"].shape == (3, 16, 32) and s["path"].endswith("_leftImg8bit.png")
    m = s["mask"]
    assert m[1, 5] == 10 and m[10, 5] == 0 and m[15, 0] == 13 and m[0, 0] == 255
    # random-crop training transform works on it
    ds_t = Cityscapes(root, "train", transform=TrainTransform((8, 8), color_jitter=0.2))
    out = ds_t[(1, (0, 1), None)]
    assert out["image"].shape == (3, 8, 8) and out["row_pos"].shape == (8,)


def test_cityscapes_trainval_is_train_and_val_together(tmp_path):
    root = _write_cityscapes(str(tmp_path / "cs"), "train")
    _write_cityscapes(root, "val", cities=("frankfurt",))
    paths = [path for path, _ in Cityscapes(root, "trainval").pairs]
    assert len(paths) == 3
    assert sorted(os.path.basename(os.path.dirname(p)) for p in paths) == ["aachen", "bochum", "frankfurt"]
    assert all(label.endswith("_gtFine_labelIds.png") and "/val/" in label
               for path, label in Cityscapes(root, "trainval").pairs if "frankfurt" in path)


def test_cityscapes_missing_and_corrupt_files_are_named(tmp_path):
    root = _write_cityscapes(str(tmp_path / "cs"))
    label = os.path.join(root, "gtFine", "train", "bochum", "bochum_000000_000011_gtFine_labelIds.png")
    os.remove(label)
    with pytest.raises(DatasetError, match="bochum_000000_000011_gtFine_labelIds.png"):
        Cityscapes(root, "train")
    root2 = _write_cityscapes(str(tmp_path / "cs2"))
    image = os.path.join(root2, "leftImg8bit", "train", "aachen", "aachen_000000_000010_leftImg8bit.png")
    with open(image, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    ds = Cityscapes(root2, "train")
    with pytest.raises(DatasetError, match="aachen_000000_000010_leftImg8bit.png"):
        ds[0]
    with pytest.raises(DatasetError, match="not found"):
        Cityscapes(str(tmp_path / "nothing"), "train")


def test_bdd100k_loader_and_image_folder(tmp_path):
    root = tmp_path / "bdd"
    (root / "images" / "10k" / "val").mkdir(parents=True)
    (root / "labels" / "sem_seg" / "masks" / "val").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a1", "b2"):
        Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(root / "images" / "10k" / "val" / f"{name}.jpg")
        label = np.full((12, 20), 255, np.uint8)
        label[6:] = 0
        label[:3] = 10
        Image.fromarray(label).save(root / "labels" / "sem_seg" / "masks" / "val" / f"{name}.png")
    ds = BDD100K(str(root), "val")
    assert len(ds) == 2
    s = ds[1]
    assert s["path"].endswith("b2.jpg") and s["mask"][0, 0] == 10 and s["mask"][8, 3] == 0 and s["mask"][4, 4] == 255
    os.remove(root / "labels" / "sem_seg" / "masks" / "val" / "a1.png")
    with pytest.raises(DatasetError, match="a1.png"):
        BDD100K(str(root), "val")
    folder = ImageFolder(str(root / "images"))
    assert len(folder) == 2 and folder[0]["image"].shape == (3, 12, 20) and (folder[0]["mask"] == 255).all()


# ----------------------------------------------------------------------------- transforms
def _row_coded_sample(h=96, w=80):
    rows = np.arange(h, dtype=np.uint8)[:, None]
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = rows
    image[..., 1] = np.arange(w, dtype=np.uint8)[None, :]
    mask = np.broadcast_to(rows, (h, w)).copy()  # mask value = source row
    return {"image": image, "mask": mask, "row_pos": full_row_pos(h)}


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_mask_row_pos_aligned(seed):
    h = 96
    tf = TrainTransform((40, 56), (0.5, 2.0), flip=0.5, color_jitter=0.0, blur=0.0, tensor=False)
    out = tf(_row_coded_sample(h), np.random.default_rng(seed))
    img, mask, pos = out["image"].astype(np.int64), out["mask"].astype(np.int64), out["row_pos"]
    assert img.shape == (40, 56, 3) and mask.shape == (40, 56) and pos.shape == (40,)
    for i in range(40):
        valid = mask[i] != 255
        if not valid.any():
            assert pos[i] == PAD_ROW_POS and (img[i] == 0).all()  # a padded row
            continue
        src = np.unique(mask[i][valid])
        assert len(src) == 1, "a mask row mixes source rows"
        assert pos[i] == pytest.approx(src[0] / h), "row_pos does not match the mask row"
        assert np.abs(img[i, valid, 0] - src[0]).max() <= 2, "image row does not match the mask row"
    valid_rows = [i for i in range(40) if (mask[i] != 255).any()]
    assert np.all(np.diff(pos[valid_rows]) >= 0)


def test_flip_and_crop_and_resize_primitives():
    s = _row_coded_sample(10, 6)
    f = hflip(s)
    np.testing.assert_array_equal(f["image"][:, ::-1], s["image"])
    np.testing.assert_array_equal(f["row_pos"], s["row_pos"])
    c = crop(s, 3, -2, 9, 6)  # runs off the bottom and the left: padded
    assert (c["mask"][:, :2] == 255).all() and (c["mask"][7:] == 255).all() and (c["image"][:, :2] == 0).all()
    np.testing.assert_array_equal(c["mask"][:7, 2], np.arange(3, 10))
    np.testing.assert_allclose(c["row_pos"][:7], np.arange(3, 10) / 10)
    assert (c["row_pos"][7:] == PAD_ROW_POS).all()  # rows past the image take the pad position
    r = resize(s, 20, 12)
    np.testing.assert_allclose(r["row_pos"], r["mask"][:, 0] / 10)


def test_centroid_crop_mostly_contains_the_centroid_class():
    h, w = 120, 160
    mask = np.zeros((h, w), np.uint8)
    mask[90:94, 140:144] = 18  # a small rare object
    sample = {"image": np.zeros((h, w, 3), np.uint8), "mask": mask, "row_pos": full_row_pos(h)}
    tf = TrainTransform((32, 32), (0.5, 2.0), color_jitter=0.0, blur=0.0, tensor=False)
    hits = sum((tf(dict(sample), np.random.default_rng(seed), centroid=(91, 141))["mask"] == 18).any()
               for seed in range(40))
    # the official origin randint(c - t, c) can end the window one pixel short of c: rarely misses
    assert hits >= 34


def _coded(h, w):
    """Image whose channels 0/1 hold the row / column (mod 256); mask = row; row_pos of a full image."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (np.arange(h) % 256)[:, None]
    image[..., 1] = (np.arange(w) % 256)[None, :]
    return {"image": image, "mask": np.broadcast_to((np.arange(h) % 256).astype(np.uint8)[:, None], (h, w)).copy(),
            "row_pos": full_row_pos(h)}


def test_official_pad_geometry():
    assert [crop_pad(5, c) for c in (4, 5, 6, 7, 8, 9)] == [0, 0, 1, 2, 2, 3]
    tf = TrainTransform((8, 4), (1.0, 1.0), flip=0.0, color_jitter=0.0, blur=0.0, tensor=False)
    seen = set()
    for seed in range(40):
        out = tf(_coded(5, 4), np.random.default_rng(seed))
        # (8 - 5) // 2 + 1 = 2 rows on top and bottom: 9 rows, so 2 + 5 + 1 or 1 + 5 + 2
        pads_top = int(np.argmax(out["mask"][:, 0] != 255))
        seen.add(pads_top)
        rows = np.arange(8) - pads_top
        inside = (rows >= 0) & (rows < 5)
        np.testing.assert_array_equal(out["mask"][inside, 0], rows[inside])
        assert (out["mask"][~inside] == 255).all() and (out["image"][~inside] == 0).all()
        np.testing.assert_array_equal(out["row_pos"], np.where(inside, rows / 5, PAD_ROW_POS).astype(np.float32))
        np.testing.assert_array_equal(out["image"][inside, :, 1], np.broadcast_to(np.arange(4), (5, 4)))  # no x pad
    assert seen == {1, 2}
    # width: 7 columns from 4: 2 pad columns each side (8), window origin 0 or 1
    tf = TrainTransform((5, 7), (1.0, 1.0), flip=0.0, color_jitter=0.0, blur=0.0, tensor=False)
    lefts = set()
    for seed in range(40):
        out = tf(_coded(5, 4), np.random.default_rng(seed))
        cols = out["mask"][0] != 255
        lefts.add(int(np.argmax(cols)))
        assert cols.sum() == 4 and (out["row_pos"] == full_row_pos(5)).all()
    assert lefts == {1, 2}
    # a crop of the image's own size: untouched, no padding
    out = TrainTransform((5, 4), (1.0, 1.0), flip=0.0, color_jitter=0.0, blur=0.0, tensor=False)(
        _coded(5, 4), np.random.default_rng(0))
    np.testing.assert_array_equal(out["mask"], _coded(5, 4)["mask"])


def test_crop_origin_rule():
    rng = np.random.default_rng(0)
    n = 31000
    inner = np.array([crop_origin(100, 30, rng, 50) for _ in range(n)])
    assert inner.min() == 20 and inner.max() == 50 and len(np.unique(inner)) == 31  # randint(c - t, c)
    low = np.array([crop_origin(100, 30, rng, 5) for _ in range(n)])
    assert low.min() == 0 and low.max() == 5
    assert abs((low == 0).mean() - 26 / 31) < 0.01  # randint(-25, 5) clamped: 26 of 31 values give 0
    high = np.array([crop_origin(100, 30, rng, 95) for _ in range(n)])
    assert high.min() == 65 and high.max() == 70 and abs((high == 70).mean() - 26 / 31) < 0.01
    free = {crop_origin(12, 10, rng) for _ in range(200)}
    assert free == {0, 1, 2} and crop_origin(10, 10, rng) == 0


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_centroid_is_scaled_by_truncation_and_window_follows_the_rule(scale):
    h, w = 64, 96
    tf = TrainTransform((8, 8), (scale, scale), flip=0.0, color_jitter=0.0, blur=0.0, tensor=False)
    tops, lefts = set(), set()
    for seed in range(300):
        out = tf(_coded(h, w), np.random.default_rng(seed), centroid=(10, 21))
        tops.add(int(round(float(out["row_pos"][0]) * h)))
        lefts.add(int(out["image"][0, 0, 1]))
    cy, cx = int(10 * scale), int(21 * scale)  # the official int(c * scale)
    src = transforms_mod._nearest_rows(h, int(h * scale))
    srcx = transforms_mod._nearest_rows(w, int(w * scale))
    assert tops == {int(src[t]) for t in range(cy - 8, cy + 1)}
    assert lefts == {int(srcx[t]) for t in range(cx - 8, cx + 1)}


def test_rescale_is_bicubic_nearest_and_truncated_size():
    rng0 = np.random.default_rng(5)
    sample = {"image": rng0.integers(0, 256, (33, 45, 3), dtype=np.uint8),
              "mask": rng0.integers(0, 19, (33, 45), dtype=np.uint8), "row_pos": full_row_pos(33)}
    # int(1.5 * 33) = 49, int(1.5 * 45) = 67 (rounding would give 50 and 68): a crop of that size is the whole image
    tf = TrainTransform((49, 67), (1.5, 1.5), flip=0.0, color_jitter=0.0, blur=0.0, tensor=False)
    out = tf(dict(sample), np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"], np.asarray(Image.fromarray(sample["image"]).resize((67, 49), Image.BICUBIC)))
    np.testing.assert_array_equal(out["mask"], np.asarray(Image.fromarray(sample["mask"]).resize((67, 49), Image.NEAREST)))
    assert out["mask"].shape == (49, 67) and (out["mask"] != 255).all()
    # row_pos follows PIL's nearest row map, the one the mask rows follow
    rows = np.asarray(Image.fromarray(np.arange(33, dtype=np.int32)[:, None].repeat(45, 1)).resize((67, 49), Image.NEAREST))[:, 0]
    np.testing.assert_array_equal(out["row_pos"], full_row_pos(33)[rows])


@pytest.mark.parametrize("size", [(7, 9), (40, 52), (101, 77)])
def test_resized_masks_hold_only_input_values(size):
    mask = np.zeros((20, 26), np.uint8)
    mask[:, 13:] = 18  # two classes side by side, and a diagonal boundary
    mask[np.tril_indices(20, -3)] = 18
    sample = {"image": np.zeros((20, 26, 3), np.uint8), "mask": mask, "row_pos": full_row_pos(20)}
    assert set(np.unique(resize(sample, *size)["mask"]).tolist()) == {0, 18}
    tf = TrainTransform((24, 24), (0.3, 3.0), color_jitter=0.0, blur=0.0, tensor=False)
    for seed in range(6):
        assert set(np.unique(tf(dict(sample), np.random.default_rng(seed))["mask"]).tolist()) <= {0, 18, 255}


def test_color_jitter_official_ranges_and_random_order(monkeypatch):
    calls = []
    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        monkeypatch.setattr(transforms_mod.TF_PIL, name, lambda img, f, name=name: calls.append((name, f)) or img)
    image = np.zeros((4, 4, 3), np.uint8)
    orders, factors = set(), {}
    rng = np.random.default_rng(0)
    for _ in range(600):
        calls.clear()
        color_jitter(image, rng, 0.25)
        orders.add(tuple(n for n, _ in calls))
        for n, f in calls:
            factors.setdefault(n, []).append(f)
    assert len(orders) == 24  # every order of the four operations
    for n in ("adjust_brightness", "adjust_contrast", "adjust_saturation"):
        assert 0.75 <= min(factors[n]) < 0.76 and 1.24 < max(factors[n]) <= 1.25
    assert -0.25 <= min(factors["adjust_hue"]) < -0.24 and 0.24 < max(factors["adjust_hue"]) <= 0.25
    with pytest.raises(ValueError, match="color_jitter"):
        TrainTransform(color_jitter=0.6)


def test_hue_shift_is_the_official_wrapping_uint8_shift():
    image = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    for hue in (-0.25, -0.1, 0.07, 0.25):
        got = np.asarray(transforms_mod.TF_PIL.adjust_hue(Image.fromarray(image), hue))
        h, s_, v = Image.fromarray(image).convert("HSV").split()
        shifted = ((np.asarray(h).astype(np.int64) + int(hue * 255)) % 256).astype(np.uint8)  # trunc, then wrap
        want = np.asarray(Image.merge("HSV", (Image.fromarray(shifted, "L"), s_, v)).convert("RGB"))
        np.testing.assert_array_equal(got, want)


def test_blur_sigma_range_and_every_sample_blurred():
    rng = np.random.default_rng(0)
    sigmas = np.array([blur_sigma(rng) for _ in range(20000)])
    assert sigmas.min() >= 0.15 and sigmas.max() < 1.3
    assert sigmas.min() < 0.151 and sigmas.max() > 1.299 and abs(sigmas.mean() - 0.725) < 0.01
    sample = {"image": np.random.default_rng(1).integers(0, 256, (24, 30, 3), dtype=np.uint8),
              "mask": np.zeros((24, 30), np.uint8), "row_pos": full_row_pos(24)}
    plain = TrainTransform((16, 16), color_jitter=0.25, blur=0.0, tensor=False)
    blurred = TrainTransform((16, 16), color_jitter=0.25, blur=1.0, tensor=False)
    for seed in range(8):  # blur is the last step and takes one draw: every sample gets it
        rng_a = np.random.default_rng(seed)
        want = gaussian_blur(plain(dict(sample), rng_a)["image"], blur_sigma(rng_a))
        np.testing.assert_array_equal(blurred(dict(sample), np.random.default_rng(seed))["image"], want)


def test_gaussian_blur_is_skimage_gaussian():
    impulse = np.zeros((15, 15, 3), np.uint8)
    impulse[7, 7] = 255
    for sigma in (0.15, 0.6, 1.29):
        r = int(4 * sigma + 0.5)
        wts = np.exp(-0.5 * np.arange(-r, r + 1) ** 2 / sigma ** 2)
        wts /= wts.sum()
        out = gaussian_blur(impulse, sigma)
        want = (np.outer(wts, wts) * (255 * (1.0 / 255)) * 255).astype(np.uint8)  # truncated, not rounded
        np.testing.assert_array_equal(out[7 - r:8 + r, 7 - r:8 + r, 0], want)
        assert (out[:, :, 0].sum() - want.sum()) == 0
    # skimage's gaussian is scipy.ndimage.gaussian_filter; scipy is no dependency of hanet_fast, so its
    # results are pinned here: SHA-256 (first 32 hex digits) of
    # (gaussian_filter(img * (1.0 / 255), (sigma, sigma, 0), mode="nearest", truncate=4.0) * 255).astype(np.uint8)
    # computed with scipy 1.17.1.
    scipy_digests = {0.2: "660020e40c613de341dccdaa9dd860ab", 0.9: "7ad685eb90d2e8b3d78a59dce4131f66",
                     1.3: "00ea79140bcf333b48e3ac7ee1d39803"}
    img = np.random.default_rng(3).integers(0, 256, (31, 23, 3), dtype=np.uint8)
    for sigma, digest in scipy_digests.items():
        assert hashlib.sha256(gaussian_blur(img, sigma).tobytes()).hexdigest()[:32] == digest, sigma


# ----------------------------------------------------------------------------- class-uniform sampling
class _RareClassSet(SyntheticUrbanScenes):
    """40 tiny label maps: class 0 everywhere, class 18 in one corner of image 7 only."""

    def __init__(self):
        super().__init__("train", 40, (16, 16), seed=0, transform=TrainTransform((8, 8), color_jitter=0, blur=0))

    def load(self, index):
        mask = np.zeros((16, 16), np.uint8)
        if index == 7:
            mask[12:14, 12:14] = 18
        return {"image": np.zeros((16, 16, 3), np.uint8), "mask": mask}

    def cache_key(self):
        return "rare-class-test"


def test_class_uniform_epochs_have_the_official_composition(tmp_path):
    ds = _RareClassSet()
    cents = class_centroids(ds, str(tmp_path))
    # full 8 x 8 tiles of the 16 x 16 maps: 4 per image for class 0; class 18 (rows/cols 12-13) once
    assert len(cents[18]) == 1 and cents[18][0] == [7, 12, 12] and len(cents[0]) == 40 * 4
    # N = 40, pct 0.5, 19 classes: int(40 * 0.5 / 19) = 1 sample per class with centroids (0 and 18),
    # and 40 - 19 = 21 other images without replacement: 23 items per epoch
    sampler = TrainSampler(len(ds), 4, 60, seed=0, centroids=cents, class_uniform_pct=0.5)
    assert sampler.epoch_length == 23
    items = [item for batch in sampler for item in batch]
    for e in range(len(items) // 23):
        epoch = items[23 * e: 23 * (e + 1)]
        plain = [it[0] for it in epoch if it[2] is None]
        uniform = [(it[0], it[2]) for it in epoch if it[2] is not None]
        assert len(plain) == 21 and len(set(plain)) == 21
        assert (7, (12, 12)) in uniform and len(uniform) == 2
        other = [u for u in uniform if u != (7, (12, 12))][0]
        assert [other[0], *other[1]] in cents[0]
        assert [it[:2] for it in epoch] == [(i, (0, 3, 23 * e + k)) for k, (i, _) in enumerate(
            sampler.epoch(e))]
    crops_with_rare = sum((ds[it]["mask"] == 18).any().item() for it in items if it[2] == (12, 12))
    assert crops_with_rare >= 0.8 * sum(it[2] == (12, 12) for it in items)


def test_build_epoch_counts_and_cycling():
    # N = 100, pct 0.5: int(50 / 19) = 2 per class; 100 - 38 = 62 random images; class 3 has a single
    # centroid (taken twice), class 19 and up do not exist, classes without centroids add nothing
    cents = {0: [[i, 50 + i, 60 + i] for i in range(10)], 3: [[5, 1, 2]], 11: [[8, 3, 4], [9, 5, 6]]}
    rng = np.random.default_rng(0)
    epoch = build_epoch(100, cents, 0.5, rng)
    assert len(epoch) == 62 + 3 * 2
    plain = [i for i, c in epoch if c is None]
    assert len(plain) == len(set(plain)) == 62 and set(plain) <= set(range(100))
    uniform = sorted((i, c) for i, c in epoch if c is not None)
    assert [u for u in uniform if u[1][0] < 50] == [(5, (1, 2)), (5, (1, 2)), (8, (3, 4)), (9, (5, 6))]
    class0 = [u for u in uniform if u[1][0] >= 50]
    assert len(class0) == 2 and class0[0] != class0[1] and all(c == (50 + i, 60 + i) for i, c in class0)
    # pct 1 with 38 images: 2 per class, no random images; pct 0: a permutation of every image
    assert all(c is not None for _, c in build_epoch(38, cents, 1.0, rng))
    assert sorted(i for i, _ in build_epoch(38, cents, 0.0, rng)) == list(range(38))
    # different epochs draw different subsets
    a, b = (sorted(i for i, c in build_epoch(100, cents, 0.5, np.random.default_rng(k)) if c is None) for k in (1, 2))
    assert a != b


def test_centroids_are_integer_and_from_full_tiles():
    mask = np.full((10, 25), 255, np.uint8)
    mask[1:3, 5:7] = 4  # in tile (0, 4): centre (1.5, 5.5) -> (1, 5)
    mask[4:8, 0:4] = 2  # tile (4, 0): rows 4-7 -> centre 5.5 -> 5, cols 0-3 -> 1.5 -> 1
    mask[9, :] = 6  # only in the partial bottom rows 8-9: no full tile holds it
    mask[0:4, 24] = 7  # only in the partial right column 24
    out = sampling_mod._mask_centroids(mask, 4, 19)
    assert sorted(out) == [(2, 5, 1), (4, 1, 5)]


def test_rewriting_a_label_file_invalidates_the_centroid_cache(tmp_path):
    root = _write_cityscapes(str(tmp_path / "cs"), cities=("aachen", "bochum", "cologne"))
    ds = Cityscapes(root, "train")
    first = class_centroids(ds, str(tmp_path / "cache"), tile=8)
    assert first[13]  # the car in the corner
    label = os.path.join(root, "gtFine", "train", "bochum", "bochum_000000_000011_gtFine_labelIds.png")  # the middle file
    Image.fromarray(np.full((16, 32), 7, np.uint8)).save(label)  # now all road
    st = os.stat(label)
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = class_centroids(Cityscapes(root, "train"), str(tmp_path / "cache"), tile=8)
    assert second == compute_centroids(Cityscapes(root, "train"), tile=8) and second != first
    assert not any(c[0] == 1 for c in second[13]) and not any(c[0] == 1 for c in second[10])
    # other settings get their own entries
    assert class_centroids(ds, str(tmp_path / "cache"), tile=4) == compute_centroids(ds, tile=4)
    assert len(os.listdir(tmp_path / "cache" / "centroids")) == 3


def test_centroids_are_cached(tmp_path, monkeypatch):
    ds = _RareClassSet()
    first = class_centroids(ds, str(tmp_path))
    monkeypatch.setattr(sampling_mod, "compute_centroids", lambda *a, **k: pytest.fail("recomputed"))
    assert sampling_mod.class_centroids(ds, str(tmp_path)) == first
    assert compute_centroids(ds) == first


def test_sampler_resume_and_ranks_partition():
    cents = {0: [[0, 1.0, 1.0]], 5: [[3, 2.0, 2.0]]}
    full = [b for b in TrainSampler(10, 3, 12, seed=4, centroids=cents, class_uniform_pct=0.5)]
    tail = [b for b in TrainSampler(10, 3, 12, seed=4, start_iter=5, centroids=cents, class_uniform_pct=0.5)]
    assert full[5:] == tail
    r0 = list(TrainSampler(10, 2, 4, seed=1, rank=0, world_size=2))
    r1 = list(TrainSampler(10, 2, 4, seed=1, rank=1, world_size=2))
    seeds = [it[1] for b in r0 + r1 for it in b]
    assert len(set(seeds)) == len(seeds) == 16
    # plain sampling: every epoch is a permutation
    idx = [it[0] for b in TrainSampler(10, 5, 4, seed=2) for it in b]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
