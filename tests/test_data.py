"""Data: labels, synthetic scenes, Cityscapes/BDD100K/folder loaders, joint transforms, class-uniform sampling."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from hanet_fast.data import (BDD100K, CLASS_NAMES, Cityscapes, DatasetError, EvalTransform, ImageFolder,
                             SyntheticUrbanScenes, TrainSampler, TrainTransform, class_centroids, compute_centroids,
                             full_row_pos, generate_scene, label_to_train_lut)
from hanet_fast.data import sampling as sampling_mod
from hanet_fast.data.transforms import crop, hflip, resize


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
    r = resize(s, 20, 12)
    np.testing.assert_allclose(r["row_pos"], r["mask"][:, 0] / 10)


def test_centroid_crop_contains_the_centroid_class():
    h, w = 120, 160
    mask = np.zeros((h, w), np.uint8)
    mask[90:94, 140:144] = 18  # a small rare object
    sample = {"image": np.zeros((h, w, 3), np.uint8), "mask": mask, "row_pos": full_row_pos(h)}
    tf = TrainTransform((32, 32), (0.5, 2.0), color_jitter=0.0, blur=0.0, tensor=False)
    for seed in range(20):
        out = tf(dict(sample), np.random.default_rng(seed), centroid=(91.5, 141.5))
        assert (out["mask"] == 18).any()


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


def test_class_uniform_sampling_draws_rare_classes(tmp_path):
    ds = _RareClassSet()
    cents = class_centroids(ds, str(tmp_path))
    assert len(cents[18]) == 1 and cents[18][0][0] == 7 and len(cents[0]) == 40 * 4
    n_iters, bs = 250, 4
    sampler = TrainSampler(len(ds), bs, n_iters, seed=0, centroids=cents, class_uniform_pct=0.5)
    items = [item for batch in sampler for item in batch]
    rare = [it for it in items if it[2] is not None and it[0] == 7 and ds.load(7)["mask"][int(it[2][0]), int(it[2][1])] == 18]
    # half the samples are class-uniform, split between the 2 classes present -> ~1/4 of them are class 18
    assert 0.17 < len(rare) / len(items) < 0.33
    crops_with_rare = sum((ds[it]["mask"] == 18).any().item() for it in rare[:30])
    assert crops_with_rare == min(30, len(rare))
    uniform = TrainSampler(len(ds), bs, n_iters, seed=0)
    n7 = sum(it[0] == 7 for batch in uniform for it in batch)
    assert n7 / len(items) < 0.05  # plain sampling draws image 7 1/40 of the time


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
