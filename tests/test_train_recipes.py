"""The official recipes wired into training: --dataset mapillary, --init-from, --coarse-boost-classes,
the Mapillary presets and the BDD100K tile (issue 20), on small generated trees."""

import json
import os

import pytest
import torch

from hanet_fast.data import NUM_CLASSES, class_centroids
from hanet_fast.data.datasets import BDD100K, BDD100K_CLASS_UNIFORM_TILE
from hanet_fast.train import main, resolve_args
from hanet_fast.training import TrainConfig, Trainer
from hanet_fast.training.hooks import Hook
from test_recipes_data import H, W, _write_bdd, _write_boost_tree, _write_mapillary
from test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

NO_HANET = ["--baseline", "--no-aux", "--workers", "0"]


def _ckpt(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=False)


def _mapillary_tree(tmp_path):
    root = str(tmp_path / "vistas")
    _write_mapillary(root, "training", names=("a", "b", "c", "d"), size=(24, 40))
    _write_mapillary(root, "validation", names=("e",), size=(24, 40))
    return root


def _mapillary_args(root, tmp_path, out):
    return TINY + NO_HANET + ["--dataset", "mapillary", "--data-root", root, "--crop-size", "24,24",
                              "--class-uniform-tile", "12", "--val-size", "24x40", "--iters", "1",
                              "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]


def test_mapillary_training_gives_a_65_class_checkpoint_with_its_labels(tmp_path):
    root = _mapillary_tree(tmp_path)
    assert main(_mapillary_args(root, tmp_path, tmp_path / "run")) == 0
    state = _ckpt(tmp_path / "run")
    assert state["model"][_classifier_key(state["model"])].shape[0] == 65 and state["model_config"]["num_classes"] == 65
    assert state["labels"]["class_names"][:2] == ["Class 0", "Class 1"] and len(state["labels"]["palette"]) == 65
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert list(metrics["iou"])[64] == "Class 64" and len(metrics["iou"]) == 65


def _classifier_key(state):
    return "final2.0.weight"  # the last 1x1 convolution (official names: the classes' outputs)


def test_init_from_carries_the_trunk_and_lists_the_skipped_tensors(tmp_path, capsys):
    root = _mapillary_tree(tmp_path)
    assert main(_mapillary_args(root, tmp_path, tmp_path / "mapillary")) == 0
    capsys.readouterr()
    # a 19-class run from the 65-class one; lr 0 leaves the weights as initialised
    assert main(TINY + NO_HANET + ["--iters", "1", "--lr", "0", "--hanet-lr", "0", "--class-uniform-pct", "0",
                                   "--init-from", str(tmp_path / "mapillary"), "--out", str(tmp_path / "city")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "init from" in line]
    source, own = _ckpt(tmp_path / "mapillary")["model"], _ckpt(tmp_path / "city")
    key = _classifier_key(own["model"])
    assert len(lines) == 1 and f"{key} ([65" in lines[0] and "kept the initialisation of" in lines[0]
    trunk = [k for k, v in own["model"].items() if k.startswith(("layer", "aspp", "bot_", "final1")) and v.dim() == 4]
    assert trunk and all(torch.equal(own["model"][k], source[k]) for k in trunk)
    assert own["model"][key].shape[0] == NUM_CLASSES and own["iteration"] == 1  # not a resume: a new run
    assert own["optimizer"]["state"] == {} or all(  # no optimiser state from the source (lr 0: momentum of grads only)
        int(v.get("step", 0)) <= 1 for v in own["optimizer"]["state"].values())


def test_bad_recipe_flags_are_one_line_naming_the_flag(tmp_path, capsys):
    for argv, name in ((["--coarse-boost-classes", "14,99", "--dataset", "cityscapes", "--data-root", "/d"],
                        "--coarse-boost-classes"),
                       (["--coarse-boost-classes", "14"], "--coarse-boost-classes"),
                       (["--max-cu-epoch", "-1"], "--max-cu-epoch")):
        with pytest.raises(SystemExit) as exc:
            main(TINY + argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and "\n" not in err and name in err, err
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--iters", "1", "--workers", "0", "--init-from", str(tmp_path / "nothing.pt"),
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "--init-from" in err[-1] and "nothing.pt" in err[-1]


class _Captured(Exception):
    pass


class _Capture(Hook):
    """Keeps the training loader's sampler and data set, and stops the run before its first step."""

    def before_train(self, trainer):
        self.sampler = trainer.loader.batch_sampler
        self.dataset = trainer.loader.dataset
        raise _Captured


def test_coarse_boost_classes_train_on_the_boosted_epochs(tmp_path):
    root = _write_boost_tree(str(tmp_path / "cs"), fine=8, coarse=3)
    os.makedirs(os.path.join(root, "leftImg8bit", "val"))
    import shutil
    shutil.copytree(os.path.join(root, "leftImg8bit", "train", "aachen"), os.path.join(root, "leftImg8bit", "val", "a"))
    shutil.copytree(os.path.join(root, "gtFine", "train", "aachen"), os.path.join(root, "gtFine", "val", "a"))
    capture = _Capture()
    cfg = TrainConfig(dataset="cityscapes", data_root=root, crop_size=(H, W), batch_size=2, iters=1, hanet_rows=4,
                      baseline=True, no_aux=True, workers=0, no_progress=True, threads=1, val_every=0, val_limit=1,
                      num_vis=1, class_uniform_tile=16, coarse_boost_classes="14,15", max_cu_epoch=2,
                      cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"))
    with pytest.raises(_Captured):
        Trainer(cfg, [capture]).fit()
    sampler = capture.sampler
    assert len(capture.dataset) == 8 + 3 and capture.dataset.main_length == 8
    # truck (14) centroids: fine image 0's and the three coarse images' (indices 8..10); bus (15): coarse only
    assert sorted({c[0] for c in sampler.centroids[14]}) == [0, 8, 9, 10]
    assert sorted({c[0] for c in sampler.centroids[15]}) == [8, 9, 10]
    assert sampler.max_cu_epoch == 2 and 15 not in sampler.fine_centroids


def test_mapillary_presets_follow_their_scripts(capsys):
    pre = resolve_args(["--preset", "train_resnext_pretrain", "--data-root", "/d"])
    # scripts/train_resnext_pretrain.sh: --dataset mapillary, ResNeXt-101 OS 8, --hanet 0 0 0 0 0, --crop_size 864,
    # --bs_mult 2 (x 6), --max_iter 200000, no --aux_loss, --img_wt_loss, --class_uniform_pct 0.5 --tile 1024
    assert (pre.dataset, pre.backbone, pre.output_stride, pre.pretrained_backbone, pre.hanet_layers) == (
        "mapillary", "resnext101_32x8d", 8, "imagenet", "0,0,0,0,0")
    assert (pre.crop_size, pre.batch_size, pre.iters, pre.no_aux, pre.img_wt_loss, pre.cls_wt_loss) == (
        (864, 864), 2, 200000, True, True, False)
    assert (pre.class_uniform_pct, pre.class_uniform_tile, pre.init_from, pre.coarse_boost_classes) == (
        0.5, 1024, None, "")
    fine = resolve_args(["--preset", "train_resnext_fr_pretrain", "--data-root", "/d"])
    # --snapshot pretrained/resnext_mapillary_0.47475.pth, --coarse_boost_classes 14,15,16,3,12,17,4, --max_cu_epoch
    assert (fine.init_from, fine.coarse_boost_classes, fine.max_cu_epoch, fine.no_aux) == (
        "pretrained/resnext_mapillary_0.47475.pth", "14,15,16,3,12,17,4", 10000, False)


def test_bdd100k_presets_use_a_tile_that_finds_centroids(tmp_path):
    root = _write_bdd(tmp_path / "bdd")
    for name in ("bdd100k-r101-os16", "bdd100k-mobilenet-os16"):
        cfg = resolve_args(["--preset", name, "--data-root", root])
        assert cfg.class_uniform_tile == BDD100K_CLASS_UNIFORM_TILE and cfg.class_uniform_pct == 0.5
    cents = class_centroids(BDD100K(root, "train"), str(tmp_path / "cache"), tile=cfg.class_uniform_tile)
    assert cents[13] and cents[0] and cents[10]


def test_evaluate_infer_analyze_name_and_colour_65_classes(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    import hanet_fast.data.registry as registry
    from hanet_fast import analyze, evaluate, infer
    from hanet_fast.data import build_dataset, official_eval_transform
    from test_recipes_data import _mapillary_config

    root = _mapillary_tree(tmp_path)
    run = tmp_path / "run"
    assert main(_mapillary_args(root, tmp_path, run)) == 0
    # the official view (1536 rows, centre crop) at 32 rows, so that the test stays small
    monkeypatch.setattr(registry, "MAPILLARY_EVAL_HEIGHT", 32)
    view = build_dataset("mapillary", "val", official_eval_transform("mapillary"), root=root)[0]["mask"]
    assert tuple(view.shape) == (32, 32)
    out, full = tmp_path / "eval.json", tmp_path / "full.json"
    assert evaluate.main(["--checkpoint", str(run), "--no-progress", "--json", str(out), "--workers", "0"]) == 0
    result = json.load(open(out))
    assert result["dataset"] == "mapillary" and list(result["iou"])[:2] == ["Class 0", "Class 1"]
    printed = capsys.readouterr().out
    assert len(result["iou"]) == 65 and "Class 64" in printed and "the official view" in printed
    assert not result["full_images"] and np.sum(result["confusion"]) == int((view != 255).sum())
    assert evaluate.main(["--checkpoint", str(run), "--no-progress", "--json", str(full), "--workers", "0",
                          "--full-images"]) == 0
    assert json.load(open(full))["full_images"] and np.sum(json.load(open(full))["confusion"]) == 24 * 40 - 4
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(run), "--no-progress", "--dataset", "synthetic", "--full-images"])
    assert exc.value.code == 2 and "--full-images is for mapillary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # labelIds are Cityscapes': one line naming the flag
        evaluate.main(["--checkpoint", str(run), "--no-progress", "--save-labelids", str(tmp_path / "ids")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after evaluate's usage lines
    assert exc.value.code == 2 and "--save-labelids" in err and "65-class" in err
    infer.main([os.path.join(root, "validation", "images"), "--checkpoint", str(run), "--out", str(tmp_path / "pred"),
                "--no-progress"])
    pred = np.asarray(Image.open(tmp_path / "pred" / "e_pred.png").convert("RGB")).reshape(-1, 3)
    palette = {tuple(label["color"]) for label in _mapillary_config()["labels"][:65]}
    assert {tuple(c) for c in np.unique(pred, axis=0)} <= palette
    report = analyze.main(["--dataset", "mapillary", "--data-root", root, "--out", str(tmp_path / "analysis"),
                           "--no-progress"])
    assert report["class_names"][64] == "Class 64" and len(report["class_names"]) == 65
