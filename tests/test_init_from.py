"""--init-from: full-network initialisation from our checkpoints and official snapshots (issue 20 item 3)."""

import numpy as np
import pytest
import torch

from hanet_fast.models import HANetConfig, deeplabv3plus, to_official_state_dict
from hanet_fast.training.init_from import init_from


def _net(num_classes, hanet_layers=(0, 0, 0, 0, 0), aux=False, seed=0):
    torch.manual_seed(seed)
    return deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=num_classes, hanet_layers=hanet_layers,
                         hanet=HANetConfig(rows=4), aux=aux)


def _trunk_names(model):
    return [k for k in model.state_dict() if k.startswith(("layer", "aspp", "bot_", "final1"))]


def test_65_class_checkpoint_into_19_class_network_carries_the_trunk_and_lists_the_rest(tmp_path):
    source = _net(65, seed=1)  # a Mapillary-like network: 65 classes, no HANet, no auxiliary head
    path = tmp_path / "checkpoint.pt"
    # a training checkpoint of ours, optimiser state included: only the weights are taken
    torch.save({"model": source.state_dict(), "model_config": {}, "optimizer": {"state": {}, "param_groups": []},
                "iteration": 1234, "args": {}}, path)
    target = _net(19, hanet_layers=(1, 0, 0, 1, 1), aux=True, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = init_from(target, tmp_path)  # the run folder works as the file

    after = target.state_dict()
    trunk = _trunk_names(source)
    assert trunk and set(trunk) <= set(report.loaded)
    for k in trunk:
        torch.testing.assert_close(after[k], source.state_dict()[k], rtol=0, atol=0)
    kept = {entry.split(" ")[0] for entry in report.kept}
    assert {"final2.0.weight", "final2.0.bias"} <= kept  # 65 vs 19 outputs
    assert any(k.startswith("hanet0.") for k in kept) and any(k.startswith("dsn.") for k in kept)
    for k in kept:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert "final2.0.weight ([65, 256, 1, 1] in the checkpoint, [19, 256, 1, 1] here)" in report.kept
    line = report.summary()
    assert "\n" not in line and "final2.0.weight" in line and "hanet0." in line and str(tmp_path) in line
    assert f"loaded {len(report.loaded)} of {len(after)} tensors" in line and report.source == "hanet_fast"


def test_official_snapshot_is_read_under_its_own_names(tmp_path):
    source = _net(19, hanet_layers=(1, 0, 0, 1, 1), aux=True, seed=3)
    state = {f"module.{k}": v for k, v in to_official_state_dict(source).items()}
    path = tmp_path / "official.pth"
    # as the official train.py saves: numpy scalars and the command line beside the weights
    torch.save({"state_dict": state, "epoch": 10, "mean_iu": np.float64(0.47), "command": "train.py"}, path)
    target = _net(19, hanet_layers=(1, 0, 0, 1, 1), aux=True, seed=4)
    report = init_from(target, path)
    assert report.source == "official" and report.kept == [] and report.unused == []
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0)


def test_unusable_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        init_from(_net(19), tmp_path / "nothing.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, other)
    with pytest.raises(ValueError, match="other.pt"):
        init_from(_net(19), other)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt"):
        init_from(_net(19), text)
