"""Issue 20 data: Mapillary Vistas, class names and colours, coarse boosting, the BDD100K tile,
the no-centroid error. Small generated trees only."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hanet_fast.data import (CITYSCAPES_LABELS, BoostedDataset, DatasetError, EvalTransform, LabelError, LabelSet,
                             Mapillary, NoCentroidsError, ResizeHeightCrop, TrainSampler, TrainTransform, build_dataset,
                             class_centroids, coarse_boost, compute_centroids, dataset_labels, labels_for,
                             official_eval_transform, read_mapillary_labels)
from hanet_fast.data.datasets import BDD100K, BDD100K_CLASS_UNIFORM_TILE, Cityscapes
from hanet_fast.data.transforms import full_row_pos, resize


# ----------------------------------------------------------------------------- Mapillary
def _mapillary_config(n=66):
    labels = [{"readable": f"Class {i}", "name": f"c{i}", "color": [i, 2 * i, 255 - i], "evaluate": True}
              for i in range(n)]
    labels[-1]["readable"] = "Unlabeled"
    return {"labels": labels}


def _write_mapillary(root, split="training", names=("a", "b"), size=(12, 20)):
    os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, split, "labels"), exist_ok=True)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(_mapillary_config(), f)
    for k, name in enumerate(names):
        Image.fromarray(np.full(size + (3,), 40 * k, np.uint8)).save(os.path.join(root, split, "images", f"{name}.jpg"))
        label = np.full(size, 64, np.uint8)  # the last class
        label[: size[0] // 2] = 3 + k
        label[0, :4] = 65  # unlabeled
        Image.fromarray(label).save(os.path.join(root, split, "labels", f"{name}.png"))
    return root


def test_mapillary_reads_65_classes_their_names_and_colours_and_ignores_65(tmp_path):
    root = _write_mapillary(str(tmp_path / "vistas"))
    ds = Mapillary(root, "train")
    assert len(ds) == 2 and ds.labels.num_classes == 65 and ds.labels.name == "mapillary"
    assert ds.labels.class_names[0] == "Class 0" and ds.labels.class_names[-1] == "Class 64"
    assert ds.labels.palette[64].tolist() == [64, 128, 191]
    s = ds[1]
    assert s["path"].endswith("b.jpg") and s["mask"].dtype == torch.int64
    assert s["mask"][0, 0] == 255 and s["mask"][0, 5] == 4 and s["mask"][11, 0] == 64
    # class-uniform centroids over the 65 classes (class 64 included), and the training transform
    cents = compute_centroids(ds, tile=6, num_classes=65)
    assert len(cents) == 65 and len(cents[64]) == 2 * 3 and [i for i, _, _ in cents[4]] == [1, 1, 1]
    out = Mapillary(root, "train", TrainTransform((8, 8)))[(0, (0, 1), (9, 3))]
    assert out["image"].shape == (3, 8, 8) and set(out["mask"].unique().tolist()) <= {3, 64, 255}
    # by name, as the training engine builds it; its labels without building it
    assert build_dataset("mapillary", "train", root=root).pairs == ds.pairs
    assert dataset_labels("mapillary", root).class_names == ds.labels.class_names
    assert dataset_labels("cityscapes") is CITYSCAPES_LABELS
    assert isinstance(official_eval_transform("mapillary"), ResizeHeightCrop)
    assert official_eval_transform("mapillary").height == 1536 and official_eval_transform("bdd100k") is None


def test_mapillary_missing_config_and_labels_outside_it_name_the_file(tmp_path):
    root = _write_mapillary(str(tmp_path / "vistas"))
    config = os.path.join(root, "config.json")
    os.remove(config)
    for make in (lambda: Mapillary(root, "train"), lambda: read_mapillary_labels(root)):
        with pytest.raises(ValueError, match="config.json") as exc:
            make()
        assert config in str(exc.value) and isinstance(exc.value, DatasetError)
    with open(config, "w") as f:
        json.dump(_mapillary_config(60), f)
    with pytest.raises(LabelError, match="lists 60 labels"):
        Mapillary(root, "train")
    with open(config, "w") as f:
        f.write("{not json")
    with pytest.raises(LabelError, match="cannot read"):
        Mapillary(root, "train")
    with open(config, "w") as f:
        json.dump(_mapillary_config(), f)
    bad = os.path.join(root, "training", "labels", "b.png")
    label = np.asarray(Image.open(bad)).copy()
    label[5, 5], label[6, 6] = 66, 255
    Image.fromarray(label).save(bad)
    ds = Mapillary(root, "train")
    for load in (lambda: ds[1], lambda: ds.load_mask(1)):
        with pytest.raises(ValueError, match="66, 255") as exc:
            load()
        assert bad in str(exc.value) and "\n" not in str(exc.value)


def test_mapillary_layout_errors(tmp_path):
    root = _write_mapillary(str(tmp_path / "vistas"))
    with pytest.raises(DatasetError, match="validation"):
        Mapillary(root, "val")
    with pytest.raises(ValueError, match="split"):
        Mapillary(root, "training")
    os.remove(os.path.join(root, "training", "labels", "a.png"))
    with pytest.raises(DatasetError, match="a.png"):
        Mapillary(root, "train")
    _write_mapillary(root)
    os.remove(os.path.join(root, "training", "images", "b.jpg"))
    with pytest.raises(DatasetError, match="without an image: .*b.png"):
        Mapillary(root, "train")


def test_resize_height_crop_is_the_official_mapillary_validation():
    h, w = 30, 80
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    sample = {"image": image, "mask": mask, "row_pos": full_row_pos(h)}
    out = ResizeHeightCrop(12, tensor=False)(dict(sample))
    # 12 rows, int(80 / 30 * 12) = 32 columns (bicubic image), middle 12 from round((32 - 12) / 2) = 10
    scaled = resize(dict(sample), 12, 32, "bicubic")
    np.testing.assert_array_equal(out["image"], scaled["image"][:, 10:22])
    np.testing.assert_array_equal(out["mask"], scaled["mask"][:, 10:22])
    np.testing.assert_array_equal(out["row_pos"], scaled["row_pos"])
    # a portrait image is centred between ignored columns
    tall = {"image": image[:, :20], "mask": mask[:, :20], "row_pos": full_row_pos(h)}
    out = ResizeHeightCrop(12, tensor=False)(tall)  # 12 x int(20 / 30 * 12) = 8 columns
    assert out["mask"].shape == (12, 12) and (out["mask"][:, :2] == 255).all() and (out["mask"][:, 10:] == 255).all()
    assert (out["mask"][:, 2:10] != 255).all() and (out["image"][:, :2] == 0).all()


# ----------------------------------------------------------------------------- class names and colours
def test_labels_for_a_network_come_from_the_checkpoint_or_are_cityscapes():
    assert labels_for(19) is CITYSCAPES_LABELS
    mapillary = LabelSet("mapillary", tuple(f"c{i}" for i in range(65)), np.zeros((65, 3), np.uint8))
    stored = json.loads(json.dumps(mapillary.to_dict()))  # what a checkpoint holds
    back = labels_for(65, stored)
    assert back.class_names == mapillary.class_names and back.palette.shape == (65, 3)
    assert back.colorize(np.array([[64, 255]], np.uint8)).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="65-class network"):
        labels_for(65)
    with pytest.raises(ValueError, match="65 classes but the network has 19"):
        labels_for(19, stored)
    with pytest.raises(ValueError, match="labels must be"):
        labels_for(65, {"name": "x"})
    with pytest.raises(ValueError, match="palette"):
        LabelSet("x", ("a", "b"), np.zeros((3, 3)))


# ----------------------------------------------------------------------------- coarse boosting
H, W = 16, 32  # tile 16: two full tiles per image (left, right)
ROAD, SKY, TRUCK, BUS = 7, 23, 27, 28  # labelIds -> trainIds 0, 10, 14, 15


def _save_pair(root, split, gt, city, name, label):
    os.makedirs(os.path.join(root, "leftImg8bit", split, city), exist_ok=True)
    os.makedirs(os.path.join(root, gt, split, city), exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"))
    Image.fromarray(label).save(os.path.join(root, gt, split, city, f"{name}_{gt}_labelIds.png"))


def _write_boost_tree(root, fine=76, coarse=3):
    """76 fine images (sky above road; image 0 also has a truck in its left tile) and 3 coarse
    ones (road, a truck in the left tile, a bus in the right tile)."""
    for i in range(fine):
        label = np.full((H, W), ROAD, np.uint8)
        label[: H // 2] = SKY
        if i == 0:
            label[10:12, 2:4] = TRUCK  # centre (10, 2) after truncation
        _save_pair(root, "train", "gtFine", "aachen", f"aachen_000000_{i:06d}", label)
    for j in range(coarse):
        label = np.full((H, W), ROAD, np.uint8)
        label[4:6, 4 + j:6 + j] = TRUCK  # left tile: centre (4, 4 + j)
        label[2:4, 20:22] = BUS  # right tile: centre (2, 20)
        label[0, :] = 0  # unlabelled in the coarse annotation
        _save_pair(root, "train_extra", "gtCoarse", "bremen", f"bremen_000000_{j:06d}", label)
    return root


def test_coarse_boosting_composes_each_epoch_as_the_official_code(tmp_path):
    root = _write_boost_tree(str(tmp_path / "cs"))
    fine = Cityscapes(root, "train", transform=TrainTransform((8, 8), blur=0))
    boost = coarse_boost(fine, "14,15", tile=16, cache_dir=str(tmp_path / "cache"))
    ds = boost.dataset
    assert isinstance(ds, BoostedDataset) and ds.main_length == 76 and len(ds) == 79
    # centroids: the boosted classes get the coarse ones (indices 76..78) after their fine ones;
    # road (class 0) is in the coarse maps too but is not boosted
    assert boost.centroids[14] == [[0, 10, 2], [76, 4, 4], [77, 4, 5], [78, 4, 6]]
    assert boost.centroids[15] == [[76, 2, 20], [77, 2, 20], [78, 2, 20]]
    assert boost.fine_centroids[14] == [[0, 10, 2]] and boost.fine_centroids[15] == []
    assert boost.centroids[0] == boost.fine_centroids[0] and len(boost.centroids[0]) == 76 * 2
    # hand counts: N = 76 fine images, pct 0.5, 19 classes: k = int(76 * 0.5 / 19) = 2 crops for each
    # class with centroids (0, 10, 14, 15) and 76 - 2 * 19 = 38 random fine images: 46 per epoch;
    # after max_cu_epoch = 1 (epochs 2, 3, ...) the fine centroids: no bus, 44 per epoch
    sampler = TrainSampler(ds.main_length, 2, 68, seed=3, centroids=boost.centroids, class_uniform_pct=0.5,
                           max_cu_epoch=1, fine_centroids=boost.fine_centroids)
    assert (sampler.epoch_length, sampler.cut_epoch_length) == (46, 44)
    items = [item for batch in sampler for item in batch]
    assert len(items) == 136 == 46 * 2 + 44
    epochs = [items[:46], items[46:92], items[92:]]
    coarse_truck = 0
    for e, epoch in enumerate(epochs):
        plain = [i for i, _, c in epoch if c is None]
        assert len(plain) == len(set(plain)) == 38 and max(plain) < 76
        crops = [(i, c) for i, _, c in epoch if c is not None]
        bus = [(i, c) for i, c in crops if c == (2, 20)]
        truck = [(i, c) for i, c in crops if c[0] in (4, 10) and c[1] < 8]
        assert len(crops) == (8 if e < 2 else 6)
        assert len(bus) == (2 if e < 2 else 0) and all(i >= 76 for i, _ in bus)
        assert len(truck) == 2 and len(set(truck)) == (2 if e < 2 else 1)
        coarse_truck += sum(i >= 76 for i, _ in truck)
        assert all(i < 76 for i, c in crops if (i, c) not in bus + truck)  # road and sky: fine only
        assert [(i, c) for i, _, c in epoch] == [(i, c) for i, c in sampler.epoch(e)]
    assert coarse_truck >= 1 and all(i == 0 for i, _ in truck)  # the last (cut) epoch: the fine truck only
    # a coarse crop loads the coarse image, through the fine set's transform
    out = ds[(77, (0, 1, 5), (4, 5))]
    assert out["image"].shape == (3, 8, 8) and "bremen" in out["path"] and (out["mask"] == 14).any()
    # the sampler resumes the boosted stream exactly, across the cut
    tail = [item for batch in TrainSampler(ds.main_length, 2, 68, seed=3, start_iter=40, centroids=boost.centroids,
                                           class_uniform_pct=0.5, max_cu_epoch=1,
                                           fine_centroids=boost.fine_centroids) for item in batch]
    assert tail == items[80:]


def test_coarse_boosting_without_coarse_data_names_the_missing_folder(tmp_path):
    root = _write_boost_tree(str(tmp_path / "cs"), fine=2, coarse=1)
    fine = Cityscapes(root, "train")
    os.rename(os.path.join(root, "gtCoarse"), os.path.join(root, "gtCoarse.moved"))
    with pytest.raises(DatasetError, match=r"gtCoarse/train_extra") as exc:
        coarse_boost(fine, "14", tile=16, cache_dir=str(tmp_path / "cache"))
    assert "folder not found" in str(exc.value) and "\n" not in str(exc.value)
    os.rename(os.path.join(root, "leftImg8bit", "train_extra"), os.path.join(root, "extra.moved"))
    with pytest.raises(DatasetError, match=r"leftImg8bit/train_extra"):
        coarse_boost(fine, "14", tile=16)
    for bad in ("19", "14,14", "x"):
        with pytest.raises(ValueError, match="coarse_boost_classes"):
            coarse_boost(fine, bad)
    with pytest.raises(ValueError, match="fine"):
        coarse_boost(BoostedDataset(fine, fine), "14")


# ----------------------------------------------------------------------------- BDD100K tile, no centroids
def _write_bdd(root, n=2, size=(720, 1280)):
    os.makedirs(os.path.join(root, "images", "10k", "train"))
    os.makedirs(os.path.join(root, "labels", "sem_seg", "masks", "train"))
    for k in range(n):
        Image.fromarray(np.zeros(size + (3,), np.uint8)).save(os.path.join(root, "images", "10k", "train", f"{k}.jpg"))
        label = np.full(size, 255, np.uint8)
        label[: size[0] // 3] = 10  # sky
        label[size[0] // 2:] = 0  # road
        label[400:500, 900:1000] = 13  # a car in the right tile
        Image.fromarray(label).save(os.path.join(root, "labels", "sem_seg", "masks", "train", f"{k}.png"))
    return str(root)


def test_bdd100k_tile_finds_centroids_where_the_official_1024_finds_none(tmp_path):
    ds = BDD100K(_write_bdd(tmp_path / "bdd"), "train")
    cents = class_centroids(ds, str(tmp_path / "cache"), tile=BDD100K_CLASS_UNIFORM_TILE)
    # two 640 x 640 tiles side by side per 720 x 1280 image: sky and road in both, the car in the right one
    assert len(cents[10]) == len(cents[0]) == 2 * 2 and [c[0] for c in cents[13]] == [0, 1]
    assert all(c[2] >= 640 for c in cents[13])
    with pytest.raises(NoCentroidsError) as exc:
        class_centroids(ds, str(tmp_path / "cache"), tile=1024)
    message = str(exc.value)
    assert "--class-uniform-tile 1024" in message and "720 rows" in message and "at most 720" in message
    assert "\n" not in message and isinstance(exc.value, (DatasetError, ValueError))
    assert len(os.listdir(tmp_path / "cache" / "centroids")) == 1  # nothing cached for 1024


def test_no_centroid_error_when_no_tile_holds_a_class(tmp_path):
    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def load_mask(self, i):
            return np.full((24, 40), 255, np.uint8)

    with pytest.raises(NoCentroidsError, match=r"--class-uniform-tile 0 \(half the image height\).*24 rows"):
        compute_centroids(Unlabelled())
    with pytest.raises(NoCentroidsError, match=r"--class-uniform-tile 8: .*3 label maps \(24 rows high\)"):
        compute_centroids(Unlabelled(), tile=8)


def test_a_checkpoint_names_and_colours_its_classes_through_load_model(tmp_path):
    import dataclasses

    from hanet_fast.inference import load_model
    from hanet_fast.models import deeplabv3plus

    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=65, hanet_layers=(0, 0, 0, 0, 0), aux=False)
    labels = read_mapillary_labels(_write_mapillary(str(tmp_path / "vistas")))
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "model_config": json.loads(json.dumps(dataclasses.asdict(model.config))),
                "args": {}, "iteration": 5, "labels": labels.to_dict()}, path)
    loaded, info = load_model(path)
    names = labels_for(loaded.num_classes, info["labels"])
    assert names.class_names == labels.class_names and (names.palette == labels.palette).all()
    torch.save({"model": model.state_dict(), "model_config": json.loads(json.dumps(dataclasses.asdict(model.config))),
                "args": {}, "iteration": 5}, path)  # a checkpoint without names: no silent Cityscapes names
    loaded, info = load_model(path)
    assert info["labels"] is None
    with pytest.raises(ValueError, match="65-class"):
        labels_for(loaded.num_classes, info["labels"])


def test_mapillary_class_uniform_batches_train_a_65_class_network(tmp_path):
    """The pieces the training engine wires for --dataset mapillary: registry, 65-class centroids,
    the sampler, the loss and a 65-class network (a training step)."""
    from hanet_fast.models import deeplabv3plus
    from hanet_fast.training.losses import segmentation_loss

    root = _write_mapillary(str(tmp_path / "vistas"), names=("a", "b", "c", "d"), size=(24, 40))
    train = build_dataset("mapillary", "train", TrainTransform((32, 32), blur=0), root=root)
    num_classes = train.labels.num_classes
    cents = class_centroids(train, str(tmp_path / "cache"), tile=12, num_classes=num_classes)
    assert len(cents) == 65 and len(cents[64]) == 4 * 3  # the last class, in the bottom row of 12 x 12 tiles
    # 130 images, pct 0.5: int(130 * 0.5 / 65) = 1 crop per class with centroids (3, 4, 5, 6, 64), 65 random
    assert TrainSampler(130, 2, 2, centroids=cents, class_uniform_pct=0.5, num_classes=65).epoch_length == 65 + 5
    sampler = TrainSampler(len(train), 2, 2, seed=0, centroids=cents, class_uniform_pct=0.5, num_classes=num_classes)
    loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, num_workers=0)
    torch.manual_seed(0)
    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=num_classes, hanet_layers=(0, 0, 0, 0, 0),
                          aux=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for batch in loader:
        out = model(batch["image"], row_pos=batch["row_pos"])
        assert out.logits.shape == (2, 65, 32, 32)
        assert set(batch["mask"].unique().tolist()) <= {3, 4, 5, 6, 64, 255}
        loss, _ = segmentation_loss(out.logits, batch["mask"], image_weighted=True)  # the pretrain recipe's loss
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_train_stops_in_one_line_when_the_tile_finds_no_centroid(tmp_path, capsys):
    from hanet_fast.train import main

    from test_train import TINY
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--class-uniform-tile", "64", "--cache-dir", str(tmp_path / "cache"), "--iters", "1",
                     "--workers", "0", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "class-uniform" in line]
    assert len(lines) == 1 and "--class-uniform-tile 64" in lines[0] and "48 rows" in lines[0]
    assert not os.path.exists(tmp_path / "run")  # nothing written


def test_build_dataset_by_name_and_its_errors(tmp_path):
    synthetic = build_dataset("synthetic", "val", EvalTransform(), length=3, size=(16, 32), seed=1)
    assert len(synthetic) == 3 and synthetic[0]["image"].shape == (3, 16, 32)
    assert synthetic.labels is CITYSCAPES_LABELS
    with pytest.raises(ValueError, match="dataset must be one of synthetic, cityscapes, bdd100k, mapillary"):
        build_dataset("vistas", "train")
    with pytest.raises(ValueError, match="--data-root"):
        build_dataset("mapillary", "train")
    with pytest.raises(DatasetError, match="config.json"):
        build_dataset("mapillary", "train", root=str(tmp_path))
